"""The sweep console's choices that need no Ray: when it redraws in place, and its clock."""

from __future__ import annotations

import io
import os
import pty

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
