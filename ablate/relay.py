"""Per-epoch reports from each trial's Ray Train controller to its Tune trial: one relay per sweep.

A Tune trial here is a function that runs one ``TorchTrainer`` (``ablate.sweep``); the reports
its workers make reach the Train controller, a separate actor, and must reach Tune through the
trial's own actor. Ray's ``ray.tune.integration.ray_train.TuneReportCallback`` carries them
through a ``ray.util.queue.Queue``: one more actor, hence one more Python process importing
Ray's serializers (pydantic, pyarrow), started with every trial: 1.9 CPU-s of each trial's
start-up on 2 cores (each process's CPU time, polled through a quickstart sweep).

``ReportRelay`` is that queue for a whole sweep from one actor, one bounded channel per Train
run: ``RelayReportCallback`` (a Train ``UserCallback``, in the controller) puts each report
(rank 0's metrics, and the checkpoint's path as ``checkpoint_path``, as Ray's callback does)
and waits while the channel is full; ``fit_and_forward`` runs ``fit()`` in a thread of the
trial and passes each report to ``tune.report`` in the trial's own thread, so a scheduler
that stops the trial stops it at a report, as before. With one report in flight the workers
run at most one report ahead of Tune, as with Ray's one-slot queue.

A trial that stops taking reports (Tune stopped it) closes its channel, and the controller's
next report aborts the Train run, as Ctrl-C aborts one (``TrainController.abort``: the worker
group and its placement group are removed), whether or not the trial's actor ends meanwhile
(when it does, the controller dies with it and ``ablate.placement``'s janitor removes the
group, as with Ray's queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2.api.callback import UserCallback

#: The key Ray's ``TuneReportCallback`` gives a reported checkpoint's path in Tune's results.
CHECKPOINT_PATH_KEY = "checkpoint_path"
#: Seconds a trial waits on the relay before it checks that its ``fit()`` thread still runs.
POLL_S = 5.0


class ReportRelay:
    """Async actor: one channel of at most one report per Train run (``channel``, a string).

    ``put(channel, item)`` waits until the channel has room and returns True, or returns False
    once the channel is closed; ``get(channel, timeout_s)`` returns the next item, or ``None``
    after ``timeout_s`` seconds without one; ``close(channel)`` closes a channel for good (what
    it holds is dropped). A channel opens at its first ``put`` or ``get``.
    """

    def __init__(self) -> None:
        self._open: dict[str, asyncio.Queue[Any]] = {}
        self._closed: dict[str, asyncio.Event] = {}
        self._beats: dict[str, dict[int, float]] = {}  # channel -> rank -> last sign (monotonic)
        self._controllers: dict[str, Any] = {}  # channel -> its Train controller's handle
        self._workers: dict[str, dict[int, dict[str, Any]]] = {}  # channel -> rank -> process

    def _channel(self, channel: str) -> tuple[asyncio.Queue[Any] | None, asyncio.Event]:
        """The channel's queue (None once closed) and its closed flag; opened at first use."""
        if channel not in self._closed:
            self._open[channel] = asyncio.Queue(maxsize=1)
            self._closed[channel] = asyncio.Event()
        return self._open.get(channel), self._closed[channel]

    async def put(self, channel: str, item: Any) -> bool:
        items, closed = self._channel(channel)
        if items is None:
            return False
        # A report is a barrier of every rank (Train gathers them): each one is alive.
        beats = self._beats.get(channel)
        if beats:
            now = time.monotonic()
            for rank in beats:
                beats[rank] = now
        put = asyncio.ensure_future(items.put(item))
        close = asyncio.ensure_future(closed.wait())
        done, _ = await asyncio.wait({put, close}, return_when=asyncio.FIRST_COMPLETED)
        close.cancel()
        if put in done and not closed.is_set():
            return True
        put.cancel()
        return False

    async def get(self, channel: str, timeout_s: float) -> Any:
        items, _ = self._channel(channel)
        if items is None:
            return None
        try:
            return await asyncio.wait_for(items.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def close(self, channel: str) -> None:
        self._channel(channel)[1].set()  # wakes the puts waiting for room: they return False
        self._open.pop(channel, None)  # the flag stays, so later puts return False too
        self._beats.pop(channel, None)
        self._controllers.pop(channel, None)
        self._workers.pop(channel, None)

    async def beat(self, channel: str, rank: int, process: dict[str, Any] | None = None) -> None:
        """Worker ``rank`` of the run on ``channel`` is alive (``Heartbeat``); ``process``:
        its ``{"pid", "host", "log"}`` (its stderr file, where a native crash is written)."""
        if channel in self._open or channel not in self._closed:
            self._beats.setdefault(channel, {})[rank] = time.monotonic()
            if process:
                self._workers.setdefault(channel, {})[rank] = process

    async def workers(self, channel: str) -> dict[int, dict[str, Any]]:
        """The newest process of each rank of ``channel``'s run, as its heartbeat gave it."""
        return dict(self._workers.get(channel, {}))

    async def quiet(self, channel: str) -> tuple[float, int] | None:
        """(seconds since the quietest worker's last sign of life, its rank); None before
        any worker of the run beat (its worker group has not started)."""
        beats = self._beats.get(channel)
        if not beats:
            return None
        rank, last = min(beats.items(), key=lambda item: item[1])
        return time.monotonic() - last, rank

    async def attach(self, channel: str, controller: Any) -> None:
        """The Train controller running ``channel``'s run (``RelayReportCallback``)."""
        self._controllers[channel] = controller

    async def kill_all(self) -> int:
        """Kill the controller of every run still attached (its trial no longer reads it:
        Tune returned, e.g. interrupted); returns how many."""
        controllers = list(self._controllers.values())
        self._controllers.clear()
        for controller in controllers:
            ray.kill(controller, no_restart=True)
        return len(controllers)

    async def kill_run(self, channel: str) -> bool:
        """Kill the Train controller of ``channel``'s run: its workers die with it (they are
        its actors) and the sweep's ``ablate.placement`` janitor removes its placement group.
        Returns whether a controller was attached."""
        controller = self._controllers.pop(channel, None)
        if controller is None:
            return False
        ray.kill(controller, no_restart=True)
        return True


def start_relay() -> Any:
    """Start a ``ReportRelay`` owned by this driver, on its node, taking no CPU; returns its
    handle (``stop_relay`` ends it; it also ends with the driver)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        ray.remote(ReportRelay)
        .options(
            name=f"ablate-report-relay-{uuid.uuid4().hex[:12]}",
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True
            ),
        )
        .remote()
    )


def stop_relay(handle: Any) -> None:
    ray.kill(handle)


class RelayReportCallback(UserCallback, ControllerCallback):
    """Ray Train callback (it runs in the Train controller): puts every report of the run into
    ``channel`` of ``relay`` (a ``ReportRelay`` handle) and returns once the relay holds it;
    once the channel is closed (the trial was stopped) it aborts the run instead.

    What is put: rank 0's metrics dict, plus ``checkpoint_path`` when the report carried a
    checkpoint (already in the run's storage), as Ray's ``TuneReportCallback`` forwards them.
    """

    def __init__(self, relay: Any, channel: str) -> None:
        self.relay = relay
        self.channel = channel

    def after_controller_start(self, train_run_context: Any) -> None:
        # So that the trial's stall watchdog can end a run whose workers stopped reporting.
        self.relay.attach.remote(self.channel, ray.get_runtime_context().current_actor)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        item = dict(metrics[0])
        if checkpoint is not None:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        if not ray.get(self.relay.put.remote(self.channel, item)):
            self.abort_run()

    def abort_run(self) -> None:
        """Abort this controller's Train run as Train's own Ctrl-C handler does: a call to
        ``abort`` on the controller actor, which runs once this report's handling returns."""
        controller = ray.get_runtime_context().current_actor
        controller.abort.remote()


#: What ``fit_and_forward``'s ``fit()`` thread puts last (reports are dicts, never this).
_FIT_ENDED = "ablate: fit() ended"


def new_channel(trial_id: str) -> str:
    """A channel name for one ``fit()`` of ``trial_id`` (a retried trial gets a fresh one, so
    nothing its earlier attempt left in the relay reaches it)."""
    return f"{trial_id}-{uuid.uuid4().hex[:8]}"


class WorkerCrashedError(RuntimeError):
    """A trial's worker process died of a signal (a native crash) in a way that repeated."""


def process_died(failure: BaseException) -> bool:
    """Whether a worker's failure (Train wraps it: ``WorkerHealthCheckFailedError``'s
    ``health_check_failure``, causes) is its process dying, not a Python exception."""
    seen: set[int] = set()
    while failure is not None and id(failure) not in seen:
        seen.add(id(failure))
        if isinstance(failure, ray.exceptions.RayActorError):
            return True
        failure = getattr(failure, "health_check_failure", None) or failure.__cause__
    return False


def _named_crash(error: BaseException, workers: dict[int, dict[str, Any]]) -> str | None:
    """The message of a Train run that failed because a worker process died of a signal
    (``describe_crash`` of the dead ranks' logs), else None."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        if not process_died(failure) or rank not in workers:
            continue
        what = describe_crash(workers[rank])
        if what is not None:
            process = workers[rank]
            return (
                f"worker rank {rank} (pid {process['pid']}) crashed natively: {what}; a crash "
                f"that repeats is not retried again. Its log: {process['log']}"
            )
    return None


class TrialStalledError(RuntimeError):
    """A trial's workers gave no sign of life for longer than ``resources.stall_timeout_s``."""


def fit_and_forward(
    fit: Callable[[], Any],
    relay: Any,
    channel: str,
    report: Callable[[dict[str, Any]], None],
    poll_s: float = POLL_S,
    stall_timeout_s: float | None = None,
) -> Any:
    """Run ``fit()`` (a trainer whose ``RelayReportCallback`` puts into ``channel``) in a thread;
    pass each report it relays to ``report`` (``ray.tune.report``) in this thread, in order.

    Returns what ``fit()`` returned once every report was passed on; raises what ``fit()``
    raised (after the reports made before it), or what ``report`` raises (as Tune's session
    does to end a stopped trial). The channel is closed either way: a run still going then
    aborts at its next report (``RelayReportCallback``), and its ``fit()`` thread ends.

    The stall watchdog: once the run's workers beat (``Heartbeat``), a worker silent for
    ``stall_timeout_s`` seconds (a stopped or hung process; reports count as beats) gets its
    Train controller killed (``ReportRelay.kill_run``: the workers and, through the janitor,
    the placement group go with it) and ``TrialStalledError`` is raised, so that the trial ends
    failed and the sweep goes on.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fit()
        except BaseException as error:  # handed to the caller's thread, re-raised there
            outcome["error"] = error
        finally:
            # A relay already gone (the sweep ended, a test stopped it) has no reader to tell.
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(relay.put.remote(channel, _FIT_ENDED))

    thread = threading.Thread(target=run, name=f"fit-{channel}", daemon=True)
    thread.start()
    try:
        while True:
            item = ray.get(relay.get.remote(channel, poll_s))
            if item == _FIT_ENDED:
                if "error" in outcome:
                    crash = _named_crash(outcome["error"], ray.get(relay.workers.remote(channel)))
                    if crash is not None:
                        raise WorkerCrashedError(crash) from outcome["error"]
                    raise outcome["error"]
                return outcome.get("value")
            if item is not None:
                report(item)
                continue
            if not thread.is_alive():
                raise RuntimeError(f"the fit() thread of {channel} ended without a result")
            quiet = ray.get(relay.quiet.remote(channel)) if stall_timeout_s else None
            if quiet is not None and quiet[0] > stall_timeout_s:
                ray.get(relay.kill_run.remote(channel))
                raise TrialStalledError(
                    f"stalled: worker rank {quiet[1]} gave no sign of life for {quiet[0]:.0f} s "
                    f"(resources.stall_timeout_s={stall_timeout_s:g}); its worker group was "
                    "torn down"
                )
    finally:
        if thread.is_alive() and ray.get(relay.quiet.remote(channel)) is None:
            # A run still waiting for its worker group makes no report to abort at: end its
            # controller now, and the janitor removes its pending group.
            ray.get(relay.kill_run.remote(channel))
        relay.close.remote(channel)


class Heartbeat:
    """A daemon thread of a Train worker that tells ``relay`` every ``every_s`` seconds that
    worker ``rank`` of ``channel``'s run is alive (``ReportRelay.beat``), for the stall
    watchdog of ``fit_and_forward``. A stopped process (SIGSTOP), one frozen in native code
    that holds the GIL, or a dead one stops beating; ``stop()`` ends the thread."""

    def __init__(self, relay: Any, channel: str, rank: int, every_s: float = 5.0) -> None:
        self.relay, self.channel, self.rank, self.every_s = relay, channel, rank, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        process = worker_process()
        while True:
            with contextlib.suppress(Exception):  # a relay gone: nobody listens any more
                self.relay.beat.remote(self.channel, self.rank, process)
            if self._stop.wait(self.every_s):
                return


def worker_process() -> dict[str, Any]:
    """This Ray worker's ``{"pid", "host", "log"}``: ``log`` is the stderr file Ray gives it
    (``<session>/logs/worker-<id>-<job>-<pid>.err``, where Python's fault handler writes a
    native crash), None when not found."""
    import glob

    pid = os.getpid()
    log = None
    with contextlib.suppress(Exception):
        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
        log = next(iter(sorted(glob.glob(os.path.join(logs, f"worker-*-{pid}.err")))), None)
    return {"pid": pid, "host": socket.gethostname(), "log": log}


#: How a native crash shows in a worker's stderr file: Ray's and Python's fault handlers.
_SIGNAL_LINE = re.compile(r"\*\*\* (SIG[A-Z]+) received|Fatal Python error: ([^\n]+)")


def describe_crash(process: dict[str, Any]) -> str | None:
    """What killed ``process`` (``worker_process()``'s dict), read from the end of its log:
    ``"SIGSEGV (Fatal Python error: Segmentation fault)"``; None when the log names no signal
    or is not on this machine."""
    log = process.get("log")
    if not log or process.get("host") != socket.gethostname() or not os.path.exists(log):
        return None
    with open(log, "rb") as file:
        file.seek(max(0, os.path.getsize(log) - 65536))
        tail = file.read().decode(errors="replace")
    signals = [m.group(1) for m in _SIGNAL_LINE.finditer(tail) if m.group(1)]
    fatal = [m.group(2).strip() for m in _SIGNAL_LINE.finditer(tail) if m.group(2)]
    if not signals and not fatal:
        return None
    name = signals[-1] if signals else "a fatal signal"
    return f"{name} ({fatal[-1]})" if fatal else name
