"""The ``--dry-run`` wall-clock estimate (issue 23): its arithmetic (trials laid out at most
``concurrency`` at once; steps x seconds a step plus start-up), its two sources (the last run's
measured times, else a calibration on this machine) and one real invocation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate import dryrun
from ablate.spec import parse_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def plan_of(storage: Path, *overrides: str):
    return parse_sweep(
        QUICKSTART.read_text(),
        source=str(QUICKSTART),
        overrides=[f"storage.path={storage}", *overrides],
    )


def test_trials_are_laid_out_at_most_concurrency_at_once():
    assert dryrun.schedule_seconds([10, 10, 10, 10], 2) == 20
    assert dryrun.schedule_seconds([10, 10, 10], 2) == 20  # the third waits for a free slot
    assert dryrun.schedule_seconds([30, 10, 10, 10], 2) == 30  # the short ones share a slot
    assert dryrun.schedule_seconds([5, 5], 8) == 5
    assert dryrun.schedule_seconds([], 2) == 0
    with pytest.raises(ValueError):
        dryrun.schedule_seconds([1], 0)


def test_a_calibrated_estimate_is_steps_times_the_step_with_its_range(tmp_path):
    plan = plan_of(tmp_path)  # 6 trials of 16 epochs x 28 steps
    steps = 16 * 28
    estimate = dryrun.estimate_wall_clock(plan, concurrency=2, calibrate=lambda config: (0.1, 0))
    low = steps * 0.1
    high = steps * 0.1 * dryrun.CALIBRATION_HIGH + dryrun.STARTUP_SECONDS
    assert estimate.per_trial == pytest.approx([(low + high) / 2] * 6)
    assert estimate.total == pytest.approx(3 * (low + high) / 2)  # 6 trials, 2 at once
    assert (estimate.low, estimate.high) == pytest.approx((3 * low, 3 * high))
    assert estimate.source.startswith("calibration:") and "0.1 s a step" in estimate.source
    assert dryrun.estimate_wall_clock(plan, 2, calibrate=lambda config: (None, 0)) is None


def test_the_last_runs_measured_times_beat_a_calibration(tmp_path):
    plan = plan_of(tmp_path, "train.epochs=2")  # 2 epochs x 28 steps a trial
    directory = Path(plan.experiment_dir)
    directory.mkdir(parents=True)
    (directory / "plan.json").write_text(plan.plan_json())
    trials = [
        {
            "varying": t.varying,
            "replicate": t.replicate,
            "epoch": 2,
            "overhead_seconds": 10.0 + i,
            "metrics": {"wall_seconds": 56 * (0.2 if i % 2 else 0.1)},
        }
        for i, t in enumerate(plan.trials)
    ]
    (directory / "summary.json").write_text(json.dumps({"trials": trials}))

    def calibrate(config):
        raise AssertionError("measured times were there")

    estimate = dryrun.estimate_wall_clock(plan, concurrency=1, calibrate=calibrate)
    assert estimate.source.startswith("measured: 6 trial(s) of the last run of this sweep")
    # Median step 0.15 s (0.1 and 0.2), median start-up 12.5 s; one trial at a time.
    assert estimate.per_trial == pytest.approx([12.5 + 56 * 0.15] * 6)
    assert estimate.low == pytest.approx(6 * (10 + 56 * 0.1))
    assert estimate.high == pytest.approx(6 * (15 + 56 * 0.2))


def test_the_dry_run_prints_the_estimate_and_its_source(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.sweep",
            str(QUICKSTART),
            "--dry-run",
            "--storage-path",
            str(tmp_path),
            "--set",
            "train.epochs=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "estimated wall clock: " in done.stdout
    assert "trial(s) at once on this machine" in done.stdout
    assert "from calibration: 3 pretraining steps of the first trial" in done.stdout
    assert "uncertainty: " in done.stdout
