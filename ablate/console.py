"""What a sweep shows a person: one live view of its trials, and every other line in a log file.

``SweepConsole`` is a Ray Tune ``Callback`` (``ray.tune.Callback``: ``on_trial_start``,
``on_trial_result``, ``on_trial_complete``, ``on_trial_error``, ``on_step_end``,
``on_experiment_end``). On a terminal it redraws one compact table in place: a header with the
trials done / running / pending, the elapsed time and an ETA, then one row per started trial
(id, its varying values, epoch / epochs, the ranking metric, state). Elsewhere (a pipe, a file,
a Ray job: ``$RAY_JOB_ID`` is set or stdout is not a TTY) it prints one plain line per trial
event: started, each epoch's result, completed / stopped / diverged / failed.

``route_logs`` sends what Ray prints to a log file instead of the console: the ``ray`` Python
loggers of the driver (Tune, Train, Ray's own start-up lines; errors still reach the console),
and the stdout/stderr of every Ray worker process (Tune's trial actors, Train's controllers and
workers: "Reporting training result", "Checkpoint successfully created", ...), which Ray streams
to the driver (``ray.init(log_to_driver=True)``, the default) on every node of the cluster.

The ETA (``eta_seconds``) is the work still to do over the trials that run at once: an epoch
takes what the trials' epochs after their first took (the median over trials), a trial's start
takes what its first result took beyond one such epoch, and every planned trial runs all its
epochs (trials that ASHA stops early end the sweep sooner). Until some trial has reported two
epochs it is ``?``, or, once a trial has ended, elapsed time over the epochs done so far.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ray.tune import Callback

from ablate import vocabulary
from ablate.vocabulary import format_value

#: Ray's handler name for printing worker output on the driver (ray._private.worker).
_RAY_PRINT_LOGS = "ray_print_logs"


def is_live(stream: TextIO) -> bool:
    """Whether ``stream`` gets the in-place view: a TTY, outside a Ray job."""
    if os.environ.get("RAY_JOB_ID") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float | None) -> str:
    """``seconds`` as ``1h02m``, ``4m05s`` or ``12s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass
class _Row:
    """What the view knows of one trial."""

    label: str
    epochs: int
    epoch: int = 0
    metric: float | None = None
    state: str = "pending"
    restored: bool = False  # ended before this driver started (a resumed sweep)
    # Wall-clock times (s) of its start and of its first and latest result, for the ETA.
    started_at: float | None = None
    first_at: float | None = None
    first_epoch: int = 0
    last_at: float | None = None


class SweepConsole(Callback):
    """Tune callback that shows a sweep's progress on ``stream`` (default: stdout).

    ``metric``: the ranking metric shown per trial; ``num_trials``: the planned trials (for the
    header and ETA); ``epochs``: the planned epochs of a trial (each trial's own config wins);
    ``live``: redraw in place (default: ``is_live(stream)``); ``refresh``: seconds between
    redraws of the clock on a terminal; ``early_stopping``: whether the scheduler stops trials
    early (else a trial that ends short was interrupted, ``vocabulary.trial_outcome``).
    """

    def __init__(
        self,
        metric: str,
        num_trials: int,
        epochs: int,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        refresh: float = 1.0,
        early_stopping: bool = True,
    ) -> None:
        self.metric = metric
        self.early_stopping = early_stopping
        self.num_trials = num_trials
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.live = is_live(self.stream) if live is None else live
        self.refresh = refresh
        self.rows: dict[str, _Row] = {}
        self.round = 0
        self.started_at = time.time()
        self._drawn_lines = 0
        self._drawn_at = 0.0

    # Tune pickles its callbacks with the experiment; a restored sweep starts a fresh view.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("stream", "live")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, rows={}, started_at=time.time(), _drawn_lines=0)
        self.stream = sys.stdout
        self.live = is_live(self.stream)

    def begin_round(self, index: int, num_trials: int) -> None:
        """A later round of the sweep (``ablate.rounds``) starts: ``num_trials`` is every trial
        planned so far, this round's included, so the count and the ETA take in the new trials
        (the rows of earlier rounds stay)."""
        self.round = index
        self.num_trials = num_trials

    # ------------------------------------------------------------------ Tune's events

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.state = "running"
        row.started_at = time.time()
        self._running_at_once = max(getattr(self, "_running_at_once", 1), self._running())
        self._event(trial, "started")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = self._row(trial)
        self._take_result(row, result)
        row.last_at = time.time()
        if row.first_at is None:
            row.first_at, row.first_epoch = row.last_at, row.epoch
        self._event(trial, f"epoch {row.epoch}/{row.epochs}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        outcome = self._end(row, trial)
        detail = "" if outcome.status == "completed" else f" ({outcome.detail})"
        self._event(trial, outcome.status + detail)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.state = "failed"
        error = getattr(trial, "error_file", None)
        reason = ""
        if error and os.path.exists(error):
            with open(error) as file:
                reason = ": " + vocabulary.error_line(file.read(), 200)
        self._event(trial, "failed" + reason)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._adopt(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._adopt(trials)
        if self.live and time.time() - self._drawn_at >= self.refresh:
            self._draw()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._adopt(trials)
        if self.live:
            self._draw()

    # ------------------------------------------------------------------ the view

    def _adopt(self, trials: list) -> None:
        """Count the trials of a restored experiment that had ended: they raise no event (a
        finished round that ``--resume`` restores runs no step at all, only its end). Outside
        a terminal one line says how many and how they had ended."""
        adopted: dict[str, int] = {}
        for trial in trials:
            if trial.trial_id in self.rows or trial.status != "TERMINATED":
                continue
            row = self._row(trial)
            row.restored = True
            self._take_result(row, trial.last_result or {})
            status = self._end(row, trial).status
            adopted[status] = adopted.get(status, 0) + 1
        if adopted and not self.live:
            ended = ", ".join(f"{n} {status}" for status, n in adopted.items())
            print(
                f"[{_duration(time.time() - self.started_at):>6}] restored "
                f"{sum(adopted.values())} trial(s) that had ended: {ended}  ({self.progress()})",
                file=self.stream,
                flush=True,
            )

    def _take_result(self, row: _Row, result: dict) -> None:
        """A trial's reported ``result``: its epoch and, when finite, the ranking metric."""
        row.epoch = int(result.get("epoch") or row.epoch)
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            row.metric = float(value)

    def _end(self, row: _Row, trial: Any) -> vocabulary.Outcome:
        """The ended ``trial``'s outcome (``vocabulary.trial_outcome``), set as its state."""
        outcome = vocabulary.trial_outcome(
            trial.last_result or {},
            row.epochs,
            early_stopping=getattr(self, "early_stopping", True),
        )
        row.state = outcome.status
        return outcome

    def _row(self, trial: Any) -> _Row:
        row = self.rows.get(trial.trial_id)
        if row is None:
            param = trial.config or {}
            varying = {
                k.split(".")[-1]: format_value(v) for k, v in (param.get("varying") or {}).items()
            }
            label = " ".join(f"{k}={v}" for k, v in varying.items())
            if "replicate" in param and "seed" not in varying:
                label += f" rep={param['replicate']}"
            config = param.get("config") or {}
            epochs = int((config.get("train") or {}).get("epochs") or self.epochs)
            row = self.rows[trial.trial_id] = _Row(label=label.strip(), epochs=epochs)
        return row

    def progress(self) -> str:
        """``trials 2/6 done, 2 running | elapsed 1m10s | ETA 2m30s``; from the sweep's second
        round on, ``round 1: trials 8/9 done, ...`` (every round's trials counted)."""
        states = [r.state for r in self.rows.values()]
        running = states.count("running")
        done = len(states) - running - states.count("pending")
        now = time.time()
        round_index = getattr(self, "round", 0)
        return (
            (f"round {round_index}: " if round_index else "")
            + f"trials {done}/{max(self.num_trials, len(self.rows))} done, {running} running | "
            f"elapsed {_duration(now - self.started_at)} | ETA {_duration(self.eta_seconds(now))}"
        )

    def _running(self) -> int:
        return sum(r.state == "running" for r in self.rows.values())

    def eta_seconds(self, now: float) -> float | None:
        """Seconds until every planned trial has run all its epochs, from the timings of the
        trials this driver ran (restored ones ran before its clock): the remaining epochs at
        the median seconds per epoch after a trial's first, plus the start of each trial not
        yet reporting, over the most trials seen running at once. None (``?``) before any
        trial reported a second epoch and before any trial ended."""
        ran = [r for r in self.rows.values() if not r.restored]
        unstarted = max(self.num_trials - len(self.rows), 0)
        rates = [
            (r.last_at - r.first_at) / (r.epoch - r.first_epoch)
            for r in ran
            if r.first_at is not None and r.last_at is not None and r.epoch > r.first_epoch
        ]
        if not rates:
            # Only first epochs so far, start-up included: a rate only once a trial has ended.
            ended = [r for r in ran if r.state not in ("running", "pending")]
            if not ended:
                return None if unstarted or any(r.state == "running" for r in ran) else 0.0
            epochs_done = sum(r.epoch if r.state == "running" else r.epochs for r in ran)
            planned = sum(r.epochs for r in ran) + unstarted * self.epochs
            remaining = max(planned - epochs_done, 0)
            return (now - self.started_at) * remaining / epochs_done if epochs_done else None
        epoch_s = statistics.median(rates)
        starts = [
            max(r.first_at - r.started_at - (r.first_epoch * epoch_s), 0.0)
            for r in ran
            if r.first_at is not None and r.started_at is not None
        ]
        start_s = statistics.median(starts) if starts else 0.0
        work = unstarted * (start_s + self.epochs * epoch_s)
        for r in ran:
            if r.state == "pending":
                work += start_s + r.epochs * epoch_s
            elif r.state == "running" and r.first_at is None:  # still starting
                since = now - (r.started_at or now)
                work += max(start_s + r.epochs * epoch_s - since, r.epochs * epoch_s)
            elif r.state == "running":
                since = now - (r.last_at or now)
                work += max((r.epochs - r.epoch) * epoch_s - since, 0.0)
        at_once = max(getattr(self, "_running_at_once", 1), self._running(), 1)
        return work / at_once

    def _event(self, trial: Any, what: str) -> None:
        if self.live:
            self._draw()
            return
        row = self.rows[trial.trial_id]
        metric = "" if row.metric is None else f"  {self.metric} {row.metric:.4f}"
        line = (
            f"[{_duration(time.time() - self.started_at):>6}] {trial.trial_id} {row.label}: "
            f"{what}{metric}  ({self.progress()})"
        )
        print(line, file=self.stream, flush=True)

    def table(self, max_rows: int | None = None) -> list[str]:
        """The live view's lines: the progress header, then one row per started trial."""
        rows = [(tid, r) for tid, r in self.rows.items() if r.state != "pending"]
        if max_rows is not None and len(rows) > max_rows:
            running = [(t, r) for t, r in rows if r.state == "running"]
            rows = (
                running[:max_rows]
                if len(running) >= max_rows
                else (
                    running
                    + [(t, r) for t, r in rows if r.state != "running"][
                        -(max_rows - len(running)) :
                    ]
                )
            )
        header = ["trial", "config", "epoch", self.metric, "state"]
        body = [
            [
                tid,
                r.label,
                f"{r.epoch}/{r.epochs}",
                "-" if r.metric is None else f"{r.metric:.4f}",
                r.state,
            ]
            for tid, r in rows
        ]
        widths = [max([len(h), *(len(b[i]) for b in body)]) for i, h in enumerate(header)]
        lines = [f"sweep: {self.progress()}"]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *body]
        ]
        return lines

    def _draw(self) -> None:
        size = shutil.get_terminal_size()
        lines = [line[: size.columns - 1] for line in self.table(max(size.lines - 4, 1))]
        # Back to the first line of the previous drawing, clear to the end, draw again.
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
        self.stream.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn_lines = len(lines)
        self._drawn_at = time.time()


# ----------------------------------------------------------------------------- logs


class _WorkerLogWriter:
    """Writes the worker output Ray streams to the driver into a file, one line per line,
    prefixed like Ray's console lines: ``(ActorName pid=123, ip=...) text``."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> None:
        name = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({name} pid={data.get('pid')}, ip={data.get('ip')})"
        stream = " [stderr]" if data.get("is_err") else ""
        with self.lock:
            for line in data.get("lines") or ():
                self.file.write(f"{prefix}{stream} {line}\n")
            self.file.flush()


class LogRoute:
    """Where ``route_logs`` sends Ray's output: ``path``; ``capture_worker_output()`` once
    Ray is initialised."""

    def __init__(self, path: str, file: TextIO) -> None:
        self.path = path
        self._writer = _WorkerLogWriter(file)
        self._saved: list[tuple[str, Any]] | None = None

    def say(self, line: str) -> None:
        """Print ``line`` on the console (stderr) and keep it, timestamped, in the log file: a
        warning read later in the log says when it was given, among Ray's own lines."""
        print(line, file=sys.stderr, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._writer.lock:
            self._writer.file.write(f"{stamp} ablate: {line}\n")
            self._writer.file.flush()

    def capture_worker_output(self) -> None:
        """Swap Ray's ``ray_print_logs`` handler (added by ``ray.init(log_to_driver=True)``)
        for one that writes to the log file; without it (``log_to_driver=False``) worker
        output stays in Ray's session directory (``<session>/logs/worker-*``) alone."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        if self._saved is not None:
            return
        self._saved = [pair for pair in dispatcher.handlers if pair[0] == _RAY_PRINT_LOGS]
        dispatcher.remove_handler(_RAY_PRINT_LOGS)
        dispatcher.add_handler(_RAY_PRINT_LOGS, self._writer)

    def release_worker_output(self) -> None:
        import ray
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        if self._saved is None:
            return
        dispatcher.remove_handler(_RAY_PRINT_LOGS)
        if ray.is_initialized():  # ray.shutdown removed Ray's handler; ray.init adds a new one
            for name, handler in self._saved:
                dispatcher.add_handler(name, handler)
        self._saved = None


@contextlib.contextmanager
def route_logs(path: str) -> Iterator[LogRoute]:
    """Send Ray's console output to the file ``path`` (made with its directory) while inside.

    At once, the ``ray`` loggers of this process write everything from INFO up to the file
    and only errors to the console; after ``LogRoute.capture_worker_output()`` (call it once
    ``ray.init`` ran) the stdout/stderr of Ray workers streamed to this driver goes to the file
    too. On exit, what Ray had is restored.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        ray_logger = logging.getLogger("ray")
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        consoles = [(h, h.level) for h in ray_logger.handlers]
        for console, _ in consoles:
            console.setLevel(max(console.level, logging.ERROR))
        ray_logger.addHandler(handler)
        route = LogRoute(path, file)
        try:
            yield route
        finally:
            route.release_worker_output()
            ray_logger.removeHandler(handler)
            for console, level in consoles:
                console.setLevel(level)
