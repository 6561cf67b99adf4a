"""A sweep's rounds (issue 23): extending a sweep that ran, and racing its configurations.

Extending: ``--resume`` with more replicates runs exactly the new trials (the old ones are
neither rerun nor restarted) and the summary ranks all of them; a spec that changes a trial
already run is refused naming the key (exit 2, before Ray). Racing: seeds go only to the
configurations the report's rule (``stats.versus_best``) leaves undecided, up to ``max``.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import tiny_quickstart
from tiny_quickstart import REPO, TINY, run

from ablate import rounds
from ablate.spec import SpecError
from ablate.sweep import parse_sweep
from ablate.trialrecord import planned_key

#: The quickstart cut down: 256 tiny images, one epoch of 3 steps, no MLflow.
SMALL = [
    *TINY,
    "train.epochs=1",
    "space.augment.ops={grid: [[crop, color]]}",
    "algorithm.max_concurrent_trials=2",
]


def plan_of(storage: Path, *overrides: str):
    return tiny_quickstart.plan_of(storage, *overrides, base=SMALL)


def sweep_args(storage: Path, *overrides: str, address: str | None = None) -> list[str]:
    return tiny_quickstart.sweep_args(storage, *overrides, base=SMALL, address=address)


def saved_round(plan) -> rounds.Round:
    return rounds.Round(0, plan.experiment_dir, json.loads(plan.plan_json()), ())


# ----------------------------------------------------------------------------- extending


def test_more_replicates_keep_the_trials_run_and_add_only_the_new_seeds(tmp_path):
    before = plan_of(tmp_path)
    after = plan_of(tmp_path, "replicates=3")
    resume = rounds.check_resume(after, [saved_round(before)])
    assert [t.key() for t in resume.saved] == [t.key() for t in before.trials]
    assert sorted(t.replicate for t in resume.new) == [1, 1, 2, 2]
    base_seed = before.trials[0].seed
    assert {t.seed - base_seed for t in resume.new} == {1, 2}  # replicate r runs seed + r


def test_a_grid_that_gained_values_adds_their_trials(tmp_path):
    before = plan_of(tmp_path)
    after = plan_of(tmp_path, "space.augment.ops={grid: [[crop, color], [crop]]}")
    resume = rounds.check_resume(after, [saved_round(before)])
    assert len(resume.saved) == 2
    assert [t.varying["augment.ops"] for t in resume.new] == [["crop"], ["crop"]]


def test_a_changed_config_or_a_dropped_trial_is_refused_naming_the_key(tmp_path):
    before = plan_of(tmp_path)
    with pytest.raises(SpecError) as caught:
        rounds.check_resume(
            plan_of(tmp_path, "replicates=2", "train.epochs=2"), [saved_round(before)]
        )
    assert caught.value.key == "train.epochs"
    assert "train.epochs: 1 -> 2 (2 trial(s))" in caught.value.message
    with pytest.raises(SpecError) as caught:
        rounds.check_resume(
            plan_of(tmp_path, "space.model.head={grid: [linear]}"), [saved_round(before)]
        )
    assert caught.value.key == "space"
    assert "no longer plans 1 trial(s)" in caught.value.message
    assert "model.head=nonlinear (replicate 0)" in caught.value.message


def test_an_optuna_sweep_resumes_unchanged_and_a_change_is_refused_naming_only_that_key(
    tmp_path,
):
    """An Optuna sweep resumes its plan as saved; a change names the spec's key with its old
    and new value (it once listed every key of the plan as `None -> value`)."""
    spec = REPO / "search_spaces" / "simclr_temperature.yaml"

    def optuna(*overrides: str):
        return parse_sweep(
            spec.read_text(), source=str(spec), overrides=[f"storage.path={tmp_path}", *overrides]
        )

    before = optuna()
    assert rounds.check_resume(optuna(), [saved_round(before)]).new == []
    for override, key, shown in [
        ("train.epochs=70", "train.epochs", "train.epochs: 200 -> 70"),
        (
            "space.loss.temperature={loguniform: [0.1, 1.0]}",
            "space.loss.temperature.loguniform",
            "space.loss.temperature.loguniform: [0.05,1.0] -> [0.1,1.0]",
        ),
        # Tune restores the searcher with its concurrency limit: a new one would be ignored.
        ("algorithm.max_concurrent_trials=2", "algorithm.max_concurrent_trials", "4 -> 2"),
    ]:
        with pytest.raises(SpecError) as caught:
            rounds.check_resume(optuna(override), [saved_round(before)])
        assert caught.value.key == key
        assert shown in caught.value.message
        assert "None ->" not in caught.value.message
        assert "continues a sweep searched by optuna exactly as it was planned" in (
            caught.value.message
        )


def test_a_later_rounds_plan_lists_every_trial_and_each_round_owns_its_new_ones(tmp_path):
    before = plan_of(tmp_path)
    after = plan_of(tmp_path, "replicates=2")
    directory = Path(before.experiment_dir)
    (directory / "round-1").mkdir(parents=True)
    (directory / "plan.json").write_text(before.plan_json())
    (directory / "round-1" / "plan.json").write_text(after.plan_json())
    saved = rounds.saved_rounds(str(directory))
    assert [r.index for r in saved] == [0, 1]
    assert saved[1].experiment_dir == f"{directory}/round-1"
    resume = rounds.check_resume(after, saved)
    assert resume.new == []
    assert [t.replicate for t in resume.own_trials(0)] == [0, 0]
    assert [t.replicate for t in resume.own_trials(1)] == [1, 1]


def test_the_entrypoint_refuses_a_changed_epochs_on_resume_with_exit_2_before_ray(tmp_path):
    plan = plan_of(tmp_path, "name=ext")
    Path(plan.experiment_dir).mkdir(parents=True)
    Path(plan.experiment_dir, "plan.json").write_text(plan.plan_json())
    done = run([*sweep_args(tmp_path, "name=ext", "train.epochs=2", "replicates=2"), "--resume"])
    assert done.returncode == 2, done.stderr
    assert "train.epochs: 1 -> 2" in done.stderr
    assert "cannot change or drop the ones it ran" in done.stderr
    # Refused before Ray started: nothing was added to the sweep's directory.
    assert sorted(os.listdir(plan.experiment_dir)) == ["plan.json"]


# ----------------------------------------------------------------------------- racing


RACE = ["replicates={min: 2, max: 4}", "space.model.head={grid: [none, linear, nonlinear]}"]


def records_of(plan, values: dict[str, list[float]]) -> list[dict]:
    """Completed records: configuration (its model.head) -> its value per replicate."""
    configurations = {c["model.head"]: c for c in plan.configurations()}
    base_seed = plan.trials[0].seed
    return [
        {
            "varying": configurations[head],
            "replicate": replicate,
            "seed": base_seed + replicate,
            "status": "completed",
            "metrics": {plan.metric: value},
        }
        for head, per_seed in values.items()
        for replicate, value in enumerate(per_seed)
    ]


def trials_of(plan, values: dict[str, list[float]]):
    configurations = {c["model.head"]: c for c in plan.configurations()}
    return [plan.trial(configurations[h], r) for h, vs in values.items() for r in range(len(vs))]


def test_racing_adds_a_seed_only_to_configurations_still_undecided(tmp_path):
    plan = plan_of(tmp_path, *RACE)
    assert plan.num_trials == 6  # 3 configurations x min 2 seeds
    values = {
        "none": [0.30, 0.31, 0.30],  # far below the best on every seed: decided
        "linear": [0.80, 0.85, 0.83],
        "nonlinear": [0.82, 0.83, 0.84],  # within the seed noise of linear: undecided
    }
    trials = trials_of(plan, values)
    records = records_of(plan, values)
    state = rounds.race_state(plan, trials, records)
    key = {h: planned_key(c, 0) for h, c in ((c["model.head"], c) for c in plan.configurations())}
    assert state.worse == {key["none"]}
    assert state.undecided == {key["linear"], key["nonlinear"]}
    following = rounds.next_race_round(plan, trials, records)
    assert sorted((t.varying["model.head"], t.replicate) for t in following) == [
        ("linear", 3),
        ("nonlinear", 3),
    ]
    # At max (4 seeds) nothing more is added, decided or not.
    values = {h: [*v, v[-1]] for h, v in values.items()}
    assert rounds.next_race_round(plan, trials_of(plan, values), records_of(plan, values)) == []


def test_racing_ends_when_only_the_best_is_left(tmp_path):
    plan = plan_of(tmp_path, *RACE)
    values = {"none": [0.30, 0.31], "linear": [0.80, 0.81], "nonlinear": [0.50, 0.52]}
    trials, records = trials_of(plan, values), records_of(plan, values)
    state = rounds.race_state(plan, trials, records)
    assert len(state.worse) == 2 and state.undecided == frozenset()
    assert rounds.next_race_round(plan, trials, records) == []


def test_racing_is_refused_with_a_scheduler_that_stops_trials_early(tmp_path):
    with pytest.raises(SpecError) as caught:
        plan_of(tmp_path, *RACE, "scheduler.name=asha")
    assert caught.value.key == "scheduler.name" and "fifo" in caught.value.message
    with pytest.raises(SpecError) as caught:
        plan_of(tmp_path, "replicates={min: 3, max: 2}")
    assert caught.value.key == "replicates.min"


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_extending_a_finished_sweep_runs_exactly_the_new_trials(ray_cluster, tmp_path):
    args = sweep_args(tmp_path, "name=ext", address=ray_cluster)
    experiment = tmp_path / "ext"
    first = run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    plan_json = (experiment / "plan.json").read_text()
    old = {
        t["trial_id"]: t for t in json.loads((experiment / "summary.json").read_text())["trials"]
    }
    assert len(old) == 2
    results = {t: (experiment / t / "result.json").read_bytes() for t in old}
    train_runs = set(os.listdir(experiment / "train"))

    extended = run(
        [*sweep_args(tmp_path, "name=ext", "replicates=2", address=ray_cluster), "--resume"]
    )
    assert extended.returncode == 0, extended.stderr[-3000:]
    summary = json.loads((experiment / "summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert set(old) < set(trials) and len(trials) == 4
    new = [t for i, t in trials.items() if i not in old]
    assert sorted(t["replicate"] for t in new) == [1, 1]
    assert all(t["status"] == "completed" for t in trials.values())
    # The old trials ran once: their results untouched, exactly two new Train runs.
    assert {t: (experiment / t / "result.json").read_bytes() for t in old} == results
    assert len(set(os.listdir(experiment / "train")) - train_runs) == 2
    for trial in new:
        assert (experiment / "round-1" / trial["trial_id"] / "result.json").is_file()
    # plan.json is kept; the extension's plan is a new file beside it.
    assert (experiment / "plan.json").read_text() == plan_json
    assert len(json.loads((experiment / "round-1" / "plan.json").read_text())["trials"]) == 4
    assert [row["completed"] for row in summary["rows"]] == [2, 2]
    assert summary["trials_planned"]["planned"] == 4
    assert summary["trials_planned"]["missing"] == 0
    assert "round 1: 2 new trial(s)" in extended.stderr

    again = run(
        [*sweep_args(tmp_path, "name=ext", "replicates=2", address=ray_cluster), "--resume"]
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((experiment / "summary.json").read_text())["trials"]) == 4
    assert not (experiment / "round-2").exists()


ENCODERS = """
    import torch
    from torch import nn


    class Blind(nn.Module):
        '''Features that ignore the image: its kNN accuracy is that of guessing, on every seed.'''

        feat_dim = 8

        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(8))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1) + 0.0 * x.mean()


    class Pixels(nn.Module):
        '''The image pooled to 4 x 4: fixed features, the same kNN accuracy on every seed.'''

        feat_dim = 48

        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) + 0.0 * self.unused


    def blind(cfg):
        return Blind()


    def pixels(cfg):
        return Pixels()


    def same_pixels(cfg):
        return Pixels()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_race_stops_adding_seeds_to_a_configuration_clearly_worse(ray_cluster, tmp_path):
    """Three encoders whose kNN accuracy is the same on every seed: pooled pixels under two
    names (tied: the comparison can never decide) and one blind to its images (guessing). After
    the first round the blind one is decided worse than the best (its paired differences are
    all the same) and gets no further seed; the two tied ones get one each, up to max."""
    (tmp_path / "race_encoders.py").write_text(textwrap.dedent(ENCODERS))
    arches = ["race_encoders:pixels", "race_encoders:same_pixels", "race_encoders:blind"]
    args = sweep_args(
        tmp_path,
        "name=race",
        "replicates={min: 2, max: 3}",
        f"space.model.arch={{grid: [{', '.join(arches)}]}}",
        "space.model.head={grid: [linear]}",
        "data.num_train=512",
        "data.num_test=128",
        address=ray_cluster,
    )
    done = subprocess.run(
        args,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}:{tmp_path}"},
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tmp_path / "race"
    summary = json.loads((experiment / "summary.json").read_text())
    values: dict[str, list[float]] = {}
    for trial in sorted(summary["trials"], key=lambda t: t["replicate"]):
        arch = trial["varying"]["model.arch"]
        values.setdefault(arch, []).append(trial["metrics"]["val/knn_top1"])
    pixels, same, blind = (values[a] for a in arches)
    assert len(set(pixels + same)) == 1 and len(set(blind)) == 1  # the same on every seed
    assert pixels[0] > blind[0]
    assert (len(pixels), len(same), len(blind)) == (3, 3, 2)
    assert len(json.loads((experiment / "plan.json").read_text())["trials"]) == 6
    added = json.loads((experiment / "round-1" / "plan.json").read_text())["trials"][6:]
    assert sorted((t["varying"]["model.arch"], t["replicate"]) for t in added) == [
        ("race_encoders:pixels", 2),
        ("race_encoders:same_pixels", 2),
    ]
    assert not (experiment / "round-2").exists()  # max 3 seeds: the race ends there
    assert "round 1: 2 new trial(s)" in done.stderr
    assert len(summary["trials"]) == summary["trials_planned"]["planned"]
