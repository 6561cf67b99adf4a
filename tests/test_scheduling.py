"""ReplicateASHA: a configuration's replicates continue or stop together on their rung mean.

The unit tests drive the real scheduler with real (stub) Tune ``Trial`` objects in the order
Tune's controller calls it; the slow test runs it through ``tune.Tuner`` on a local Ray.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ablate.scheduling import ReplicateASHA, group_key

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _param(model: str, replicate: int) -> dict:
    return {
        "config": {"model": {"name": model}, "train": {"seed": replicate}},
        "varying": {"model.name": model, "train.seed": replicate},
        "replicate": replicate,
        "sweep": "test",
    }


def _trial(trial_id: str, param: dict) -> Trial:
    return Trial("toy", config=param, trial_id=trial_id, stub=True)


def _result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "score": value}


def _scheduler(**kwargs) -> ReplicateASHA:
    defaults = dict(metric="score", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    return ReplicateASHA(**{**defaults, **kwargs})


def test_group_key_drops_the_seed_and_keeps_the_configuration():
    assert group_key(_param("a", 0), "t0") == group_key(_param("a", 1), "t1")
    assert group_key(_param("a", 0), "t0") != group_key(_param("b", 0), "t0")
    assert group_key({"lr": 0.1}, "t7") == "trial:t7"
    assert group_key({"varying": {"b": 1, "a": 2}}, "x") == group_key(
        {"varying": {"a": 2, "b": 1}}, "y"
    )


def test_rungs_are_ashas_milestones_below_max_t():
    assert _scheduler().rungs == [1, 2, 4]
    assert _scheduler(max_t=100, grace_period=1, reduction_factor=4).rungs == [1, 4, 16, 64]
    with pytest.raises(ValueError, match="reduction_factor"):
        _scheduler(reduction_factor=1)


def test_one_replicate_decides_as_ray_asha_on_the_same_results():
    rng = np.random.default_rng(0)
    n, max_t = 16, 16
    values = rng.normal(size=(n, max_t)).cumsum(axis=1)  # per-trial learning curves
    ours = _scheduler(max_t=max_t, reduction_factor=3)
    asha = ASHAScheduler(
        time_attr="epoch", metric="score", mode="max", max_t=max_t, grace_period=1,
        reduction_factor=3,
    )  # fmt: skip
    trials = [_trial(f"t{i}", _param(f"m{i}", 0)) for i in range(n)]
    for trial in trials:
        ours.on_trial_add(None, trial)
        asha.on_trial_add(None, trial)
    epoch = {t.trial_id: 0 for t in trials}
    live = list(trials)
    decisions = []
    while live:
        # An interleaving in which trials run at different speeds, as they do under Tune.
        trial = live[rng.integers(len(live))]
        epoch[trial.trial_id] += 1
        e = epoch[trial.trial_id]
        result = _result(e, float(values[int(trial.trial_id[1:]), e - 1]))
        ours_says = ours.on_trial_result(None, trial, result)
        asha_says = asha.on_trial_result(None, trial, result)
        assert ours_says == asha_says, (trial.trial_id, e)
        decisions.append(ours_says)
        if ours_says == STOP:
            ours.on_trial_complete(None, trial, result)
            asha.on_trial_complete(None, trial, result)
            live.remove(trial)
    stopped_early = sum(epoch[t.trial_id] < max_t for t in trials)
    assert 0 < stopped_early < n  # the sequence exercised both decisions


def test_replicates_wait_for_each_other_and_stop_together_on_the_group_mean():
    s = _scheduler(replicates=2)
    good = [_trial("g0", _param("good", 0)), _trial("g1", _param("good", 1))]
    bad = [_trial("b0", _param("bad", 0)), _trial("b1", _param("bad", 1))]
    for trial in good + bad:
        s.on_trial_add(None, trial)
    # good (0.7, 0.5; mean 0.6) is judged first at rung 1 and continues.
    assert s.on_trial_result(None, good[0], _result(1, 0.7)) == CONTINUE
    assert s.on_trial_result(None, good[1], _result(1, 0.5)) == CONTINUE
    # bad's lucky seed (0.75) beats every good seed; plain ASHA would keep it.
    assert s.on_trial_result(None, bad[0], _result(1, 0.75)) == CONTINUE  # waits for b1
    assert s.on_trial_result(None, bad[0], _result(2, 0.75)) == CONTINUE  # still waiting
    # b1 (0.05) completes the group: mean 0.4 < cutoff 0.6, both are stopped.
    assert s.on_trial_result(None, bad[1], _result(1, 0.05)) == STOP
    assert s.on_trial_result(None, bad[0], _result(3, 0.75)) == STOP
    assert s.stopped_groups == {group_key(bad[0].config, "b0"): 1}


def test_a_good_configuration_keeps_its_unlucky_seed():
    s = _scheduler(replicates=2)
    trials = {
        name: [_trial(f"{name}0", _param(name, 0)), _trial(f"{name}1", _param(name, 1))]
        for name in ("a", "b", "c")
    }
    for pair in trials.values():
        for trial in pair:
            s.on_trial_add(None, trial)
    for name, (v0, v1) in {"a": (0.7, 0.5), "b": (0.75, 0.05)}.items():
        s.on_trial_result(None, trials[name][0], _result(1, v0))
        s.on_trial_result(None, trials[name][1], _result(1, v1))
    # c's unlucky seed (0.45) is below plain ASHA's cutoff (median of 0.7, 0.5, 0.75, 0.05 is
    # 0.6); its group mean 0.675 clears the cutoff of the group means (median of 0.6, 0.4).
    assert s.on_trial_result(None, trials["c"][1], _result(1, 0.45)) == CONTINUE
    assert s.on_trial_result(None, trials["c"][0], _result(1, 0.9)) == CONTINUE
    assert group_key(trials["c"][0].config, "") not in s.stopped_groups


def test_mode_min_stops_the_group_with_the_higher_mean():
    s = _scheduler(mode="min", replicates=2)
    low = [_trial("l0", _param("low", 0)), _trial("l1", _param("low", 1))]
    high = [_trial("h0", _param("high", 0)), _trial("h1", _param("high", 1))]
    for trial in low + high:
        s.on_trial_add(None, trial)
    s.on_trial_result(None, low[0], _result(1, 1.0))
    s.on_trial_result(None, low[1], _result(1, 3.0))
    assert s.on_trial_result(None, high[0], _result(1, 0.5)) == CONTINUE
    assert s.on_trial_result(None, high[1], _result(1, 5.0)) == STOP  # mean 2.75 > 2.0


def test_replicates_not_yet_added_are_waited_for():
    s = _scheduler(replicates=2)
    first = _trial("a0", _param("a", 0))
    s.on_trial_add(None, first)
    others = [_trial("o0", _param("o", 0)), _trial("o1", _param("o", 1))]
    for other in others:
        s.on_trial_add(None, other)
        s.on_trial_result(None, other, _result(1, 1.0))
    # a0 alone at rung 1 would be stopped (0.1 < 1.0); its sibling is not even added yet.
    assert s.on_trial_result(None, first, _result(1, 0.1)) == CONTINUE
    assert s.on_trial_result(None, first, _result(2, 0.1)) == CONTINUE
    second = _trial("a1", _param("a", 1))
    s.on_trial_add(None, second)
    assert s.on_trial_result(None, second, _result(1, 0.3)) == STOP  # mean 0.2 < 1.0
    assert s.on_trial_result(None, first, _result(3, 0.1)) == STOP


def test_a_member_that_ends_before_the_rung_is_not_waited_for():
    s = _scheduler(replicates=2)
    ref = [_trial("r0", _param("ref", 0)), _trial("r1", _param("ref", 1))]
    pair = [_trial("p0", _param("p", 0)), _trial("p1", _param("p", 1))]
    for trial in ref + pair:
        s.on_trial_add(None, trial)
    s.on_trial_result(None, ref[0], _result(1, 0.5))
    s.on_trial_result(None, ref[1], _result(1, 0.5))
    assert s.on_trial_result(None, pair[0], _result(1, 0.2)) == CONTINUE  # waits for p1
    s.on_trial_error(None, pair[1])  # p1 fails before its first rung: p is judged on p0
    assert s.on_trial_result(None, pair[0], _result(2, 0.2)) == STOP


def test_state_survives_save_and_restore(tmp_path):
    s = _scheduler(replicates=2)
    trials = [_trial(f"x{r}", _param("x", r)) for r in range(2)]
    trials += [_trial(f"y{r}", _param("y", r)) for r in range(2)]
    for trial in trials:
        s.on_trial_add(None, trial)
    s.on_trial_result(None, trials[0], _result(1, 0.9))
    s.on_trial_result(None, trials[1], _result(1, 0.9))
    s.on_trial_result(None, trials[2], _result(1, 0.1))
    s.save(str(tmp_path / "scheduler.pkl"))
    restored = _scheduler(replicates=2)
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert restored.on_trial_result(None, trials[3], _result(1, 0.1)) == STOP


# ----------------------------------------------------------------------------- through Tune

# Scores constant over epochs, so every rung sees the same values. "bad" has a lucky seed that
# beats every "good" seed; "fine" has an unlucky seed below plain ASHA's cutoff.
SCORES = {"good": (0.7, 0.5), "bad": (0.75, 0.05), "fine": (0.9, 0.45)}
EPOCHS = 8


def _run(scheduler, storage: str, name: str) -> dict[tuple[str, int], int]:
    """Each (configuration, replicate) -> the last epoch it reported."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from ablate.tunesearch import PlannedTrials

    scores, epochs = SCORES, EPOCHS

    def toy_trial(param: dict) -> None:  # nested: Ray ships it by value (tests/ is no package)
        value = scores[param["varying"]["model.name"]][param["replicate"]]
        for epoch in range(1, epochs + 1):
            time.sleep(0.4)
            tune.report({"epoch": epoch, "score": value})

    # Configuration-major, two at a time: a configuration's replicates run together.
    params = [_param(model, r) for model in SCORES for r in range(2)]
    tuner = tune.Tuner(
        tune.with_resources(toy_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            search_alg=PlannedTrials(params, "score", "max"),
            scheduler=scheduler,
            num_samples=len(params),
            max_concurrent_trials=2,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[JsonLoggerCallback()], verbose=0
        ),
    )
    grid = tuner.fit()
    assert not grid.errors
    return {
        (r.config["varying"]["model.name"], r.config["replicate"]): r.metrics["epoch"] for r in grid
    }


@pytest.mark.slow
def test_through_tune_replicates_are_stopped_together_where_plain_asha_splits_them(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rung = dict(time_attr="epoch", max_t=EPOCHS, grace_period=1, reduction_factor=2)
        plain = _run(ASHAScheduler(**rung), str(tmp_path), "plain")
        grouped = _run(ReplicateASHA(**rung, replicates=2), str(tmp_path), "grouped")
    finally:
        ray.shutdown()
    # Plain ASHA judges seeds alone: bad's lucky seed runs every epoch, its other seed and
    # fine's unlucky seed are stopped at the first rung.
    assert plain[("bad", 0)] == EPOCHS and plain[("bad", 1)] < EPOCHS
    assert plain[("fine", 0)] == EPOCHS and plain[("fine", 1)] < EPOCHS
    # Grouped: good (mean 0.6) and fine (0.675) keep both seeds; bad (0.4 < 0.6) loses both.
    assert grouped[("good", 0)] == grouped[("good", 1)] == EPOCHS
    assert grouped[("fine", 0)] == grouped[("fine", 1)] == EPOCHS
    assert grouped[("bad", 0)] < EPOCHS and grouped[("bad", 1)] < EPOCHS
