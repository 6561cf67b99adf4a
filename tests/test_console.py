"""The sweep console's choices that need no Ray: when it redraws in place, and its clock."""

from __future__ import annotations

import io
import os
import pty

import pytest

from ablate.console import SweepConsole, _duration, is_live


def test_live_only_on_a_terminal_outside_a_ray_job(monkeypatch):
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert is_live(terminal)
            monkeypatch.setenv("RAY_JOB_ID", "02000000")  # `ray job submit` sets it
            assert not is_live(terminal)
    finally:
        os.close(leader)
        os.close(follower)
    assert not is_live(io.StringIO())  # a pipe or a file: plain lines
    assert SweepConsole("val/knn_top1", 6, 16, stream=io.StringIO()).live is False


def test_durations_read_as_a_clock():
    assert [_duration(s) for s in (None, float("nan"), 0, 12.4, 245, 3720)] == [
        "?",
        "?",
        "0s",
        "12s",
        "4m05s",
        "1h02m",
    ]


def test_a_trial_that_ended_short_is_stopped_only_under_early_stopping():
    """Under FIFO nothing stops a trial early: one that ended short (the driver was killed, a
    resumed Tune restored its last result short) is 'interrupted', never 'stopped' by ASHA."""
    from ray.tune.experiment import Trial

    def ended(early_stopping: bool) -> str:
        stream = io.StringIO()
        view = SweepConsole(
            "val/knn_top1", 1, 4, stream=stream, live=False, early_stopping=early_stopping
        )
        trial = Trial(
            "tune_trial",
            config={"config": {"train": {"epochs": 4}}, "varying": {}},
            trial_id="abc",
            stub=True,
        )
        trial.update_last_result({"epoch": 1, "training_iteration": 1})
        view.on_trial_start(0, [trial], trial)
        view.on_trial_complete(0, [trial], trial)
        return view.rows["abc"].state

    assert ended(early_stopping=True) == "stopped"
    assert ended(early_stopping=False) == "interrupted"


def _trial(trial_id: str, replicate: int, epochs: int = 4):
    from ray.tune.experiment import Trial

    return Trial(
        "tune_trial",
        config={
            "config": {"train": {"epochs": epochs}},
            "varying": {"augment.ops": "crop+color"},
            "replicate": replicate,
        },
        trial_id=trial_id,
        stub=True,
    )


def test_a_later_round_counts_every_trial_of_the_sweep():
    """A race's second round adds trials: the count and the ETA take them in, and the view
    says which round runs (it once said 'trials 5/4 done')."""
    view = SweepConsole("val/knn_top1", 4, 4, stream=io.StringIO(), live=False)
    first = [_trial(f"r0_{i}", i) for i in range(4)]
    for trial in first:
        trial.update_last_result({"epoch": 4, "training_iteration": 4, "val/knn_top1": 0.5})
        view.on_trial_start(0, first, trial)
        view.on_trial_complete(0, first, trial)
    assert view.progress().startswith("trials 4/4 done, 0 running")
    view.begin_round(1, 6)
    second = [_trial("r1_0", 4), _trial("r1_1", 5)]
    view.on_trial_start(0, second, second[0])
    view.started_at -= 160  # 16 epochs ran in 160 s
    progress = view.progress()
    assert progress.startswith("round 1: trials 4/6 done, 1 running"), progress
    assert "ETA 1m2" in progress, progress  # 8 epochs still to run, 10 s each: 1m20s


def test_a_restored_trial_that_had_ended_counts_as_done_but_not_in_the_rate():
    """A resumed sweep's restored trials raise no event: they are counted done from the
    trials Tune lists, and the ETA's rate comes only from epochs this driver ran (it once
    said 'trials 0/15 done' and a 10-minute ETA while extending a sweep of 9 by 6)."""
    stream = io.StringIO()
    view = SweepConsole("val/knn_top1", 3, 4, stream=stream, live=False)
    restored = [_trial(f"old{i}", i) for i in range(2)]
    for trial in restored:
        trial.update_last_result({"epoch": 4, "training_iteration": 4, "val/knn_top1": 0.7})
        trial.set_status("TERMINATED")
    view.on_experiment_end(restored)  # a finished round, restored, runs no step: only its end
    view.on_step_end(0, restored)  # and a trial is adopted once
    assert [r.state for r in view.rows.values()] == ["completed", "completed"]
    assert view.rows["old0"].metric == 0.7
    progress = view.progress()
    assert progress.startswith("trials 2/3 done, 0 running"), progress
    assert "ETA ?" in progress  # no epoch ran here yet: no rate to extrapolate from
    # Outside a terminal, one line says so (there had been none: they appeared only as a count).
    (line,) = stream.getvalue().splitlines()
    assert "restored 2 trial(s) that had ended: 2 completed  (trials 2/3 done" in line


def test_the_eta_is_per_epoch_after_the_first_plus_each_trials_start():
    """The quickstart as run with ASHA: the sweep's start and a trial's start-up (13 s, then
    21 s to its first epoch) once made the ETA after the first epoch read 53 minutes for a
    sweep that took 2. An epoch costs what a trial's epochs after its first cost; a start what
    its first result took beyond that; two trials ran at once."""
    view = SweepConsole("val/knn_top1", 6, 16, stream=io.StringIO(), live=False)
    a, b = _trial("a", 0, epochs=16), _trial("b", 1, epochs=16)
    for trial in (a, b):
        view.on_trial_start(0, [a, b], trial)
    view.started_at = 0.0
    view.rows["a"].started_at = view.rows["b"].started_at = 13.0

    def result(trial, epoch: int, at: float) -> None:
        view.on_trial_result(0, [a, b], trial, {"epoch": epoch, "val/knn_top1": 0.3})
        view.rows[trial.trial_id].last_at = at
        if epoch == 1:
            view.rows[trial.trial_id].first_at = at

    result(a, 1, 34.0)
    assert view.eta_seconds(34.0) is None  # one first epoch: start-up and epoch not apart
    result(a, 2, 36.0)
    # 2 s an epoch, 19 s a start: a has 14 epochs left (28 s), b is starting (32 s at least),
    # 4 trials not started (4 x 51 s); over 2 at once.
    assert view.eta_seconds(36.0) == pytest.approx((28 + 32 + 4 * 51) / 2)
    # Later on the clock, a's remaining epochs shrink with the time since its last result.
    assert view.eta_seconds(40.0) == pytest.approx((24 + 32 + 4 * 51) / 2)
