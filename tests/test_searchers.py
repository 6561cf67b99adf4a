"""Searchers and schedulers by name (ablate.searchers): names validated with did-you-mean, a
user's own as ``module.path:factory`` (this module's factories), checked at preflight, and run
end to end through Ray Tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ablate import preflight
from ablate.dryrun import describe_plan
from ablate.searchers import SCHEDULERS, SEARCHERS, build_scheduler, build_searcher
from ablate.spec import SpecError, parse_sweep
from ablate.tunesearch import ProposedTrials

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
HERE = Path(__file__).stem  # this module, as a plugin names it

BASE = "name: t\ntrain: {epochs: 3}\n"
HEADS = "space: {model.head: {choice: [linear, nonlinear]}}\n"


# ----------------------------------------------------------------------------- user components


class HeadsInTurn(Searcher):
    """Proposes the projection heads it was given, one per trial, then finishes; keeps what it
    was told."""

    def __init__(self, heads: list[str]) -> None:
        super().__init__()
        self.heads = list(heads)
        self.space: dict = {}
        self.completed: dict[str, dict | None] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self.space = dict(config)
        return super().set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.heads:
            return Searcher.FINISHED
        return {"model.head": self.heads.pop(0)}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.completed[trial_id] = result


def heads_in_turn(section, plan) -> HeadsInTurn:
    """Nonlinear, then linear."""
    return HeadsInTurn(["nonlinear", "linear"])


def unknown_key(section, plan) -> HeadsInTurn:
    searcher = HeadsInTurn([])
    searcher.suggest = lambda trial_id: {"model.width": 4}  # not in `space`
    return searcher


class StopAtEpoch(FIFOScheduler):
    """Stops every trial once it reports ``epoch``."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("epoch", 0) >= self.epoch:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def stop_after_first_epoch(section, plan) -> StopAtEpoch:
    return StopAtEpoch(1)


def not_a_scheduler(section, plan) -> dict:
    return {"name": "fifo"}


def broken_factory(section, plan) -> Searcher:
    raise RuntimeError("no study database")


NOT_CALLABLE = 3


def sweep_of(text: str, *overrides: str):
    return parse_sweep(text, source="t.yaml", overrides=list(overrides))


def error_of(text: str, *overrides: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        sweep_of(text, *overrides)
    return caught.value


# ----------------------------------------------------------------------------- names


def test_registries_hold_the_built_ins():
    assert SEARCHERS.names() == ("grid", "random", "optuna")
    assert SCHEDULERS.names() == ("fifo", "asha")
    assert SCHEDULERS.get("asha").meta["early_stopping"]
    assert not SCHEDULERS.get("fifo").meta["early_stopping"]


@pytest.mark.parametrize(
    ("override", "key", "needles"),
    [
        ("algorithm.name=gird", "algorithm.name", ["did you mean 'grid'", "grid, random, optuna"]),
        ("scheduler.name=ashaa", "scheduler.name", ["did you mean 'asha'", "fifo, asha"]),
        ("scheduler.name=no_such_module:factory", "scheduler.name", ["no_such_module"]),
        (f"algorithm.name={HERE}:heads_in_tunr", "algorithm.name", ["did you mean"]),
        (f"scheduler.name={HERE}:NOT_CALLABLE", "scheduler.name", ["not a factory"]),
    ],
)
def test_unknown_or_unusable_names_name_the_key(override, key, needles):
    error = error_of(BASE + HEADS, override)
    assert error.key == key
    for needle in needles:
        assert needle in error.message


def test_a_bad_name_exits_2_naming_the_key(tmp_path, capsys):
    from entrypoints.sweep import main

    status = main(
        [str(QUICKSTART), "--set", "scheduler.name=fifoo", "--storage-path", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "scheduler.name" in err and "did you mean 'fifo'" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_factory_of_the_wrong_kind_is_refused_at_preflight(tmp_path):
    plan = sweep_of(
        BASE + HEADS, f"scheduler.name={HERE}:not_a_scheduler", f"storage.path={tmp_path}"
    )
    with pytest.raises(SpecError) as caught:
        preflight.check(plan)
    assert caught.value.key == "scheduler.name"
    assert "not a ray.tune.schedulers.TrialScheduler" in caught.value.message
    plan = sweep_of(
        BASE + HEADS,
        f"algorithm={{name: '{HERE}:broken_factory', num_samples: 2}}",
        f"storage.path={tmp_path}",
    )
    with pytest.raises(SpecError) as caught:
        preflight.check(plan)
    assert caught.value.key == "algorithm.name"
    assert "RuntimeError: no study database" in caught.value.message
    assert list(tmp_path.iterdir()) == []  # refused before the driver lock


def test_a_user_searcher_proposes_like_optuna():
    """The spec rules of a proposing searcher, the dry run, and each proposal becoming a full,
    validated trial."""
    name = f"algorithm={{name: '{HERE}:heads_in_turn', num_samples: 2}}"
    assert error_of(BASE + "space: {model.head: {grid: [linear]}}", name).key == (
        "space.model.head.grid"
    )
    assert error_of(BASE + HEADS + "replicates: 2", name).key == "replicates"
    plan = sweep_of(BASE + HEADS, name)
    assert plan.proposes and plan.trials == [] and plan.num_trials == 2
    assert f"2 trials proposed by {HERE}:heads_in_turn" in describe_plan(plan)

    searcher = build_searcher(plan)
    assert isinstance(searcher, ProposedTrials)
    assert set(searcher.inner.space) == {"model.head"}  # told the sampled keys as a space
    param = searcher.suggest("a")
    assert param["varying"] == {"model.head": "nonlinear"} and param["replicate"] == 0
    assert param["config"]["model"]["head"] == "nonlinear"
    assert param["config"]["train"]["epochs"] == 3  # the base config, filled in
    assert searcher.suggest("b")["varying"] == {"model.head": "linear"}
    assert searcher.suggest("c") == Searcher.FINISHED

    stray = sweep_of(BASE + HEADS, f"algorithm={{name: '{HERE}:unknown_key', num_samples: 1}}")
    with pytest.raises(SpecError, match=r"model\.width"):
        build_searcher(stray).suggest("a")


def test_a_user_scheduler_is_built_from_its_section():
    plan = sweep_of(BASE + HEADS, f"scheduler.name={HERE}:stop_after_first_epoch")
    scheduler = build_scheduler(plan)
    assert isinstance(scheduler, StopAtEpoch) and scheduler.epoch == 1
    assert plan.early_stopping  # a user's scheduler may stop trials: actors are not reused


# ----------------------------------------------------------------------------- through Ray


@pytest.mark.slow
def test_a_user_searcher_and_scheduler_run_a_sweep(ray_cluster, tmp_path):
    from ablate.sweep import run_sweep

    overrides = [
        "data.num_train=256",
        "data.num_test=64",
        "data.synthetic_size=16",
        "train.batch_size=32",
        "train.steps_per_epoch=2",
        "train.epochs=3",
        "eval.knn_k=10",
        "eval.eval_every=1",
        "eval.probe.max_iter=10",
        "tracking.enabled=false",
        f"storage.path={tmp_path}",
        "space={model.head: {choice: [linear, nonlinear]}}",
        f"algorithm={{name: '{HERE}:heads_in_turn', num_samples: 2, max_concurrent_trials: 1}}",
        f"scheduler.name={HERE}:stop_after_first_epoch",
    ]
    done = run_sweep(QUICKSTART, overrides=overrides)

    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    trials = summary["trials"]
    assert [t["varying"] for t in trials] == [{"model.head": "nonlinear"}, {"model.head": "linear"}]
    assert [(t["status"], t["epoch"], t["epochs"]) for t in trials] == [("stopped", 1, 3)] * 2
    assert summary["trials_planned"]["planned"] == 2 and summary["trials_planned"]["missing"] == 0
    assert [r.to_json() for r in done.trials] == trials
    plan = json.loads((tmp_path / "quickstart" / "plan.json").read_text())
    assert plan["trials"] == [] and plan["algorithm"]["name"] == f"{HERE}:heads_in_turn"
