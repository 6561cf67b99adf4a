"""Storage that fills up or turns read-only mid-sweep, and Ctrl+C twice.

The disk is real: a small tmpfs mounted for the test (root only, as here and in CI) and filled
with a ballast file, so SQLite itself raises "database or disk is full" and writes fail with
ENOSPC, as on a full disk. The MLflow store is a real SQLite store, the sweeps real Ray Tune runs
through the real ``MlflowCallback``, and the Ctrl+C test the real entrypoint.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import cloudpickle, tune
from ray.tune.logger import JsonLoggerCallback
from tiny_quickstart import QUICKSTART, REPO, TINY

from ablate.config import resolve
from ablate.tracking import (
    MlflowCallback,
    StorageError,
    SweepTracker,
    default_tracking_uri,
    publish_report,
    storage_error,
)

EPOCHS = 3


class Disk:
    """A mounted tmpfs of a few MiB; ``fill`` takes its last byte, ``free`` gives it back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ballast = root / "ballast"

    def fill(self) -> None:
        with open(self.ballast, "ab") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        # The last partial block: write byte by byte until nothing fits.
        with open(self.ballast, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 512)
            except OSError as error:
                assert error.errno == errno.ENOSPC

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def trial_param(**train: object) -> dict:
    config = resolve({"train": {"epochs": EPOCHS, **train}})
    return {"config": config, "varying": {}, "replicate": 0, "sweep": "storage-test"}


def _children(client: MlflowClient, tracker: SweepTracker) -> list:
    return client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'"
    )


# ----------------------------------------------------------------------------- without Ray


def test_storage_errors_are_recognised_in_an_exception_chain_or_a_trial_error_text():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoint/model.pt")
    found = storage_error(RuntimeError("wrapped"), "/runs/x")
    assert found is None
    try:
        try:
            raise full
        except OSError as error:
            raise RuntimeError("Tune failed") from error
    except RuntimeError as wrapped:
        found = storage_error(wrapped, "/runs/x", "results")
    assert found is not None and found.path == "/runs/x/checkpoint/model.pt"
    assert str(found).startswith("results /runs/x/checkpoint/model.pt: no space left on device.")
    assert "--resume" in str(found) and found.exit_status == 74
    readonly = OSError(errno.EROFS, "Read-only file system")
    assert storage_error(readonly, "/runs/x").path == "/runs/x"  # no file named: the default
    quota = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded", "/q"))
    assert quota.reason == "disk quota exceeded"
    text = "Traceback ...\nOSError: [Errno 28] No space left on device: '/ckpt/epoch_2/state.pt'"
    assert storage_error(RuntimeError(text)).path == "/ckpt/epoch_2/state.pt"
    sqlite = storage_error(
        RuntimeError("(sqlite3.OperationalError) database or disk is full"), "/m.db"
    )
    assert (sqlite.path, sqlite.reason) == ("/m.db", "the database or its disk is full")
    assert storage_error(OSError(errno.EACCES, "Permission denied", "/x")) is None


def test_a_full_store_names_its_database_and_resume_marks_the_runs_left_running(
    small_disk, tmp_path
):
    uri = default_tracking_uri(small_disk.root)
    param = trial_param()
    tracker = SweepTracker(uri, "full", execution="e1")
    parent = tracker.start()
    run_id = tracker.start_trial("t-1", param["config"], {}, 0)
    assert tracker.log_epoch("t-1", {"epoch": 1, "train/loss": 4.0})
    small_disk.fill()
    with pytest.raises(StorageError) as caught:
        tracker.log_epoch("t-1", {"epoch": 2, "train/loss": 3.0})
    message = str(caught.value)
    assert message.startswith(f"MLflow store {small_disk.root / 'mlflow.db'}: ")
    assert "the database or its disk is full" in message and "--resume" in message
    with pytest.raises(StorageError):  # nothing can be written, not even a status
        tracker.close("KILLED")
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    small_disk.free()
    resumed = pickle.loads(pickle.dumps(tracker))  # as Tune restores its callbacks
    assert resumed.start() == parent
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["ablate.status"]) == ("KILLED", "interrupted")
    assert "marked at resume" in run.data.tags["ablate.status_detail"]
    assert resumed.start_trial("t-1", param["config"], {}, 0) == run_id
    assert resumed.log_epoch("t-1", {"epoch": 2, "train/loss": 3.0})
    resumed.finish_trial("t-1", "interrupted")
    resumed.close("FINISHED")
    assert {r.info.status for r in client.search_runs([resumed.experiment_id])} == {
        "FINISHED",
        "KILLED",
    }


def test_a_report_on_a_full_disk_names_its_directory_and_the_command_that_writes_it_again(
    small_disk, tmp_path
):
    from entrypoints.report import main as report_main

    uri = default_tracking_uri(tmp_path)
    tracker = SweepTracker(uri, "reported", execution="e1")
    for replicate, head in enumerate(["linear", "nonlinear"]):
        param = trial_param(**{"seed": replicate})
        tracker.start_trial(f"t-{replicate}", param["config"], {"model.head": head}, replicate)
        for epoch in range(1, EPOCHS + 1):
            result = {"epoch": epoch, "val/knn_top1": 0.1 * epoch + 0.1 * replicate}
            tracker.log_epoch(f"t-{replicate}", result)
        tracker.finish_trial(f"t-{replicate}", "completed", last_result={**result})
    tracker.close("FINISHED")
    small_disk.fill()
    out = small_disk.root / "report"
    args = ["--experiment", "reported", "--tracking-uri", uri, "--out", str(out), "--no-log"]
    assert report_main(args) == 74
    with pytest.raises(StorageError) as caught:
        publish_report(uri, "reported", out_dir=out, log_to_mlflow=False)
    message = str(caught.value)
    assert message.startswith(f"report directory {out}") and "no space left on device" in message
    assert f"entrypoints.report --experiment reported --run {tracker.parent_run_id}" in message
    small_disk.free()
    assert report_main(args) == 0 and (out / "summary.md").is_file()  # the command it names


# ----------------------------------------------------------------------------- with Ray Tune


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from ablate.sweep import start_local_ray

    start_local_ray(num_cpus=2)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def checkpointed_trial(param: dict) -> None:
    """Reports ``EPOCHS`` epochs, keeping its own checkpoint in ``param["state"]`` (a
    directory), saved once an epoch is reported and read at start, as a Ray Train run keeps
    its checkpoints in the sweep's storage: a resumed trial continues after its last saved
    epoch, whatever Tune had processed when the driver stopped.

    ``fill`` (a Disk root): before reporting epoch ``fill_at``, fill that disk, once (marked
    in the state directory). ``write_to``: write a 1 MiB file there each epoch (a checkpoint
    on a disk that may be full). ``restored_from`` is the epoch it resumed after.
    """
    state = Path(param["state"])
    state.mkdir(parents=True, exist_ok=True)
    saved = state / "epoch.json"
    start = json.loads(saved.read_text())["epoch"] + 1 if saved.exists() else 1
    for epoch in range(start, EPOCHS + 1):
        if param.get("write_to"):
            with open(Path(param["write_to"]) / f"epoch_{epoch}.pt", "wb") as handle:
                handle.write(b"\0" * (1 << 20))
        if param.get("fill") and epoch == param["fill_at"] and not (state / "filled").exists():
            (state / "filled").touch()
            Disk(Path(param["fill"])).fill()
        time.sleep(1.0)  # an epoch's work: the driver stops the sweep while the trial runs
        tune.report(
            {
                "epoch": epoch,
                "train/loss": 5.0 - epoch,
                "val/knn_top1": 0.1 * epoch,
                "restored_from": start - 1,
                "status": "completed" if epoch == EPOCHS else "running",
            }
        )
        saved.write_text(json.dumps({"epoch": epoch}))


def _tuner(param: dict, storage: Path, tracker: SweepTracker) -> tune.Tuner:
    return tune.Tuner(
        tune.with_resources(checkpointed_trial, {"cpu": 1}),
        param_space=param,
        # Trial directories named by trial id, as ablate.sweep.build_tuner names them.
        tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name="full",
            storage_path=str(storage),
            # Explicit, as ablate.sweep.build_tuner does (conftest disables Tune's defaults).
            callbacks=[MlflowCallback(tracker), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_store_that_fills_mid_sweep_stops_it_and_resume_backfills_the_lost_epoch(
    ray_cluster, small_disk, tmp_path
):
    """The store fills while epoch 2 is logged: the sweep stops resumably with one error naming
    the database. After space is freed, the resumed trial continues from its epoch-2 checkpoint
    (so never reports epoch 2 again) and epoch 2 reaches MLflow from the trial's result.json."""
    uri = default_tracking_uri(small_disk.root)
    storage = tmp_path / "results"
    tracker = SweepTracker(uri, "full", execution="full", results_dir=storage / "full")
    param = {**trial_param(), "state": str(tmp_path / "state"), "fill": str(small_disk.root)}
    param["fill_at"] = 2
    with pytest.raises(StorageError) as caught, tracker:
        _tuner(param, storage, tracker).fit()
    message = str(caught.value)
    assert message.startswith(f"MLflow store {small_disk.root / 'mlflow.db'}: ")
    assert "could not be marked" in message and "--resume" in message
    small_disk.free()

    client = MlflowClient(uri)
    (child,) = _children(client, tracker)
    trial_id = child.data.tags["ablate.trial_id"]
    assert child.info.status == "RUNNING"  # the full disk took even the status
    assert [int(m.step) for m in client.get_metric_history(child.info.run_id, "epoch")] == [1]
    lines = (storage / "full" / trial_id / "result.json").read_text().splitlines()
    recorded = {json.loads(line)["epoch"]: json.loads(line) for line in lines}
    assert sorted(recorded) == [1, 2]  # Tune stopped gracefully: its record reached storage

    resumed = SweepTracker(uri, "full", execution="full", results_dir=storage / "full")
    restored = tune.Tuner.restore(
        str(storage / "full"),
        trainable=tune.with_resources(checkpointed_trial, {"cpu": 1}),
        resume_unfinished=True,
        resume_errored=True,
    )
    with resumed:
        restored.fit()
    run = client.get_run(child.info.run_id)
    assert (run.info.status, run.data.tags["ablate.status"]) == ("FINISHED", "completed")
    assert run.data.metrics["restored_from"] == 2  # epoch 2 was not reported again ...
    history = {int(m.step): m for m in client.get_metric_history(run.info.run_id, "epoch")}
    assert sorted(history) == [1, 2, 3]  # ... yet MLflow has it, once
    assert history[2].timestamp == int(recorded[2]["timestamp"] * 1000)
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((int(m.step), m.value) for m in loss) == [(1, 4.0), (2, 3.0), (3, 2.0)]
    runs = client.search_runs([tracker.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_that_cannot_write_its_checkpoint_stops_the_sweep_with_its_runs_marked(
    ray_cluster, small_disk, tmp_path
):
    """Checkpoints on a full disk: the trial's ENOSPC stops the sweep (it is no fault of the
    trial's) with one error naming the file; the store is elsewhere, so the runs are marked:
    the trial's KILLED (interrupted, resumable), the sweep's FAILED."""
    small_disk.fill()
    uri = default_tracking_uri(tmp_path / "store")
    storage = tmp_path / "results"
    tracker = SweepTracker(uri, "full", execution="full", results_dir=storage / "full")
    param = {**trial_param(), "state": str(tmp_path / "state"), "write_to": str(small_disk.root)}
    with pytest.raises(StorageError) as caught, tracker:
        _tuner(param, storage, tracker).fit()
    message = str(caught.value)
    (child,) = _children(MlflowClient(uri), tracker)
    trial_id = child.data.tags["ablate.trial_id"]
    # write() names no file: the message names where the sweep's trials write.
    where = storage / "full"
    assert message.startswith(f"trial {trial_id}: writing under {where}: no space left on device.")
    assert "runs are marked" in message and "--resume" in message
    client = MlflowClient(uri)
    assert (child.info.status, child.data.tags["ablate.status"]) == ("KILLED", "interrupted")
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FAILED"
    assert "no space left on device" in parent.data.tags["ablate.error"]


# ----------------------------------------------------------------------------- entrypoint

#: The quickstart cut down (``tiny_quickstart.TINY``) with MLflow on and epochs to spare: the
#: sweep is still running when the test acts on it.
SMALL = [*TINY, "tracking.enabled=true", "train.epochs=20"]


def _wait_for_an_epoch(driver: subprocess.Popen, db: Path, experiment: str) -> None:
    """Until a trial run of ``experiment`` in the SQLite store ``db`` has logged an epoch.

    The store is opened only once the driver has created it (opening creates it)."""
    client = MlflowClient(f"sqlite:///{db}")
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        found = db.exists() and client.get_experiment_by_name(experiment)
        if found and client.search_runs(
            [found.experiment_id], "tags.`ablate.role` = 'trial' and metrics.epoch >= 1"
        ):
            return
        time.sleep(1.0)
    assert driver.poll() is None, driver.communicate()
    raise AssertionError(f"no epoch logged in 240 s ({experiment})")


# ----------------------------------------------------------------------------- Ctrl+C twice


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_second_ctrl_c_ends_the_sweep_quietly_with_130_and_its_runs_killed(ray_cluster, tmp_path):
    uri = default_tracking_uri(tmp_path)
    overrides = [*SMALL, "name=twice"]
    args = [sys.executable, "-m", "entrypoints.sweep", str(QUICKSTART), "--address", ray_cluster]
    args += ["--storage-path", str(tmp_path), *(x for o in overrides for x in ("--set", o))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    client = MlflowClient(uri)
    try:
        _wait_for_an_epoch(driver, tmp_path / "mlflow.db", "twice")
        driver.send_signal(signal.SIGINT)  # Tune's graceful stop ...
        time.sleep(0.5)
        driver.send_signal(signal.SIGINT)  # ... cut short
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the sweep stopped"), stderr
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id])
    statuses = {r.data.tags["ablate.role"]: r.info.status for r in runs}
    assert "RUNNING" not in {r.info.status for r in runs}, statuses
    parent = next(r for r in runs if r.data.tags["ablate.role"] == "sweep")
    assert parent.info.status == "KILLED"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_entrypoint_ends_a_sweep_whose_store_fills_with_one_error_line_and_74(
    ray_cluster, small_disk, tmp_path
):
    uri = f"sqlite:///{small_disk.root / 'mlflow.db'}"
    overrides = [*SMALL, "name=filled", f"tracking.uri={uri}"]
    args = [sys.executable, "-m", "entrypoints.sweep", str(QUICKSTART), "--address", ray_cluster]
    args += ["--storage-path", str(tmp_path), *(x for o in overrides for x in ("--set", o))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_an_epoch(driver, small_disk.root / "mlflow.db", "filled")
        small_disk.fill()
        stdout, stderr = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 74, stderr[-3000:]
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"error: MLflow store {small_disk.root / 'mlflow.db'}: "), errors
    assert "--resume" in errors[0]
