"""Chaos: a small sweep driven through N random faults; how many planned trials it loses.

Runs a shrunk quickstart sweep (synthetic data, 6 trials, 2 at a time, a few epochs of a few
steps, MLflow on, a 30 s stall timeout) through ``python -m entrypoints.sweep`` as a user does,
each driver in a session of its own with its own ``$RAY_TMPDIR``, everything on 127.0.0.1.
While it runs, ``--faults N`` faults are drawn from ``random.Random(--seed)`` and injected one
after another, each a few seconds after its precondition holds:

* ``kill_worker``: SIGKILL one Ray Train worker (``ray::RayTrainWorker...``) of a running trial;
  Ray Train should restart the worker group from the trial's checkpoint.
* ``kill_driver``: SIGKILL the driver once a trial has reported an epoch, stop what is left of
  its Ray (by PID), rerun with ``--resume``.
* ``truncate_checkpoint``: SIGKILL the driver (as above), cut the newest checkpoint file
  (``<storage>/<sweep>/train/<trial>/<checkpoint dir>/state.pt``) of an unfinished trial to
  half its size, rerun with ``--resume``; the previous intact checkpoint sits next to it.
* ``fill_disk`` (root only, unless ``--no-fill-disk``): the storage path is a small tmpfs; a
  filler file takes all its free space for 20-40 s (or until the driver exits), then is
  removed; a driver that exited is rerun with ``--resume``.
* ``stop_worker`` (only with ``--hang``): SIGSTOP a Ray Train worker; the sweep's stall
  watchdog (``resources.stall_timeout_s``) should end that trial failed ("stalled"). The
  next fault waits until the stopped worker is gone (``torn_down_after_s``; None: it was not
  within twice the stall timeout and a minute).

After the faults the sweep is resumed (``--resume``) until a driver exits 0 or 1 (the sweep
ran to its end) or 2 (it refused to start: a person must act), at most ``--max-resumes``
times and within ``--max-wall-s``. Then it reads ``plan.json`` (the planned trials),
``summary.json`` and the MLflow store (``mlflow.db`` in the storage path) and prints one JSON
line on stdout:

    {"benchmark": "chaos", "planned": 6, "completed": ..., "stopped": ..., "failed": ...,
     "interrupted": ..., "lost": ..., "lost_trials": [...], "faults": [...], "runs": [...],
     "resume_exit_codes": [...], "wall_s": ..., ...}

A planned trial (its varying values and replicate) is *lost* when ``summary.json`` has no
final record of it (completed, stopped, diverged or failed) or MLflow has no ended run of it
with such a status; ``lost_summary`` / ``lost_mlflow`` say which. ``interrupted`` (it never
reported an epoch) counts as lost. ``duplicates``: planned trials with more than one record
(a trial counted twice) in ``summary.json``; ``mlflow.duplicates``: planned trials with more
than one ended run in MLflow (the report, built from MLflow, would count them as replicates);
``mlflow.disagree``: planned trials whose outcome in MLflow is not the one ``summary.json``
gives. ``mlflow.missing_epochs``: epochs a trial's run says it ran
(``ablate.epochs_run``) but has no ``epoch`` value logged for. Each run lists its exit code,
wall time, the processes of its Ray still alive 10 s after the driver exited on its own
(``leftover_processes``: a clean exit leaves none) and its console log. Target: lost = 0.

    python benchmarks/chaos.py --faults 3 --seed 0 [--hang] [--epochs 4] [--rev HEAD] [--keep]
    python benchmarks/chaos.py --count /tmp/ablate_chaos_.../storage_copy   # count again

``--rev HEAD`` runs the committed tree (a ``git worktree``), leaving out uncommitted edits;
the JSON names the commit it ran and whether the tree had uncommitted edits. The sweep's
schedule limit (``resources.schedule_timeout_s``, ``--schedule-s``) is 180 s, so a trial that
can never be placed ends the run instead of freezing it.

Progress goes to stderr. Run on an otherwise idle machine for timings that mean anything; the
counts mean something anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from local_servers import (  # noqa: E402  (the tests' process helpers)
    alive,
    child_env,
    cmdline,
    driver_pids,
    identities,
    kill_pids,
    ray_train_workers,
)

SWEEP = "chaos"
FAULTS = ("kill_worker", "kill_driver", "truncate_checkpoint", "fill_disk", "stop_worker")
#: Final outcomes of a trial (``ablate.vocabulary.TRIAL_STATUSES`` less ``interrupted``).
FINAL = ("completed", "stopped", "diverged", "failed")
CHECKPOINT_FILE = "state.pt"  # ablate.train.CHECKPOINT_FILE


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def overrides(storage: Path, args: argparse.Namespace) -> list[str]:
    return [
        f"name={SWEEP}",
        f"storage.path={storage}",
        "data.num_train=256",
        "data.num_test=64",
        "train.batch_size=32",
        f"train.steps_per_epoch={args.steps}",
        f"train.epochs={args.epochs}",
        "train.checkpoint_every=1",
        "eval.eval_every=1",
        "eval.knn_k=10",
        "eval.probe.max_iter=10",
        "tracking.enabled=true",
        f"resources.stall_timeout_s={args.stall_s}",
        f"resources.schedule_timeout_s={args.schedule_s}",
        "algorithm.max_concurrent_trials=2",
    ]


@dataclass
class Run:
    """One driver: ``python -m entrypoints.sweep`` (with ``--resume`` after the first)."""

    index: int
    resume: bool
    process: subprocess.Popen
    log_path: Path
    started: float
    exit: int | None = None
    ended: float | None = None
    killed: bool = False
    leftover: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def record(self) -> dict[str, Any]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        errors = [
            line.strip()[:300]
            for line in text.splitlines()
            if line.startswith(("error", "Error", "warning")) or "Error:" in line
        ]
        return {
            "run": self.index,
            "resume": self.resume,
            "exit": self.exit,
            "killed_by_chaos": self.killed,
            "wall_s": round((self.ended or time.time()) - self.started, 1),
            "leftover_processes": self.leftover,
            "error_lines": errors[-3:],
            "log": str(self.log_path),
        }


class Chaos:
    def __init__(
        self, args: argparse.Namespace, root: Path, storage: Path, ray_tmp: Path, tree: Path
    ) -> None:
        self.args = args
        self.tree = tree
        self.rng = random.Random(args.seed)
        self.root = root
        self.storage = storage
        self.ray_tmp = ray_tmp
        self.experiment = storage / SWEEP
        self.runs: list[Run] = []
        self.faults: list[dict[str, Any]] = []
        self.t0 = time.time()
        self.deadline = self.t0 + args.max_wall_s
        self.stopped_pids: dict[int, int] = {}
        self.filler = storage / ".chaos_filler"

    # -- drivers

    def command(self, resume: bool) -> list[str]:
        sets = overrides(self.storage, self.args)
        return [
            sys.executable,
            "-m",
            "entrypoints.sweep",
            "search_spaces/quickstart.yaml",
            *(x for o in sets for x in ("--set", o)),
            *(["--resume"] if resume else []),
        ]

    def start(self) -> Run:
        resume = bool(self.runs)
        index = len(self.runs)
        log_path = self.root / f"driver_{index}.log"
        env = child_env(
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            RAY_AUTH_MODE="token",
            RAY_TMPDIR=str(self.ray_tmp),
            RAY_ADDRESS=None,
            MLFLOW_TRACKING_URI=None,
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            # Ray's workers inherit it: they import the tree under test, not the installed one.
            PYTHONPATH=str(self.tree),
        )
        with open(log_path, "w") as out:
            process = subprocess.Popen(
                self.command(resume),
                cwd=self.tree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = Run(index, resume, process, log_path, time.time())
        self.runs.append(run)
        log(f"run {index}: driver {process.pid} started{' --resume' if resume else ''}")
        return run

    def current(self) -> Run | None:
        return self.runs[-1] if self.runs and self.runs[-1].exit is None else None

    def poll(self, run: Run) -> bool:
        """Whether ``run``'s driver has exited (then its exit is recorded and its Ray is
        checked and stopped)."""
        if run.exit is not None:
            return True
        code = run.process.poll()
        if code is None:
            return False
        self.finish(run, code)
        return True

    def finish(self, run: Run, code: int) -> None:
        run.exit, run.ended = code, time.time()
        log(f"run {run.index}: driver exited {code} after {run.ended - run.started:.0f} s")
        if not run.killed and code >= 0:
            # A driver that ended on its own shuts its Ray down: give it 10 s, then list
            # whatever of it is still there before stopping it.
            limit = time.time() + 10
            while driver_pids(run.pid, str(self.ray_tmp)) and time.time() < limit:
                time.sleep(0.5)
            run.leftover = [
                f"{pid} {cmdline(pid)[:60]}"
                for pid in sorted(driver_pids(run.pid, str(self.ray_tmp)))
            ]
        self.stop_ray(run)

    def stop_ray(self, run: Run) -> None:
        """Stop every process left of ``run``'s driver and its Ray (by PID; SIGKILL reaches a
        stopped process too)."""
        for _ in range(3):
            pids = identities(driver_pids(run.pid, str(self.ray_tmp)))
            if not pids:
                return
            kill_pids(pids, grace_s=3.0)

    def kill_driver(self, run: Run) -> None:
        run.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
        code = run.process.wait(timeout=30)
        self.finish(run, code)

    # -- what is on disk

    def epochs_reported(self) -> int:
        """Result lines Tune wrote for the sweep's trials (each a reported epoch)."""
        total = 0
        for path in self.experiment.glob("*/result.json"):
            with contextlib.suppress(OSError):
                total += sum(1 for line in path.read_text().splitlines() if line.strip())
        return total

    def checkpoints(self) -> dict[str, list[Path]]:
        """Each trial's checkpoint files, oldest first (by the checkpoint directory's name)."""
        found: dict[str, list[Path]] = {}
        for path in sorted(self.experiment.glob(f"train/*/*/{CHECKPOINT_FILE}")):
            found.setdefault(path.parent.parent.name, []).append(path)
        return found

    @staticmethod
    def checkpoint_epoch(path: Path) -> int:
        digits = "".join(c for c in path.parent.name if c.isdigit())
        return int(digits) if digits else -1

    # -- waiting

    def wait_for(self, condition: Any, run: Run, timeout_s: float) -> Any:
        """``condition()``'s first truthy value while ``run``'s driver runs, else None."""
        limit = min(time.time() + timeout_s, self.deadline)
        while time.time() < limit:
            value = condition()
            if value:
                return value
            if self.poll(run):
                return None
            time.sleep(0.5)
        return None

    def pause(self, run: Run, low: float, high: float) -> bool:
        """Sleep a random ``[low, high]`` s while the driver runs; whether it still does."""
        limit = time.time() + self.rng.uniform(low, high)
        while time.time() < limit:
            if self.poll(run):
                return False
            time.sleep(0.2)
        return not self.poll(run)

    def progress(self, run: Run) -> bool:
        """Wait until a trial has reported an epoch since ``run`` started."""
        before = self.epochs_reported()
        return bool(self.wait_for(lambda: self.epochs_reported() > before, run, 600))

    # -- faults

    def inject(self, kind: str, run: Run) -> dict[str, Any]:
        record: dict[str, Any] = {"fault": kind, "run": run.index}
        detail = getattr(self, f"fault_{kind}")(run)
        record["at_s"] = round(time.time() - self.t0, 1)
        if detail is None:
            record["injected"] = False
            record["why_not"] = f"the driver exited ({run.exit}) before the fault could be made"
        else:
            record["injected"] = True
            record.update(detail)
        log(f"fault {kind}: {json.dumps(record)}")
        return record

    def fault_kill_worker(self, run: Run) -> dict[str, Any] | None:
        def running() -> list[int]:
            return [p for p in ray_train_workers(run.pid) if p not in self.stopped_pids]

        if not self.wait_for(running, run, 600) or not self.pause(run, 2, 8):
            return None
        # Not one that stop_worker stopped: the stall watchdog is to find that one.
        workers = [p for p in ray_train_workers(run.pid) if p not in self.stopped_pids]
        if not workers:
            return None
        pid = self.rng.choice(workers)
        title = cmdline(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return {"pid": pid, "title": title}

    def fault_stop_worker(self, run: Run) -> dict[str, Any] | None:
        if not self.wait_for(lambda: ray_train_workers(run.pid), run, 600):
            return None
        if not self.pause(run, 2, 8):
            return None
        workers = [p for p in ray_train_workers(run.pid) if p not in self.stopped_pids]
        if not workers:
            return None
        pid = self.rng.choice(workers)
        title = cmdline(pid)
        self.stopped_pids.update(identities([pid]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        # The next fault waits for the stall watchdog to tear the stopped worker down (or for
        # twice the stall timeout and a minute more): how long that took is measured.
        stopped_at = time.time()
        gone = self.wait_for(lambda: not alive(pid), run, 2 * self.args.stall_s + 60)
        return {
            "pid": pid,
            "title": title,
            "torn_down_after_s": round(time.time() - stopped_at, 1) if gone else None,
        }

    def fault_kill_driver(self, run: Run) -> dict[str, Any] | None:
        if not self.progress(run) or not self.pause(run, 0, 10):
            return None
        epochs = self.epochs_reported()
        self.kill_driver(run)
        return {"pid": run.pid, "epochs_reported_before": epochs}

    def fault_truncate_checkpoint(self, run: Run) -> dict[str, Any] | None:
        def unfinished_with_two() -> list[str]:
            return [
                trial
                for trial, files in self.checkpoints().items()
                if len(files) >= 2 and self.checkpoint_epoch(files[-1]) < self.args.epochs
            ]

        if not self.wait_for(unfinished_with_two, run, 600) or not self.pause(run, 0, 3):
            return None
        self.kill_driver(run)
        files = self.checkpoints()
        candidates = [
            t for t, f in files.items() if self.checkpoint_epoch(f[-1]) < self.args.epochs
        ] or sorted(files)
        trial = self.rng.choice(sorted(candidates))
        newest = files[trial][-1]
        size = newest.stat().st_size
        with open(newest, "r+b") as file:
            file.truncate(size // 2)
        return {
            "pid": run.pid,
            "trial": trial,
            "file": str(newest.relative_to(self.storage)),
            "bytes": [size, size // 2],
            "checkpoints": [p.parent.name for p in files[trial]],
        }

    def fault_fill_disk(self, run: Run) -> dict[str, Any] | None:
        if not self.progress(run) or not self.pause(run, 0, 5):
            return None
        written = 0
        block = b"\0" * (1 << 20)
        with open(self.filler, "ab", buffering=0) as file, contextlib.suppress(OSError):
            while True:
                written += file.write(block)
        free = shutil.disk_usage(self.storage).free
        hold = self.rng.uniform(20, 40)
        limit = time.time() + hold
        while time.time() < limit and not self.poll(run):
            time.sleep(0.5)
        self.filler.unlink()
        return {
            "filled_mb": round(written / 2**20),
            "free_bytes_while_full": free,
            "held_s": round(hold, 1),
            "driver_exit_while_full": run.exit,
        }

    # -- the whole run

    def run(self) -> None:
        kinds = [
            k
            for k in FAULTS
            if (k != "fill_disk" or self.args.fill_disk) and (k != "stop_worker" or self.args.hang)
        ]
        planned = [self.rng.choice(kinds) for _ in range(self.args.faults)]
        log(f"faults drawn (seed {self.args.seed}): {planned}")
        run = self.start()
        for kind in planned:
            if run.exit is not None:
                why = None
                if run.exit in (0, 1) and not run.killed:
                    why = "the sweep had finished"
                elif run.exit == 2:
                    why = "the driver refused to start (exit 2)"
                elif len(self.runs) > self.args.max_resumes:
                    why = f"no more resumes (--max-resumes {self.args.max_resumes})"
                elif time.time() > self.deadline:
                    why = "wall time limit"
                if why:
                    self.faults.append({"fault": kind, "injected": False, "why_not": why})
                    continue
                run = self.start()
            self.faults.append(self.inject(kind, run))
        resumes = sum(r.resume for r in self.runs)
        while True:
            current = self.current()
            if current is not None:
                while not self.poll(current):
                    if time.time() > self.deadline:
                        log("wall time limit: killing the driver")
                        self.kill_driver(current)
                        break
                    time.sleep(1)
            last = self.runs[-1]
            if (last.exit in (0, 1) and not last.killed) or time.time() > self.deadline:
                break
            if last.exit == 2:
                log("the driver exited 2 (refused to start): resuming again would not help")
                break
            if resumes >= self.args.max_resumes:
                log(f"no more resumes (--max-resumes {self.args.max_resumes})")
                break
            self.start()
            resumes += 1

    def cleanup(self) -> None:
        for run in self.runs:
            if run.exit is None:
                self.kill_driver(run)
            self.stop_ray(run)
        kill_pids({p: s for p, s in self.stopped_pids.items() if alive(p)}, grace_s=1.0)
        with contextlib.suppress(OSError):
            self.filler.unlink()


# ----------------------------------------------------------------------------- the count


def trial_key(varying: dict[str, Any], replicate: Any) -> str:
    return json.dumps({"varying": varying, "replicate": int(replicate or 0)}, sort_keys=True)


def count(storage: Path) -> dict[str, Any]:
    """Planned trials against ``summary.json`` and MLflow (see the module docstring)."""
    experiment = storage / SWEEP
    plan_path, summary_path = experiment / "plan.json", experiment / "summary.json"
    try:
        planned = [
            trial_key(t["varying"], t["replicate"])
            for t in json.loads(plan_path.read_text())["trials"]
        ]
    except (OSError, ValueError, KeyError) as error:
        return {"planned": None, "plan_error": f"{plan_path}: {error!r}"}
    records: dict[str, list[dict[str, Any]]] = {}
    summary_error = None
    try:
        for trial in json.loads(summary_path.read_text())["trials"]:
            records.setdefault(trial_key(trial["varying"], trial["replicate"]), []).append(trial)
    except (OSError, ValueError, KeyError) as error:
        summary_error = f"{summary_path}: {error!r}"
    mlflow_runs, mlflow_info = mlflow_trials(storage)

    outcome: dict[str, str] = {}
    lost_summary, lost_mlflow = [], []
    mlflow_duplicates, disagree = [], []
    for key in planned:
        statuses = [r["status"] for r in records.get(key, [])]
        final = [s for s in statuses if s in FINAL]
        outcome[key] = final[-1] if final else (statuses[-1] if statuses else "missing")
        if not final:
            lost_summary.append(key)
        if mlflow_runs is None:
            continue
        ended = [
            r
            for r in mlflow_runs.get(key, [])
            if r["status"] in FINAL and r["run_status"] != "RUNNING"
        ]
        if not ended:
            lost_mlflow.append(key)
        if len(ended) > 1:  # the report, built from MLflow, counts them as replicates
            mlflow_duplicates.append({**json.loads(key), "runs": ended})
        if final and ended and {r["status"] for r in ended} != {outcome[key]}:
            disagree.append({**json.loads(key), "summary": outcome[key], "mlflow": ended})
    if mlflow_runs is not None:
        mlflow_info = {**mlflow_info, "duplicates": mlflow_duplicates, "disagree": disagree}
    lost = sorted(set(lost_summary) | set(lost_mlflow))
    failed = {
        r["trial_id"]: r.get("error")
        for key in planned
        for r in records.get(key, [])
        if r["status"] in ("failed", "diverged")
    }
    values = list(outcome.values())
    return {
        "planned": len(planned),
        "completed": values.count("completed"),
        "stopped": values.count("stopped"),
        "failed": values.count("failed") + values.count("diverged"),
        "interrupted": values.count("interrupted"),
        "lost": len(lost),
        "lost_trials": [json.loads(k) for k in lost],
        "lost_summary": len(lost_summary),
        "lost_mlflow": len(lost_mlflow) if mlflow_runs is not None else None,
        "duplicates": sum(len(records.get(k, [])) > 1 for k in planned),
        "unplanned_records": sum(len(v) for k, v in records.items() if k not in set(planned)),
        "failed_reasons": failed,
        "summary_error": summary_error,
        "mlflow": mlflow_info,
    }


def mlflow_trials(storage: Path) -> tuple[dict[str, list[dict[str, Any]]] | None, dict[str, Any]]:
    """The sweep's MLflow trial runs by planned-trial key, and what is wrong with them."""
    db = storage / "mlflow.db"
    if not db.exists():
        return None, {"error": f"{db} does not exist"}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(SWEEP)
    if experiment is None:
        return None, {"error": f"no experiment {SWEEP!r} in {db}"}
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`ablate.role` = 'trial'", max_results=5000
    )
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`ablate.role` = 'sweep'", max_results=100
    )
    found: dict[str, list[dict[str, Any]]] = {}
    missing_epochs, running = 0, 0
    missing_where: list[dict[str, Any]] = []
    for run in runs:
        tags = run.data.tags
        varying = json.loads(tags.get("ablate.varying", "{}"))
        status = tags.get("ablate.status", "")
        running += run.info.status == "RUNNING"
        epochs_run = int(tags.get("ablate.epochs_run", "0") or 0)
        if epochs_run:
            steps = {m.step for m in client.get_metric_history(run.info.run_id, "epoch")}
            missing = sorted(set(range(1, epochs_run + 1)) - steps)
            missing_epochs += len(missing)
            if missing:
                missing_where.append({"trial_id": tags.get("ablate.trial_id"), "epochs": missing})
        found.setdefault(trial_key(varying, tags.get("ablate.replicate", 0)), []).append(
            {
                "trial_id": tags.get("ablate.trial_id"),
                "status": status,
                "run_status": run.info.status,
                "epochs_run": epochs_run,
                "detail": tags.get("ablate.status_detail", "")[:120],
            }
        )
    return found, {
        "trial_runs": len(runs),
        "running": running,
        "sweep_runs": [p.info.status for p in parents],
        "missing_epochs": missing_epochs,
        "missing_epochs_of": missing_where,
    }


# ----------------------------------------------------------------------------- main


@contextlib.contextmanager
def storage_path(root: Path, size_mb: int | None):
    """The sweep's storage: a ``size_mb`` tmpfs mounted there (root), else a plain folder."""
    path = root / "storage"
    path.mkdir()
    if size_mb is None:
        yield path
        return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=3, help="faults to inject (N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draw and timing")
    parser.add_argument("--epochs", type=int, default=4, help="train.epochs of each trial")
    parser.add_argument("--steps", type=int, default=3, help="train.steps_per_epoch")
    parser.add_argument("--stall-s", type=float, default=30.0, help="resources.stall_timeout_s")
    parser.add_argument(
        "--schedule-s", type=float, default=180.0, help="resources.schedule_timeout_s"
    )
    parser.add_argument(
        "--rev",
        help="run the sweep from a git worktree of this revision (e.g. HEAD: the committed "
        "tree without uncommitted edits); default: this working tree",
    )
    parser.add_argument("--hang", action="store_true", help="also draw stop_worker (SIGSTOP)")
    parser.add_argument(
        "--no-fill-disk",
        dest="fill_disk",
        action="store_false",
        help="never draw fill_disk (it needs root to mount the tmpfs)",
    )
    parser.add_argument("--disk-mb", type=int, default=256, help="size of the storage tmpfs")
    parser.add_argument("--max-resumes", type=int, default=6)
    parser.add_argument("--max-wall-s", type=float, default=1800.0)
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (logs, a copy of the storage)"
    )
    parser.add_argument(
        "--count",
        metavar="STORAGE",
        help="inject nothing: count the sweep kept under STORAGE (a --keep run's storage_copy)",
    )
    args = parser.parse_args()
    if args.count:
        print(json.dumps({"benchmark": "chaos", "storage": args.count, **count(Path(args.count))}))
        return
    if args.fill_disk and os.geteuid() != 0:
        log("not root: fill_disk is left out (the storage tmpfs needs mount)")
        args.fill_disk = False

    root = Path(tempfile.mkdtemp(prefix="ablate_chaos_"))
    # Short: Ray's unix sockets live below it (108-byte path limit).
    ray_tmp = Path(tempfile.mkdtemp(prefix="ch", dir="/tmp"))
    started = time.time()
    tree = REPO
    if args.rev:
        tree = root / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), args.rev],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=tree,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    chaos = None
    try:
        with storage_path(root, args.disk_mb if args.fill_disk else None) as storage:
            chaos = Chaos(args, root, storage, ray_tmp, tree)
            try:
                chaos.run()
            finally:
                chaos.cleanup()
            counted = count(storage)
            if args.keep and args.fill_disk:
                shutil.copytree(storage, root / "storage_copy", symlinks=True)
        result = {
            "benchmark": "chaos",
            "seed": args.seed,
            "tree": {"commit": commit, "uncommitted_edits": dirty, "rev": args.rev},
            "faults_requested": args.faults,
            **counted,
            "faults": chaos.faults,
            "faults_injected": sum(f.get("injected", False) for f in chaos.faults),
            "runs": [r.record() for r in chaos.runs],
            "resume_exit_codes": [r.exit for r in chaos.runs if r.resume],
            "exit_codes": [r.exit for r in chaos.runs],
            "timed_out": time.time() > chaos.deadline,
            "wall_s": round(time.time() - started, 1),
            "work_dir": str(root) if args.keep else None,
        }
        print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if args.rev:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)],
                cwd=REPO,
                check=False,
                capture_output=True,
            )
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
