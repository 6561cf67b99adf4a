"""The Ray Tune callback that feeds a ``SweepTracker`` from the sweep's driver, so that workers
never touch the tracking store; the one module of ``ablate.tracking`` that imports Ray."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from ablate import trialrecord, vocabulary
from ablate.tracking.layout import TrackingError, store_name
from ablate.tracking.storage import StorageError, storage_error
from ablate.tracking.writer import SweepTracker

logger = logging.getLogger(__name__)


def _read_error(trial: Trial) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
        if text:
            return text
    error = trial.get_error()
    return repr(error) if error is not None else "trial failed without an error message"


def _trial_param(trial: Trial) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(resolved config, varying, replicate)`` from the pinned Tune param dict."""
    param = trial.config
    if "config" not in param:
        raise KeyError(
            f"trial {trial.trial_id}: its Tune config has keys {sorted(param)}; expected the "
            "sweep's param dict {'config', 'varying', 'replicate', 'sweep'}"
        )
    return param["config"], dict(param.get("varying") or {}), int(param.get("replicate", 0))


class MlflowCallback(Callback):
    """Ray Tune callback that feeds a ``SweepTracker`` from the sweep driver.

    With ``strict=False`` (the default) a tracking failure during the sweep is logged as a
    warning and the trials go on; ``strict=True`` re-raises (tests, debugging).

    Storage that is full or read-only (the MLflow store, or a trial that failed writing its
    checkpoint or results) stops the sweep as Ctrl+C does, through Tune's own interrupt
    (its SIGUSR1 handler), so that Tune saves its state and every trial can be resumed; the
    unfinished trials' runs end KILLED, the parent FAILED, and the ``with tracker`` block
    raises the ``StorageError`` (``SweepTracker.__exit__``). Where Tune has no such handler
    (``fit()`` outside the main thread) the error is raised from the next step instead.
    At the end of every sweep the epochs the runs lack are logged from the trials' own
    results (``SweepTracker.backfill``).
    """

    def __init__(
        self,
        tracker: SweepTracker,
        *,
        strict: bool = False,
        early_stopping: bool = True,
        train_storage_path: str | None = None,
    ) -> None:
        self.tracker = tracker
        self.strict = strict
        # As ``sweep.trial_records`` decides: the trial's own records beat a last result a
        # resumed Tune restored short, and without early stopping nothing was "stopped".
        self.early_stopping = early_stopping
        self.train_storage_path = train_storage_path
        self.failure: StorageError | None = None
        self._interrupting = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "failure": None, "_interrupting": False}

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return  # the sweep is stopping for it; nothing more is written to a failing store
        try:
            fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            failure = storage_error(exc, store_name(self.tracker.tracking_uri), "MLflow store")
            if failure is not None:
                self._fail(failure)
                return
            if self.strict:
                raise
            logger.warning("MLflow tracking failed in %s; the sweep continues", what, exc_info=True)

    def _fail(self, failure: StorageError, *, interrupt: bool = True) -> None:
        """Record the first storage failure and ask Tune to stop the sweep (resumably)."""
        if self.failure is not None:
            return
        self.failure = failure
        self.tracker.record_failure(failure)
        logger.info("stopping the sweep: %s", failure)  # raised once Tune has stopped
        handler = signal.getsignal(signal.SIGUSR1)
        tune_handler = callable(handler) and getattr(handler, "__module__", "").startswith(
            "ray.tune"
        )
        if interrupt and tune_handler and threading.current_thread() is threading.main_thread():
            self._interrupting = True
            signal.raise_signal(signal.SIGUSR1)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self.failure is not None and not self._interrupting:
            self._interrupting = True
            raise self.failure

    def setup(self, **info: Any) -> None:
        self.tracker.start()  # TrackingError here stops the sweep before any training

    def _start(self, trial: Trial) -> None:
        config, varying, replicate = _trial_param(trial)
        self.tracker.start_trial(trial.trial_id, config, varying, replicate)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._guard("on_trial_start", self._start, trial)

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._guard("on_trial_restore", self._start, trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ):
        def log() -> None:
            if self.tracker.run_id(trial.trial_id) is None:
                self._start(trial)
            self.tracker.log_epoch(trial.trial_id, result)

        self._guard("on_trial_result", log)

    def _finish(self, trial: Trial, errored: bool, failure: StorageError | None = None) -> None:
        if self.tracker.run_id(trial.trial_id) is None:
            self._start(trial)
        config, _, _ = _trial_param(trial)
        last = dict(trial.last_result or {})
        if getattr(self, "train_storage_path", None):
            recorded = trialrecord.newest_recorded_result(
                getattr(trial, "local_path", None), f"{self.train_storage_path}/{trial.trial_id}"
            )
            if recorded and recorded["epoch"] > (last.get("epoch") or 0):
                last.update(recorded)
                errored = errored and recorded.get("status") != "completed"
        outcome = vocabulary.trial_outcome(
            last, config["train"]["epochs"], errored, getattr(self, "early_stopping", True)
        )
        if failure is not None:  # not the trial's fault: --resume continues it
            outcome = vocabulary.Outcome(
                "interrupted", f"stopped: {failure.reason} ({failure.path})"
            )
        self.tracker.finish_trial(
            trial.trial_id,
            outcome.status,
            detail=outcome.detail,
            error=_read_error(trial) if errored else None,
            last_result=trial.last_result or None,
            resources=config.get("resources"),
            retries=int(getattr(trial, "num_failures", 0) or 0) - int(errored),
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        self._guard("on_trial_complete", self._finish, trial, False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any):
        # A trial that failed writing its checkpoint or results: the storage, not the trial.
        # A failed write() names no file: then the sweep's results (checkpoints live there).
        failure = storage_error(
            RuntimeError(_read_error(trial)),
            self.tracker.results_dir or trial.path,
            f"trial {trial.trial_id}: writing under",
        )
        self._guard("on_trial_error", self._finish, trial, True, failure)
        if failure is not None:
            self._fail(failure)

    def on_experiment_end(self, trials: list[Trial], **info: Any):
        """Log the epochs the runs lack from the trials' results (``SweepTracker.backfill``),
        then close the parent: FINISHED when every trial ended, KILLED when Tune was
        interrupted (Ctrl+C also lands here, with trials still pending or paused), FAILED
        after a storage failure. Where the store fails here too, the failure says so: the
        runs stay RUNNING until ``--resume`` marks them."""
        failed = self.failure

        def end() -> None:
            if failed is None:
                dirs = {t.trial_id: [d for d in (t.path, t.local_path) if d] for t in trials}
                self.tracker.backfill(dirs)
            for trial in trials:
                state = self.tracker.run_id(trial.trial_id)
                if state is None or trial.status not in (Trial.TERMINATED, Trial.ERROR):
                    continue
                run = self.tracker.client.get_run(state)
                if run.info.status == "RUNNING":  # ended without its hook (e.g. on restore)
                    self._finish(trial, trial.status == Trial.ERROR)
            interrupted = any(t.status not in (Trial.TERMINATED, Trial.ERROR) for t in trials)
            status = "FAILED" if failed else "KILLED" if interrupted else "FINISHED"
            if failed is not None:
                self.tracker.tag_error(str(failed))
            self.tracker.close(status)

        self.failure = None  # let end() write: the store may be fine (a checkpoint disk filled)
        try:
            end()
        except TrackingError:
            raise
        except Exception as exc:
            again = storage_error(exc, store_name(self.tracker.tracking_uri), "MLflow store")
            if again is None and failed is None:
                if self.strict:
                    raise
                logger.warning("MLflow tracking failed in on_experiment_end", exc_info=True)
                return
            if failed is None:
                failed = again
                self.tracker.record_failure(failed)  # type: ignore[arg-type]
            else:
                logger.info("MLflow: closing the runs failed", exc_info=True)
            why = again.reason if again is not None else f"{type(exc).__name__}: {exc}"
            failed.notes.append(  # type: ignore[union-attr]
                f"Its MLflow runs could not be marked ({why}): they show RUNNING until "
                "--resume marks them."
            )
        else:
            if failed is not None:
                failed.notes.append(
                    "The sweep was stopped; its MLflow runs are marked (parent FAILED, "
                    "unfinished trials KILLED)."
                )
        finally:
            self.failure = failed
