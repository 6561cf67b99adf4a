"""Resume that trusts nothing blindly, and one driver per sweep (issue 22).

Damaged files of a sweep (``plan.json``, Tune's experiment state, a trial's newest checkpoint)
are found before anything relies on them: the sweep falls back to the previous intact one with
a warning, or exits 2 naming the file and the way out; it never exits 0 with planned trials
missing. A trial's outcome on resume rests on its own recorded epochs. A second driver of a
running sweep exits 2 naming the first; a stale lock is taken over.

The end-to-end tests run real sweeps through the entrypoint (drivers joining one local Ray of
2 CPUs), kill a driver with SIGKILL mid-sweep, damage a file as a crash would (cut it short)
and resume.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_quickstart
from tiny_quickstart import REPO, TINY

from ablate import driverlock, preflight
from ablate.spec import SpecError

#: The quickstart cut down: 256 tiny images, epochs of at most 3 steps, no MLflow.
SMALL = [
    *TINY,
    "scheduler.name=fifo",
    "space.augment.ops={grid: [[crop, color]]}",
    "algorithm.max_concurrent_trials=1",
]


def plan_of(storage: Path, *overrides: str):
    return tiny_quickstart.plan_of(storage, *overrides, base=SMALL)


def sweep_args(storage: Path, *overrides: str, address: str | None = None) -> list[str]:
    return tiny_quickstart.sweep_args(storage, *overrides, base=SMALL, address=address)


def run(args: list[str], timeout: float = 400, **env: str) -> subprocess.CompletedProcess:
    return tiny_quickstart.run(args, timeout, **env)


def cut_short(path: Path) -> None:
    """Truncate ``path`` to half its size, as a writer killed mid-write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def dead_pid() -> int:
    """The pid of a process that ran and exited (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- plan.json


def test_a_half_written_plan_json_exits_2_naming_the_file_before_ray(tmp_path):
    plan = plan_of(tmp_path, "space.model.head={grid: [linear, nonlinear]}")
    experiment = Path(plan.experiment_dir)
    experiment.mkdir(parents=True)
    (experiment / "plan.json").write_text(plan.plan_json()[:200])

    done = run(
        [*sweep_args(tmp_path, "space.model.head={grid: [linear, nonlinear]}"), "--resume"],
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: {experiment / 'plan.json'}:" in done.stderr
    assert "--set name=" in done.stderr and "backup" in done.stderr  # the ways out
    assert "Traceback" not in done.stderr and "JSONDecodeError" not in done.stderr
    assert "Started a local Ray instance" not in done.stderr
    assert not (experiment / driverlock.LOCK_NAME).exists()  # the refused driver let go


def test_results_files_are_replaced_whole_or_not_at_all(tmp_path):
    from ablate.sweep import _write_text

    target = tmp_path / "sweep" / "summary.json"
    _write_text(str(target), '{"first": 1}')
    assert target.read_text() == '{"first": 1}'
    # A write that fails half-way (here: text that cannot be encoded) keeps the old file whole
    # and leaves no temporary file behind.
    with pytest.raises(UnicodeEncodeError):
        _write_text(str(target), '{"second": "\ud800"}')
    assert target.read_text() == '{"first": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]
    _write_text(str(target), '{"second": 2}')
    assert json.loads(target.read_text()) == {"second": 2}


# ----------------------------------------------------------------------------- driver lock


def _acquire_in_child(directory: str, start: multiprocessing.Event, out: multiprocessing.Queue):
    start.wait()
    try:
        lock = driverlock.acquire(directory)
    except driverlock.DriverLockError as error:
        out.put(("refused", os.getpid(), str(error)))
        return
    out.put(("holds", os.getpid(), lock.created_directory))
    time.sleep(2.0)  # hold it while the others try
    lock.release()


def test_of_drivers_racing_for_a_new_sweep_exactly_one_gets_it(tmp_path):
    directory = str(tmp_path / "sweep")
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    children = [
        context.Process(target=_acquire_in_child, args=(directory, start, out)) for _ in range(6)
    ]
    for child in children:
        child.start()
    start.set()
    outcomes = [out.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    holders = [o for o in outcomes if o[0] == "holds"]
    assert len(holders) == 1, outcomes
    (_, winner, created) = holders[0]
    assert created  # the one that got it made the directory: a new sweep, not results
    for _, _, message in (o for o in outcomes if o[0] == "refused"):
        assert f"pid {winner} on host {socket.gethostname()}, started " in message
    # Released at the end, and the directory it created (empty again) with it.
    assert not Path(directory).exists()


def test_a_second_driver_exits_2_naming_the_first_before_ray(tmp_path):
    plan = plan_of(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ablate import driverlock\n"
            f"lock = driverlock.acquire({plan.experiment_dir!r})\n"
            "print(lock.owner.started, flush=True)\n"
            "time.sleep(120)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = holder.stdout.readline().strip()
        done = run(sweep_args(tmp_path), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "another driver is running this sweep" in done.stderr
    assert f"pid {holder.pid} on host {socket.gethostname()}, started {started}" in done.stderr
    assert "Started a local Ray instance" not in done.stderr


def test_a_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path, capsys):
    plan = plan_of(tmp_path)
    lock_path = Path(plan.experiment_dir) / driverlock.LOCK_NAME
    lock_path.parent.mkdir(parents=True)
    stale = {
        "pid": dead_pid(),
        "host": socket.gethostname(),
        "started_at": time.time() - 60,
        "started": "a minute ago",
        "token": "0123456789abcdef",
    }
    lock_path.write_text(json.dumps(stale))

    checked = preflight.check(plan, resume=True)
    try:
        assert "took over the stale lock" in capsys.readouterr().err
        owner = json.loads(lock_path.read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        assert checked.restore is True  # the directory existed: results to resume
    finally:
        checked.release()
    assert not lock_path.exists()
    assert lock_path.parent.is_dir()  # not created by this lock: kept


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    plan = plan_of(tmp_path)
    lock_path = Path(plan.experiment_dir) / driverlock.LOCK_NAME
    lock_path.parent.mkdir(parents=True)
    other = {
        "pid": dead_pid(),
        "host": "another-machine",
        "started_at": time.time(),
        "started": "now",
        "token": "fedcba9876543210",
    }
    lock_path.write_text(json.dumps(other))
    with pytest.raises(SpecError) as refused:
        preflight.check(plan, resume=True)
    assert refused.value.key == "name"
    assert f"pid {other['pid']} on host another-machine" in refused.value.message
    assert f"delete {lock_path}" in refused.value.message
    assert json.loads(lock_path.read_text()) == other


def test_a_check_that_fails_after_the_lock_leaves_no_sweep_directory(tmp_path):
    plan = plan_of(tmp_path, "train.batch_size=4096")  # more than the 256 images: refused
    with pytest.raises(SpecError):
        preflight.check(plan)
    assert not Path(plan.experiment_dir).exists()  # the next start is not refused as results


# ----------------------------------------------------------------------------- end to end


def _lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def _start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            args,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _kill_when(driver: subprocess.Popen, log: Path, ready, timeout: float = 300) -> None:
    """SIGKILL ``driver`` once ``ready()`` holds (a driver that dies first fails the test)."""
    deadline = time.time() + timeout
    while not ready():
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    driver.send_signal(signal.SIGKILL)
    driver.wait()


def _latest_checkpoint(train_run: Path) -> str | None:
    try:
        snapshot = json.loads((train_run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


def _trial_ids(experiment: Path) -> list[str]:
    runs = experiment / "train"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one(ray_cluster, tmp_path):
    """Kill the driver once epoch 2's checkpoint is Train's latest, cut that checkpoint short
    and resume: the trial resumes from epoch 1's checkpoint and completes its 3 epochs."""
    args = sweep_args(
        tmp_path,
        "name=ckpt",
        "train.epochs=3",
        "space.model.head={grid: [nonlinear]}",
        address=ray_cluster,
    )
    experiment = tmp_path / "ckpt"

    def second_checkpoint_registered() -> bool:
        return any(
            _latest_checkpoint(experiment / "train" / t) == "epoch_00002"
            for t in _trial_ids(experiment)
        )

    _kill_when(
        _start(args, tmp_path / "first.log"), tmp_path / "first.log", second_checkpoint_registered
    )
    (trial_id,) = _trial_ids(experiment)
    train_run = experiment / "train" / trial_id
    cut_short(train_run / "epoch_00002" / "state.pt")

    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((experiment / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert (trial["status"], trial["epoch"]) == ("completed", 3), trial
    assert summary["trials_planned"]["missing"] == 0
    # Epoch 2 ran again from epoch 1's checkpoint; its new checkpoints have new names.
    results = _lines(experiment / trial_id / "result.json")
    assert [(r["epoch"], r["restored_epoch"]) for r in results][-2:] == [(2, 1), (3, 1)]
    assert _latest_checkpoint(train_run) == "epoch_00003-r1"
    log = (experiment / "logs" / "sweep.log").read_text()
    assert f"checkpoint {train_run}/epoch_00002 does not load" in log
    assert f"resuming from the older checkpoint {train_run}/epoch_00001" in log


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_damaged_experiment_state_falls_back_or_exits_2_never_loses_trials(ray_cluster, tmp_path):
    """Kill the driver after the first of two trials ended. Its experiment state cut short,
    with no older one: exit 2 naming it. Intact, with a newer session's state cut short
    beside it: resume from it with a warning and finish both trials."""
    args = sweep_args(
        tmp_path,
        "name=state",
        "train.epochs=1",
        "space.model.head={grid: [linear, nonlinear]}",
        address=ray_cluster,
    )
    experiment = tmp_path / "state"

    def states() -> list[Path]:
        return sorted(experiment.glob("experiment_state-*.json"))

    def first_trial_saved_as_ended() -> bool:
        return any("TERMINATED" in p.read_text() for p in states())

    _kill_when(
        _start(args, tmp_path / "first.log", TUNE_GLOBAL_CHECKPOINT_S="1"),
        tmp_path / "first.log",
        first_trial_saved_as_ended,
    )
    (state,) = states()
    intact = state.read_bytes()

    # The only state, cut short: nothing to fall back to.
    cut_short(state)
    refused = run([*args, "--resume"], timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"error: {state}:" in refused.stderr and "--set name=" in refused.stderr
    assert "Started a local Ray instance" not in refused.stderr

    # Intact again, and a later session's state beside it cut short (its sidecars whole).
    state.write_bytes(intact)
    session = state.name.removeprefix("experiment_state-").removesuffix(".json")
    later = "2999-01-01_00-00-00"
    for old in experiment.glob(f"*{session}*"):
        (experiment / old.name.replace(session, later)).write_bytes(old.read_bytes())
    damaged = experiment / f"experiment_state-{later}.json"
    cut_short(damaged)

    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"warning: {damaged} is damaged" in resumed.stderr
    assert (experiment / f"experiment_state-{later}.json.damaged").exists()
    summary = json.loads((experiment / "summary.json").read_text())
    assert sorted(t["status"] for t in summary["trials"]) == ["completed", "completed"]
    assert summary["trials_planned"] == {
        **summary["trials_planned"],
        "planned": 2,
        "completed": 2,
        "missing": 0,
    }
    assert "trials: 2 planned, 2 completed, 0 stopped, 0 failed, 0 missing" in resumed.stdout


def _saved_trials(state: bytes) -> dict[str, tuple[str, int | None]]:
    """``{trial_id: (status, epoch of its last result)}`` in a Tune experiment state."""
    trials = {}
    for trial_json, metadata_json in json.loads(state)["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        epoch = (metadata.get("last_result") or {}).get("epoch")
        trials[trial["trial_id"]] = (trial["status"], epoch)
    return trials


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fifo_resume_labels_a_trial_that_ran_all_its_epochs_completed(ray_cluster, tmp_path):
    """Two trials of 2 epochs, one at a time. Tune's state as saved while the first trial was
    at epoch 1 is kept; the driver is killed while the second trial runs, and that state is
    put back as the newest (a driver that died before saving again leaves it so). On resume
    Tune runs the first trial again from its final checkpoint, which reports nothing more, so
    Tune's last result of it says epoch 1 of 2. Its own records say it ran both epochs:
    completed and ranked, not "stopped by the scheduler (ASHA)", which this sweep lacks."""
    args = sweep_args(
        tmp_path,
        "name=fifo",
        "train.epochs=2",
        "train.steps_per_epoch=8",
        "space.model.head={grid: [linear, nonlinear]}",
        address=ray_cluster,
    )
    experiment = tmp_path / "fifo"
    kept: dict[str, bytes] = {}

    def keep_state_at_epoch_1_then_wait_for_the_second_trial() -> bool:
        for path in experiment.glob("experiment_state-*.json"):
            with contextlib.suppress(ValueError, KeyError):
                state = path.read_bytes()
                saved = list(_saved_trials(state).values())
                if saved and saved[0] == ("RUNNING", 1) and not kept:
                    session = path.name.removeprefix("experiment_state-")
                    session = session.removesuffix(".json")
                    kept.update({p.name: p.read_bytes() for p in experiment.glob(f"*{session}*")})
                    kept[path.name] = state
        latest = [_latest_checkpoint(experiment / "train" / t) for t in _trial_ids(experiment)]
        return sorted(latest, key=str) == ["epoch_00001", "epoch_00002"]

    _kill_when(
        _start(args, tmp_path / "first.log", TUNE_GLOBAL_CHECKPOINT_S="1"),
        tmp_path / "first.log",
        keep_state_at_epoch_1_then_wait_for_the_second_trial,
    )
    assert kept, "no experiment state with the first trial at epoch 1 was saved"
    for name, data in kept.items():
        (experiment / name).write_bytes(data)
    first = next(iter(_saved_trials(next(v for k, v in kept.items() if "experiment" in k))))

    resumed = run([*args, "--resume"], TUNE_GLOBAL_CHECKPOINT_S="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((experiment / "summary.json").read_text())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert (trials[first]["status"], trials[first]["epoch"]) == ("completed", 2), trials
    assert [(t["status"], t["epoch"]) for t in trials.values()] == [("completed", 2)] * 2
    assert [row["completed"] for row in summary["rows"]] == [1, 1]
    assert all(row["metrics"]["val/knn_top1"]["n"] == 1 for row in summary["rows"])  # ranked
    assert "trials: 2 planned, 2 completed, 0 stopped, 0 failed, 0 missing" in resumed.stdout


def test_under_fifo_an_unfinished_trial_is_interrupted_never_stopped_by_asha():
    from ablate.vocabulary import trial_outcome

    unfinished = {"epoch": 1, "status": "running", "val/knn_top1": 0.5}
    assert trial_outcome(unfinished, 3, early_stopping=True).status == "stopped"
    fifo = trial_outcome(unfinished, 3, early_stopping=False)
    assert fifo.status == "interrupted" and "ASHA" not in fifo.detail
    assert trial_outcome({**unfinished, "epoch": 3}, 3, early_stopping=False).status == (
        "completed"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_drivers_started_together_run_the_sweep_once(ray_cluster, tmp_path):
    """The same command twice, at once, without --resume: one runs the sweep, the other exits
    2 (naming the first, or finding its results); each planned trial ran once."""
    args = sweep_args(
        tmp_path,
        "name=twice",
        "train.epochs=1",
        "space.model.head={grid: [nonlinear]}",
        address=ray_cluster,
    )
    first = _start(args, tmp_path / "a.log")
    second = _start(args, tmp_path / "b.log")
    codes = sorted([first.wait(timeout=600), second.wait(timeout=600)])
    logs = [(tmp_path / n).read_text() for n in ("a.log", "b.log")]
    assert codes == [0, 2], logs
    refused = next(text for text in logs if "error:" in text)
    assert "another driver is running this sweep: pid " in refused or "already exists" in refused
    summary = json.loads((tmp_path / "twice" / "summary.json").read_text())
    assert len(summary["trials"]) == 1 and summary["trials_planned"]["missing"] == 0
    assert not (tmp_path / "twice" / driverlock.LOCK_NAME).exists()
