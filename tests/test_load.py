"""Load: the sweep on cores that are deliberately busy (two CPU-burning processes at nice 0,
``local_servers.cpu_burners``), each driver run as a user runs it (``python -m
entrypoints.sweep``, its own local Ray on 127.0.0.1, in a session of its own, stopped by PID).

* The README's ASHA variant of the quickstart (``--set scheduler.name=asha --set
  eval.eval_every=1``), shrunk to fit the time: it must finish (exit 0) with every planned
  trial accounted for exactly once, none failed (worker-group start-up on a loaded machine
  waits instead of failing the trial), and nothing of its Ray left running.
* Two drivers of the same command on the same storage path, seconds apart: one runs the
  sweep, the other exits 2 naming the first (pid, host, start time), and the summary and
  MLflow count each planned trial once.

Run: ``pytest -m slow tests/test_load.py`` (each test a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from local_servers import (
    REPO,
    child_env,
    cpu_burners,
    driver_pids,
    identities,
    kill_pids,
)
from mlflow import MlflowClient

#: The README's ASHA variant, then what shrinks it to a couple of minutes on 2 idle cores.
ASHA_VARIANT = ["--set", "scheduler.name=asha", "--set", "eval.eval_every=1"]
SHRINK = [
    "data.num_train=256",
    "data.num_test=64",
    "train.batch_size=32",
    "train.steps_per_epoch=2",
    "train.epochs=2",
    "eval.knn_k=10",
    "eval.probe.max_iter=10",
]
FINAL = ("completed", "stopped")


def sweep_command(storage: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "entrypoints.sweep",
        "search_spaces/quickstart.yaml",
        *ASHA_VARIANT,
        *(x for o in [*SHRINK, f"storage.path={storage}", *extra] for x in ("--set", o)),
    ]


def driver_env(ray_tmp: str) -> dict[str, str]:
    return child_env(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_ADDRESS=None,
        RAY_TMPDIR=ray_tmp,
        MLFLOW_TRACKING_URI=None,
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )


class Driver:
    """One ``python -m entrypoints.sweep`` in a session of its own, its Ray below
    ``ray_tmp``; ``stop()`` ends whatever of it still runs, by PID."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="ld", dir="/tmp")  # short: Ray's unix sockets
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=driver_env(self.ray_tmp),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.started = time.monotonic()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def leftovers(self, grace_s: float = 15.0) -> list[int]:
        """Processes of this driver's Ray still alive ``grace_s`` after it exited."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and driver_pids(self.pid, self.ray_tmp):
            time.sleep(0.5)
        return sorted(driver_pids(self.pid, self.ray_tmp))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for _ in range(3):
            pids = identities(driver_pids(self.pid, self.ray_tmp))
            if not pids:
                break
            kill_pids(pids, grace_s=3.0)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def planned_and_recorded(experiment: Path) -> tuple[list[str], dict[str, list[dict]]]:
    """Planned trials (varying values + replicate, as JSON) and summary.json's records of each."""

    def key(trial: dict) -> str:
        return json.dumps([trial["varying"], trial["replicate"]], sort_keys=True)

    planned = [key(t) for t in json.loads((experiment / "plan.json").read_text())["trials"]]
    records: dict[str, list[dict]] = {}
    for trial in json.loads((experiment / "summary.json").read_text())["trials"]:
        records.setdefault(key(trial), []).append(trial)
    return planned, records


def mlflow_trial_runs(storage: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("ablate.role") == "trial"]


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_asha_quickstart_on_busy_cores_accounts_for_every_trial(tmp_path):
    storage = tmp_path / "runs"
    with cpu_burners(2):
        driver = Driver(sweep_command(storage), tmp_path / "driver.log")
        try:
            code = driver.wait(timeout_s=320)
            seconds = time.monotonic() - driver.started
            assert code is not None, (
                f"the sweep did not finish within {seconds:.0f} s on busy cores:\n"
                + driver.output()[-4000:]
            )
            left = driver.leftovers()
        finally:
            driver.stop()
    output = driver.output()
    print(f"ASHA quickstart on busy cores: exit {code} after {seconds:.0f} s")
    assert code == 0, output[-4000:]
    assert left == [], f"processes of the driver's Ray still running after it exited: {left}"

    experiment = storage / "quickstart"
    planned, records = planned_and_recorded(experiment)
    assert len(planned) == 6
    statuses = {k: [r["status"] for r in records.get(k, [])] for k in planned}
    assert all(len(s) == 1 for s in statuses.values()), statuses  # each once, none missing
    assert all(s[0] in FINAL for s in statuses.values()), statuses
    assert sum(len(v) for v in records.values()) == len(planned)  # nothing unplanned
    sweep_log = (experiment / "logs" / "sweep.log").read_text(errors="replace")
    assert "WorkerGroupStartupTimeoutError" not in sweep_log
    # MLflow holds one ended run per planned trial, none left RUNNING.
    runs = mlflow_trial_runs(storage, "quickstart")
    assert len(runs) == len(planned)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * len(planned)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_two_drivers_of_one_sweep_on_busy_cores_one_runs_the_other_exits_2(tmp_path):
    storage = tmp_path / "runs"
    # Two trials: the race is at the start, not in the trials.
    command = sweep_command(
        storage,
        "space.augment.ops={grid: [[crop], [crop, color]]}",
        "space.model.head={grid: [linear]}",
    )
    drivers: list[Driver] = []
    with cpu_burners(2):
        try:
            drivers.append(Driver(command, tmp_path / "first.log"))
            time.sleep(2.0)
            drivers.append(Driver(command, tmp_path / "second.log"))
            ended: dict[int, float] = {}
            deadline = drivers[0].started + 320
            while len(ended) < 2 and time.monotonic() < deadline:
                for index, driver in enumerate(drivers):
                    if index not in ended and driver.process.poll() is not None:
                        ended[index] = time.monotonic() - driver.started
                time.sleep(0.5)
            codes = [d.process.poll() for d in drivers]
        finally:
            started_ray = [bool(list(Path(d.ray_tmp).glob("*/session_*"))) for d in drivers]
            for driver in drivers:
                driver.stop()
    outputs = [d.output() for d in drivers]
    print(f"two drivers on busy cores: exits {codes}")
    assert None not in codes, "\n---\n".join(o[-3000:] for o in outputs)
    assert sorted(codes) == [0, 2], "\n---\n".join(o[-3000:] for o in outputs)
    ran = codes.index(0)
    winner = drivers[ran]
    message = outputs[1 - ran]
    # The refusal names the driver that runs the sweep: its pid, host and start time.
    assert re.search(rf"\b{winner.pid}\b", message), message[-2000:]
    assert re.search(rf"\b{re.escape(socket.gethostname())}\b", message), message[-2000:]
    assert re.search(r"\d\d:\d\d", message), message[-2000:]
    assert "Traceback" not in message, message[-2000:]
    # Refused at the start, before any trial of its own could run.
    assert ended[1 - ran] < 120, ended
    assert not started_ray[1 - ran], "the refused driver started a Ray of its own"

    experiment = storage / "quickstart"
    planned, records = planned_and_recorded(experiment)
    assert len(planned) == 2
    assert sorted(len(records.get(k, [])) for k in planned) == [1, 1], records
    assert sum(len(v) for v in records.values()) == 2
    runs = mlflow_trial_runs(storage, "quickstart")
    assert len(runs) == 2, [r.data.tags.get("ablate.trial_id") for r in runs]
