"""The writer: ``SweepTracker`` logs one sweep execution to MLflow from the sweep's driver.

A parent run per execution (its tags, the environment's versions and git commit, the spec YAML
as ``spec.yaml``) and a child run per trial: its fully resolved config as params, per-epoch
metrics with ``step = epoch``, its outcome as tag ``ablate.status`` (``vocabulary.
TRIAL_STATUSES``) and the compute it used as ``compute/*`` metrics. Resuming an execution
continues its runs: an epoch is logged at most once per trial, whatever Tune or Ray Train
re-report after a restore or a worker-group restart, and the epochs the runs lack are logged
from the trials' own results (``backfill``). Fed by ``callback.MlflowCallback``; no Ray here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ablate import vocabulary
from ablate.config import flatten
from ablate.tracking.layout import (
    EXPERIMENT_KIND,
    TAG_DESCRIPTION,
    TAG_ERROR,
    TAG_EXECUTION,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_COMMIT,
    TAG_REASON,
    TAG_REPLICATE,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STATUS_DETAIL,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    TAG_VARYING,
    VIEW_KEY,
    VIEW_TAG_PREFIX,
    check_reachable,
    child_runs,
    default_artifact_location,
    runs_view,
    search_runs,
    store_name,
)
from ablate.tracking.results import compute_metrics, epoch_metrics, recorded_results, result_epoch
from ablate.tracking.storage import StorageError, storage_error

logger = logging.getLogger(__name__)

#: Short names for the dotted keys a run name shows (other keys show their last part).
RUN_NAME_ALIASES: dict[str, str] = {
    "model.head": "head",
    "train.batch_size": "bs",
    "train.epochs": "ep",
    "loss.temperature": "t",
    "optim.base_lr": "lr",
    "model.out_dim": "dim",
    "train.seed": "seed",
}

_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_MAX_ERROR_TAG = 1000
_MAX_TAG_VALUE = 8000  # MLflow's limit on a run tag's value (MAX_TAG_VAL_LENGTH)
_MAX_RUN_NAME = 250  # the runs.name column of MLflow's SQL stores: String(250)
_BATCH_PARAMS = 100  # MLflow's limit of params/tags per log_batch
_BATCH_METRICS = 1000


# ----------------------------------------------------------------------------- naming, params


def run_name(varying: dict[str, Any], replicate: int) -> str:
    """The child run's name, e.g. ``crop+color | head=nonlinear | bs=256 | seed=1``.

    ``augment.ops`` shows its ops joined with '+', common keys their alias
    (``RUN_NAME_ALIASES``), other keys their last dotted part; the replicate ends the name.
    """
    parts: list[str] = []
    for key, value in varying.items():
        text = vocabulary.format_value(value)
        if key == vocabulary.OPS_KEY:
            parts.append(text)
        else:
            parts.append(f"{RUN_NAME_ALIASES.get(key, key.rsplit('.', 1)[-1])}={text}")
    parts.append(f"{'rep' if 'train.seed' in varying else 'seed'}={replicate}")
    return _short(" | ".join(parts), _MAX_RUN_NAME)


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A config value as an MLflow param: lists as JSON, capped at MLflow's 6000 chars."""
    text = json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)
    if len(text) > _MAX_PARAM_VALUE:
        suffix = "...[truncated]"
        text = text[: _MAX_PARAM_VALUE - len(suffix)] + suffix
    return text


def config_params(config: dict[str, Any]) -> dict[str, str]:
    """Every leaf of a resolved TrialConfig dict, by dotted key, as param strings."""
    return {key: param_value(value) for key, value in flatten(config).items()}


# ----------------------------------------------------------------------------- environment


def git_commit(cwd: str | os.PathLike[str] | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout at ``cwd``, or None outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip(), bool(status.stdout.strip())


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def environment_tags(cwd: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Versions of the stack and the git commit of the code that runs the sweep."""
    tags = {
        f"ablate.version.{name}": _version(name) for name in ("ablate", "ray", "torch", "mlflow")
    }
    tags["ablate.version.python"] = sys.version.split()[0]
    git = git_commit(cwd)
    if git is not None:
        commit, dirty = git
        tags[TAG_GIT_COMMIT] = commit
        tags["ablate.git_dirty"] = str(dirty).lower()
    return tags


# ----------------------------------------------------------------------------- the tracker


@dataclass
class _TrialRun:
    run_id: str
    last_epoch: int = 0
    last_result: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _now_ms() -> int:
    return int(time.time() * 1000)


#: Storage failures met by a Tune callback, by (tracking URI, experiment, execution), for the
#: driver's ``with tracker`` block to raise once Tune has stopped.
_FAILURES: dict[tuple[str, str, str], StorageError] = {}


def _store_errors(method: Any) -> Any:
    """A ``SweepTracker`` method that raises a full or read-only store as ``StorageError``."""

    @functools.wraps(method)
    def wrapped(self: SweepTracker, *args: Any, **kwargs: Any) -> Any:
        with self._storage_errors():
            return method(self, *args, **kwargs)

    return wrapped


class SweepTracker:
    """Logs one sweep execution to MLflow: a parent run and one child run per trial.

    ``execution`` names this execution of the sweep and must stay the same when it is resumed
    (the sweep passes its Tune experiment name); a new one starts a new parent run. Picklable
    (Tune saves its callbacks with the experiment): the client is rebuilt on first use.

    In the driver: ``with tracker: tuner.fit()`` (with ``MlflowCallback(tracker)`` among the
    Tune callbacks) closes the parent whatever happens.

    ``results_dir``: the sweep's Tune experiment directory (``<storage>/<sweep>``, a path or
    URI), whose ``<trial_id>/result.json`` are the trials' own records: a continued execution
    logs the epochs its runs lack from them (``backfill``). ``description``: the question the
    sweep asks (the spec's ``description``), the parent run's description in MLflow's UI
    (``layout.TAG_DESCRIPTION``; cut to MLflow's 8000 characters).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        execution: str | None = None,
        spec_text: str | None = None,
        description: str = "",
        storage_path: str | os.PathLike[str] | None = None,
        artifact_location: str | None = None,
        tags: dict[str, str] | None = None,
        metric: str = vocabulary.DEFAULT_RANKING_METRIC,
        results_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.results_dir = str(results_dir) if results_dir is not None else None
        self.metric = metric
        self.experiment = experiment
        self.execution = execution or time.strftime("%Y-%m-%d_%H-%M-%S")
        self.spec_text = spec_text
        self.description = description
        self.storage_path = str(storage_path) if storage_path is not None else None
        self.artifact_location = artifact_location or default_artifact_location(tracking_uri)
        self.extra_tags = dict(tags or {})
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.closed = False
        self._client: MlflowClient | None = None
        self._trials: dict[str, _TrialRun] = {}
        self._view_params: list[str] = []

    # pickling: drop the client and the per-process caches; start() restores them from MLflow
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _client=None, _trials={}, experiment_id=None, parent_run_id=None, _view_params=[]
        )
        state["closed"] = False
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def started(self) -> bool:
        return self.parent_run_id is not None

    # -- sweep level

    @_store_errors
    def start(self) -> str:
        """Check the store, find or create the experiment and the parent run; its id.

        A parent of the same sweep and execution is continued (set back to RUNNING) and its
        child runs are cached, so that resumed trials continue their own runs; child runs a
        killed driver left RUNNING are first ended KILLED (``ablate.status=interrupted``), and
        with ``results_dir`` the epochs the runs lack are logged from the trials' results
        (``backfill``). Raises ``TrackingError`` (store unusable) or ``StorageError`` (store
        full or read-only).
        """
        if self.started and not self.closed:
            return self.parent_run_id  # type: ignore[return-value]
        check_reachable(self.tracking_uri)
        self.experiment_id = self._experiment_id()
        # Matched here, not in the filter: MLflow's filter syntax has no escape for a name
        # holding both quote characters (and none for a backslash before the closing quote).
        existing = [
            run
            for run in search_runs(self.client, self.experiment_id, f"tags.`{TAG_ROLE}` = 'sweep'")
            if run.data.tags.get(TAG_SWEEP) == self.experiment
            and run.data.tags.get(TAG_EXECUTION) == self.execution
        ]
        tags = self._parent_tags()
        if existing:
            self.parent_run_id = existing[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self._log(self.parent_run_id, tags=tags)
            left = self._interrupt_running_children(
                "KILLED", "the sweep's driver ended without closing this run; marked at resume"
            )
            self._load_children()
            if self.results_dir is not None:
                self.backfill()
            if left.get("interrupted"):
                logger.warning(
                    "MLflow: %d trial run(s) of parent run %s were left RUNNING by a driver that "
                    "did not close them; marked KILLED (interrupted)",
                    left["interrupted"],
                    self.parent_run_id,
                )
            logger.info("MLflow: continuing parent run %s", self.parent_run_id)
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=_short(f"{self.experiment} @ {self.execution}", _MAX_RUN_NAME),
                tags=tags,
            )
            self.parent_run_id = run.info.run_id
        if self.spec_text is not None:
            self.client.log_text(self.parent_run_id, self.spec_text, "spec.yaml")
        self.closed = False
        return self.parent_run_id

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED, FAILED or KILLED); idempotent.

        Any child run still running is marked KILLED (``ablate.status=interrupted``): the sweep
        ended under it. Call from the driver's ``finally`` / signal handler with ``KILLED`` on
        interruption; a later ``start()`` of the same execution sets the runs back to RUNNING.
        Raises ``StorageError`` when the store is full or read-only (the runs are then marked
        by the next ``start()`` of the execution).
        """
        if self.closed or not self.started:
            return
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"close status must be FINISHED, FAILED or KILLED, got {status!r}")
        with self._storage_errors():
            counts = self._interrupt_running_children(status)
            self.client.set_terminated(self.parent_run_id, status)  # type: ignore[arg-type]
            self._log(
                self.parent_run_id,  # type: ignore[arg-type]
                tags={f"ablate.trials.{k}": str(v) for k, v in sorted(counts.items())},
            )
        for state in self._trials.values():
            state.finished = True
        self.closed = True

    def _parent_tags(self) -> dict[str, str]:
        tags = {
            TAG_SWEEP: self.experiment,
            TAG_EXECUTION: self.execution,
            TAG_ROLE: "sweep",
            **environment_tags(),
            **self.extra_tags,
        }
        if self.storage_path:
            tags["ablate.storage_path"] = self.storage_path
        if self.description.strip():
            tags[TAG_DESCRIPTION] = _short(self.description.strip(), _MAX_TAG_VALUE)
        return tags

    def _interrupt_running_children(self, status: str, detail: str = "") -> dict[str, int]:
        """End the child runs still RUNNING as ``interrupted``; the count of each outcome.

        The run's status is set before its tags: on a store that is filling up, the status
        is what must not stay RUNNING."""
        counts: dict[str, int] = {}
        for run in self._children():
            outcome = run.data.tags.get(TAG_STATUS, "running")
            if run.info.status == "RUNNING":
                outcome = "interrupted"
                self.client.set_terminated(run.info.run_id, vocabulary.TRIAL_STATUSES[outcome])
                why = detail or f"sweep ended ({status}) while the trial was running"
                self._log(run.info.run_id, tags={TAG_STATUS: outcome, TAG_STATUS_DETAIL: why})
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Raise a store that is full or read-only as ``StorageError`` naming it."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            failure = storage_error(exc, store_name(self.tracking_uri), "MLflow store")
            if failure is None:
                raise
            raise failure from exc

    def __enter__(self) -> SweepTracker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        """Never leave the parent RUNNING: FINISHED, KILLED on Ctrl+C/exit, FAILED on error
        (a no-op when the Tune callback has already closed it).

        A storage failure the Tune callback met (``MlflowCallback``, which stops the sweep) is
        raised here as ``StorageError``; a store that fails while an exception is already on
        its way out is logged, not raised over it.
        """
        failure = _FAILURES.pop(self._key, None)
        if exc_type is None:
            status = "FINISHED" if failure is None else "FAILED"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            self.close(status)
        except StorageError as error:
            if exc_type is None and failure is None:
                raise
            logger.info("MLflow: the runs could not be closed: %s", error)
        if failure is not None and exc_type is None:
            raise failure

    @property
    def _key(self) -> tuple[str, str, str]:
        return (self.tracking_uri, self.experiment, self.execution)

    def record_failure(self, failure: StorageError) -> None:
        """Keep ``failure`` for the ``with`` block of this execution's tracker to raise (on a
        resumed sweep, Tune's callback holds its own unpickled tracker)."""
        _FAILURES.setdefault(self._key, failure)

    def tag_error(self, message: str) -> None:
        """Tag the parent run with what went wrong: ``ablate.error``, the line of ``message``
        that says it (``vocabulary.error_line``), at most 1000 characters."""
        self._log(
            self.parent_run_id,  # type: ignore[arg-type]
            tags={TAG_ERROR: vocabulary.error_line(message, _MAX_ERROR_TAG)},
        )

    # -- trial level

    @_store_errors
    def start_trial(
        self,
        trial_id: str,
        config: dict[str, Any],
        varying: dict[str, Any] | None = None,
        replicate: int = 0,
    ) -> str:
        """The child run of a trial, created with all params on first sight; set RUNNING.

        ``config`` is the resolved TrialConfig dict (nested); every flattened key is a param.
        """
        self.start()
        varying = dict(varying or {})
        state = self._trials.get(trial_id)
        if state is None:
            run = self.client.create_run(
                self.experiment_id,  # type: ignore[arg-type]
                run_name=run_name(varying, replicate),
                tags={
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                    TAG_ROLE: "trial",
                    TAG_SWEEP: self.experiment,
                    TAG_EXECUTION: self.execution,
                    TAG_TRIAL_ID: trial_id,
                    TAG_VARYING: json.dumps(varying, sort_keys=True),
                    TAG_REPLICATE: str(int(replicate)),
                    TAG_STATUS: "running",
                },
            )
            state = self._trials[trial_id] = _TrialRun(run.info.run_id)
            self._log(state.run_id, params=config_params(config))
            new_keys = [k for k in varying if k not in self._view_params]
            if new_keys:  # the varying keys become columns of the trials' view
                self._set_view(self.experiment_id, [*self._view_params, *new_keys])  # type: ignore[arg-type]
            return state.run_id
        # Resumed or retried: continue the same run.
        if state.finished or self.client.get_run(state.run_id).info.status != "RUNNING":
            self.client.update_run(state.run_id, status="RUNNING")
            self._log(state.run_id, tags={TAG_STATUS: "running", TAG_STATUS_DETAIL: "resumed"})
        state.finished = False
        return state.run_id

    @_store_errors
    def log_epoch(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Log one reported result at ``step = epoch``; False (nothing logged) for an epoch
        already logged for this trial (Tune restore, Ray Train worker-group restart)."""
        state = self._trials.get(trial_id)
        if state is None:
            raise KeyError(f"trial {trial_id} has no run: call start_trial first")
        epoch = result_epoch(result)
        if epoch <= state.last_epoch:
            return False
        timestamp = _now_ms()
        # "epoch" is always logged: a resumed tracker reads the last logged epoch back from it.
        values = {**epoch_metrics(result), "epoch": float(epoch)}
        metrics = [Metric(key, value, timestamp, epoch) for key, value in values.items()]
        for chunk in _chunks(metrics, _BATCH_METRICS):
            self.client.log_batch(state.run_id, metrics=chunk)
        state.last_epoch = epoch
        state.last_result = dict(result)
        return True

    @_store_errors
    def finish_trial(
        self,
        trial_id: str,
        status: str,
        *,
        detail: str = "",
        error: str | None = None,
        last_result: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        retries: int = 0,
    ) -> None:
        """End a trial's run: status tags, compute metrics, the error (tag + error.txt).

        ``status`` is an ``ablate.status`` value (``vocabulary.TRIAL_STATUSES``); ``resources``
        the resolved ``resources`` section, to turn wall seconds into CPU/GPU seconds reserved.
        Raises ValueError for another status, KeyError for a trial without a run.
        """
        if status not in vocabulary.TRIAL_STATUSES:
            raise ValueError(
                f"status must be one of {sorted(vocabulary.TRIAL_STATUSES)}, got {status!r}"
            )
        state = self._trials.get(trial_id)
        if state is None:
            raise KeyError(f"trial {trial_id} has no run: call start_trial first")
        # Tune's last_result of a trial that never reported holds only bookkeeping keys.
        result = last_result if last_result and "epoch" in last_result else state.last_result
        if result and result_epoch(result) > state.last_epoch:
            self.log_epoch(trial_id, result)
        epochs_run = result_epoch(result) if result else state.last_epoch
        compute = compute_metrics(result, epochs_run, resources, retries)
        tags = {TAG_STATUS: status, TAG_STATUS_DETAIL: detail or status}
        tags["ablate.epochs_run"] = str(epochs_run)
        if status == "stopped":
            tags["ablate.stopped_at_epoch"] = str(epochs_run)
        if result.get("reason"):
            tags[TAG_REASON] = str(result["reason"])[:_MAX_ERROR_TAG]
        if error:
            tags[TAG_ERROR] = vocabulary.error_line(error, _MAX_ERROR_TAG)
            self.client.log_text(state.run_id, error, "error.txt")
        timestamp = _now_ms()
        self._log(
            state.run_id,
            metrics=[Metric(k, v, timestamp, epochs_run) for k, v in compute.items()],
            tags=tags,
        )
        self.client.set_terminated(state.run_id, vocabulary.TRIAL_STATUSES[status])
        state.finished = True

    def backfill(
        self, trial_dirs: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, list[int]]:
        """Log the epochs a trial's own results record but its run lacks; the epochs logged,
        by trial id (trials with none left out).

        ``trial_dirs``: each trial's directories holding its ``result.json`` (Tune's trial
        directory in storage, its staging copy on the driver); default: ``<results_dir>/
        <trial_id>`` of every trial run of this execution. Each missing epoch is one
        ``log_batch`` at ``step = epoch`` with the result's own timestamp (Tune's ``timestamp``,
        seconds). Which epochs a run has is read from its ``epoch`` history, which every
        logged epoch carries. Raises ``StorageError`` when the store is full or read-only.
        """
        if not self.started:
            self.start()
        if trial_dirs is None:
            if self.results_dir is None:
                return {}
            trial_dirs = {
                trial_id: [f"{self.results_dir.rstrip('/')}/{trial_id}"]
                for trial_id in self._trials
            }
        logged: dict[str, list[int]] = {}
        for trial_id, dirs in trial_dirs.items():
            state = self._trials.get(trial_id)
            if state is None:
                continue
            recorded = recorded_results([f"{d.rstrip('/')}/result.json" for d in dirs])
            if not recorded:
                continue
            with self._storage_errors():
                history = self.client.get_metric_history(state.run_id, "epoch")
                have = {int(m.step) for m in history}
                missing = sorted(set(recorded) - have)
                for epoch in missing:
                    result = recorded[epoch]
                    stamp = result.get("timestamp")
                    timestamp = int(stamp * 1000) if isinstance(stamp, (int, float)) else _now_ms()
                    values = {**epoch_metrics(result), "epoch": float(epoch)}
                    metrics = [Metric(k, v, timestamp, epoch) for k, v in values.items()]
                    for chunk in _chunks(metrics, _BATCH_METRICS):
                        self.client.log_batch(state.run_id, metrics=chunk)
            if missing:
                logged[trial_id] = missing
                if missing[-1] > state.last_epoch:
                    state.last_epoch = missing[-1]
                    state.last_result = dict(recorded[missing[-1]])
                logger.info("MLflow: trial %s: logged missing epochs %s", trial_id, missing)
        return logged

    def run_id(self, trial_id: str) -> str | None:
        state = self._trials.get(trial_id)
        return state.run_id if state else None

    def last_epoch(self, trial_id: str) -> int:
        state = self._trials.get(trial_id)
        return state.last_epoch if state else 0

    # -- internals

    def _experiment_id(self) -> str:
        """Find or create the experiment; mark it as model training, with the trials' view."""
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment_id)
        self.client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        self._set_view(experiment_id)
        return experiment_id

    def _set_view(self, experiment_id: str, params: list[str] | None = None) -> None:
        """Write the trials' view (``VIEW_KEY``) with ``params`` (the varying keys) as columns."""
        if params is not None:
            self._view_params = params
        self.client.set_experiment_tag(
            experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, runs_view(self.metric, self._view_params)
        )

    def _children(self) -> list[Run]:
        return child_runs(self.client, self.experiment_id, self.parent_run_id)  # type: ignore[arg-type]

    def _load_children(self) -> None:
        for run in self._children():
            trial_id = run.data.tags.get(TAG_TRIAL_ID)
            if trial_id is None:
                continue
            last = run.data.metrics.get("epoch")
            self._trials[trial_id] = _TrialRun(
                run.info.run_id,
                last_epoch=int(last) if last is not None and math.isfinite(last) else 0,
                finished=run.info.status != "RUNNING",
            )

    def _log(
        self,
        run_id: str,
        *,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[Metric] | None = None,
    ) -> None:
        for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()], _BATCH_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()], _BATCH_PARAMS):
            self.client.log_batch(run_id, tags=chunk)
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
