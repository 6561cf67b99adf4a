"""Faults, with real components: a train worker SIGKILLed mid-trial, a trial that raises (a
simulated out-of-memory), a non-finite loss, the sweep driver SIGKILLed mid-sweep and resumed,
and an MLflow server that is down at start.

One sweep of four tiny trials, run by the real entrypoint on its own local Ray (as a user runs
it, without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in the environment), covers the first four: the
driver is killed once the SIGKILLed trial has recovered and finished, then ``--resume`` ends
the sweep. MLflow (the default SQLite store beside the results) must then hold exactly one run
per trial, none left RUNNING, no epoch logged twice.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from local_servers import (
    REPO,
    alive,
    child_env,
    closed_port,
    cmdline,
    descendants,
    identities,
    kill_pids,
    listeners_of,
)
from mlflow import MlflowClient

from ablate.tracking import default_tracking_uri

OOM = "CUDA out of memory (simulated)"
FAULT_SPEC = f"""\
name: faults
description: one trial per fault (and one without), four tiny trials two at a time
data: {{name: synthetic, num_train: 320, num_test: 64, num_classes: 4, synthetic_size: 16,
       val_fraction: 0.2}}
model: {{arch: resnet18, stem: cifar, width: 8, out_dim: 16}}
augment: {{ops: [crop, color]}}
optim: {{name: lars, base_lr: 0.3, warmup_epochs: 1}}
train: {{epochs: 2, batch_size: 64, precision: fp32}}
eval: {{knn_k: 10, probe: {{max_iter: 10}}}}
resources: {{num_workers: 1, cpus_per_worker: 1}}
together:
  - {{train.faults.kill_once_at_epoch: 1}}   # rank 0's process SIGKILLed after epoch 1
  - {{model.head: linear}}                   # no fault
  - {{train.faults.nan_loss_at_epoch: 1}}    # the loss turns NaN in epoch 1
  - {{train.batch_size: 128, train.faults.raise_at_start: {OOM}}}
algorithm: {{name: grid, max_concurrent_trials: 2}}
scheduler: {{name: fifo}}
"""
ROLES = {
    "train.faults.kill_once_at_epoch": "killed",
    "model.head": "clean",
    "train.faults.nan_loss_at_epoch": "nan",
    "train.faults.raise_at_start": "oom",
}


def _role(varying: dict) -> str | None:
    return next((ROLES[key] for key in varying if key in ROLES), None)


def _trial_states(experiment: Path) -> dict[str, str]:
    """Trial id -> Tune status, from the newest experiment-state file (written every second)."""
    files = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except (OSError, ValueError):  # caught mid-write
        return {}
    states = {}
    for trial_json, _ in data.get("trial_data", []):
        state = json.loads(trial_json)
        states[state["trial_id"]] = state["status"]
    return states


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
        if p.is_file()
    }


def _children(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("ablate.role") == "trial"]


def _wait(condition, timeout_s: float, what: str, log: Path, driver: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver.poll() is not None:
            pytest.fail(f"the driver exited ({driver.returncode}) before {what}:\n" + _tail(log))
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n" + _tail(log))


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


@pytest.fixture
def ray_tmp():
    """A short temp dir for Ray's session (its unix sockets live below it), removed after."""
    path = tempfile.mkdtemp(prefix="rf", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_faults_stay_in_their_trial_and_a_killed_driver_resumes_with_nothing_lost(
    tmp_path, ray_tmp
):
    spec = tmp_path / "faults.yaml"
    spec.write_text(FAULT_SPEC)
    storage = tmp_path / "runs"
    experiment = storage / "faults"
    uri = default_tracking_uri(storage)
    client = MlflowClient(uri)
    env = child_env(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=None,  # a user's shell: ablate must keep Ray local
        RAY_ADDRESS=None,
        MLFLOW_TRACKING_URI=None,
        RAY_TMPDIR=ray_tmp,
        TUNE_GLOBAL_CHECKPOINT_S="1",
    )
    args = [sys.executable, "-m", "entrypoints.sweep", str(spec), "--storage-path", str(storage)]
    first_log = tmp_path / "first.log"
    ray_processes: dict[int, int] = {}  # pid -> start time
    started = time.monotonic()
    with open(first_log, "w") as log:
        driver = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # While trials run: every port of Ray's processes is on loopback, the trials' workers
        # (their process group's rendezvous store and gloo sockets) included.
        def train_worker_running() -> bool:
            return any(
                cmdline(p).startswith("ray::RayTrainWorker") for p in descendants(driver.pid)
            )

        _wait(train_worker_running, 240, "a Ray Train worker to start", first_log, driver)
        print(f"train worker up at {time.monotonic() - started:.0f} s")
        ray_processes = identities(descendants(driver.pid) - {driver.pid})
        sockets = listeners_of(ray_processes)
        processes = {entry.process for entry in sockets}
        assert {"gcs_server", "raylet"} <= processes, sockets
        assert [entry for entry in sockets if not entry.loopback] == [], sockets

        # Kill the driver once the SIGKILLed trial has recovered and finished, while another
        # trial's MLflow run is open.
        def killed_trial_done() -> str | None:
            states = _trial_states(experiment)
            for trial_id, status in states.items():
                results = _results(experiment / trial_id)
                varying = results[0].get("config", {}).get("varying", {}) if results else {}
                if status == "TERMINATED" and _role(varying) == "killed":
                    return trial_id
            return None

        killed_id = _wait(killed_trial_done, 420, "the SIGKILLed trial to end", first_log, driver)
        print(f"SIGKILLed trial done at {time.monotonic() - started:.0f} s")
        _wait(
            lambda: any(r.info.status == "RUNNING" for r in _children(client, "faults")),
            120,
            "another trial to start",
            first_log,
            driver,
        )
        ray_processes |= identities(descendants(driver.pid) - {driver.pid})
        finished = [t for t, s in _trial_states(experiment).items() if s == "TERMINATED"]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        # Most of Ray's processes share the driver's fate; its dashboard and runtime-env
        # agents linger for a while: give them a moment, then stop them by PID.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in ray_processes):
            time.sleep(0.5)
        kill_pids(ray_processes, grace_s=3.0)
    first_seconds = time.monotonic() - started
    assert killed_id in finished

    at_kill = {r.info.run_id: r for r in _children(client, "faults")}
    left_running = [r.info.run_id for r in at_kill.values() if r.info.status == "RUNNING"]
    assert left_running, "the kill left no run open"
    untouched = {
        t: (_results(experiment / t), _snapshot(experiment / "train" / t)) for t in finished
    }

    # Resume: the sweep ends; exit 1 because a trial failed (the simulated out-of-memory).
    resumed = subprocess.run(
        [*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=560
    )
    output = resumed.stdout + resumed.stderr
    (tmp_path / "resumed.log").write_text(output)
    assert resumed.returncode == 1, output[-4000:]
    assert "1 trial(s) failed" in output
    print(f"first driver {first_seconds:.0f} s, resumed {time.monotonic() - started:.0f} s total")

    summary = json.loads((experiment / "summary.json").read_text())
    statuses = {_role(t["varying"]): t["status"] for t in summary["trials"]}
    assert statuses == {
        "killed": "completed",
        "clean": "completed",
        "nan": "diverged",
        "oom": "failed",
    }
    for trial_id, (results, files) in untouched.items():  # finished before the kill: not re-run
        assert _results(experiment / trial_id) == results
        assert _snapshot(experiment / "train" / trial_id) == files

    # The SIGKILLed worker's trial went on from its epoch-1 checkpoint in a new worker group.
    killed = _results(experiment / killed_id)
    assert [(r["epoch"], r["restored_epoch"]) for r in killed] == [(1, 0), (2, 1)]

    # MLflow: one parent, one child per trial (the runs open at the kill continued), all ended.
    found = client.get_experiment_by_name("faults")
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ablate.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ablate.trial_id"] for r in children) == sorted(
        t["trial_id"] for t in summary["trials"]
    )
    assert set(at_kill) <= {r.info.run_id for r in children}
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    by_role = {_role(json.loads(r.data.tags["ablate.varying"])): r for r in children}
    for role, run in by_role.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert steps == sorted(set(steps)), f"{role}: epoch logged twice: {steps}"
        for key in ("train/loss", "val/knn_top1"):
            history = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(history) == len(set(history)), f"{role}: {key} duplicated: {history}"
    assert [m.step for m in client.get_metric_history(by_role["killed"].info.run_id, "epoch")] == [
        1,
        2,
    ]
    restored = client.get_metric_history(by_role["killed"].info.run_id, "restored_epoch")
    assert sorted((m.step, m.value) for m in restored) == [(1, 0.0), (2, 1.0)]

    expect = {
        "killed": ("completed", "FINISHED"),
        "clean": ("completed", "FINISHED"),
        "nan": ("diverged", "FINISHED"),
        "oom": ("failed", "FAILED"),
    }
    for role, (status, mlflow_status) in expect.items():
        run = by_role[role]
        assert (run.data.tags["ablate.status"], run.info.status) == (status, mlflow_status), role
    assert "non-finite loss" in by_role["nan"].data.tags["ablate.reason"]
    assert OOM in by_role["oom"].data.tags["ablate.error"]
    error_txt = client.download_artifacts(by_role["oom"].info.run_id, "error.txt")
    assert OOM in Path(error_txt).read_text()

    # The finished sweep cannot be resumed with other trials: refused, nothing changed (its
    # files, and its MLflow runs: the tracker does not reopen them).
    before = _snapshot(experiment)
    runs_before = {r.info.run_id: (r.info.status, r.info.end_time) for r in runs}
    changed = subprocess.run(
        [*args, "--resume", "--set", "train.epochs=3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "differ" in changed.stderr and "new name" in changed.stderr
    assert "Started a local Ray instance" not in changed.stderr
    assert _snapshot(experiment) == before
    runs_after = client.search_runs([found.experiment_id], max_results=1000)
    assert {r.info.run_id: (r.info.status, r.info.end_time) for r in runs_after} == runs_before


def test_mlflow_server_down_at_start_exits_2_before_ray(tmp_path):
    ray_tmp = tmp_path / "ray_tmp"
    ray_tmp.mkdir()
    port = closed_port()
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.sweep",
            str(REPO / "search_spaces" / "quickstart.yaml"),
            "--storage-path",
            str(tmp_path / "runs"),
            "--set",
            f"tracking.uri=http://127.0.0.1:{port}",
        ],
        cwd=REPO,
        env=child_env(RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable" in done.stderr
    assert "mlflow server --host 127.0.0.1" in done.stderr  # what to do about it
    assert "Traceback" not in done.stderr
    assert list(ray_tmp.iterdir()) == []  # no Ray session was created
    assert not (tmp_path / "runs" / "quickstart").exists()
    print(f"refused in {seconds:.1f} s")
