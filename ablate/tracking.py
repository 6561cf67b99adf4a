"""The MLflow run layout of a sweep: the writer (from the sweep driver) and the reader.

Layout in MLflow: one experiment per sweep (``tracking.experiment``, else the sweep's name); one
*parent* run per sweep execution (tags ``ablate.sweep`` + ``ablate.execution``, the spec YAML as
``spec.yaml``); one *child* run per Ray Tune trial nested under it (tag ``mlflow.parentRunId``),
found again by ``ablate.trial_id``. A child logs its fully resolved config as params, per-epoch
metrics with ``step = epoch``, its outcome as tag ``ablate.status`` (``vocabulary.
TRIAL_STATUSES``) and the compute it used as ``compute/*`` metrics.

Writer: ``SweepTracker``, fed by ``MlflowCallback`` (a ``ray.tune.Callback``). Everything runs in
the driver, so workers never touch the tracking store. Resuming an execution continues its runs:
an epoch is logged at most once per trial, whatever Tune or Ray Train re-report after a restore
or a worker-group restart.

Reader: ``load_results`` turns a parent run and its children back into a ``report.
SweepResults``; ``publish_report`` builds the report from it (``ablate.report``, which knows
nothing of MLflow) and logs the files under ``report/`` of the parent run. Both sides search
runs through ``search_runs``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import (
    AUTO_RESULT_KEYS,
    DONE,
    EPISODES_THIS_ITER,
    EXPERIMENT_TAG,
    SHOULD_CHECKPOINT,
    TIMESTEPS_THIS_ITER,
    TRIAL_ID,
)

from ablate import report, trialrecord, vocabulary
from ablate.config import flatten
from ablate.report import Report, Row, SweepResults

logger = logging.getLogger(__name__)

#: Tag keys, written by the tracker and read back by ``load_results``.
TAG_SWEEP = "ablate.sweep"
TAG_EXECUTION = "ablate.execution"
TAG_ROLE = "ablate.role"  # "sweep" (parent) | "trial" (child)
TAG_TRIAL_ID = "ablate.trial_id"
TAG_VARYING = "ablate.varying"  # JSON of {dotted_key: value}
TAG_REPLICATE = "ablate.replicate"
TAG_STATUS = "ablate.status"  # running | completed | stopped | diverged | failed | interrupted
TAG_STATUS_DETAIL = "ablate.status_detail"
TAG_REASON = "ablate.reason"
TAG_ERROR = "ablate.error"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
#: Experiment tag naming what the experiment is for; MLflow 3's UI opens a
#: ``custom_model_development`` experiment on its runs (model training), not on GenAI traces.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The saved view of the runs table the tracker keeps on each sweep experiment (experiment tag
#: ``mlflow.sharedViewState.<key>``, opened by ``?viewStateShareKey=<key>``, listed in the runs
#: page's "Views" menu): trial runs only (flat), best ranking metric first, its column shown.
VIEW_KEY = "ablate-trials"
_VIEW_TAG_PREFIX = "mlflow.sharedViewState."

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

#: Keys Ray Tune adds to every result: bookkeeping, not metrics of the trial.
_TUNE_RESULT_KEYS = frozenset(
    (
        *AUTO_RESULT_KEYS,
        DONE,
        TRIAL_ID,
        EXPERIMENT_TAG,
        SHOULD_CHECKPOINT,
        EPISODES_THIS_ITER,
        TIMESTEPS_THIS_ITER,
    )
)
_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_MAX_ERROR_TAG = 1000
_MAX_RUN_NAME = 250  # the runs.name column of MLflow's SQL stores: String(250)
_BATCH_PARAMS = 100  # MLflow's limit of params/tags per log_batch
_BATCH_METRICS = 1000


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


# ----------------------------------------------------------------------------- storage errors

#: What an errno of a full or read-only storage means, in the message.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
}
#: The same, as it reads in an error's text: SQLite's SQLITE_FULL and SQLITE_READONLY, and the
#: OSError texts of the errnos (a trial's error arrives as its traceback's text).
_STORAGE_TEXTS = (
    ("database or disk is full", "the database or its disk is full"),
    ("attempt to write a readonly database", "the database is read-only"),
    ("No space left on device", _STORAGE_ERRNOS[errno.ENOSPC]),
    ("Read-only file system", _STORAGE_ERRNOS[errno.EROFS]),
    ("Disk quota exceeded", _STORAGE_ERRNOS[errno.EDQUOT]),
)
_ERRNO_CODES = "|".join(str(code) for code in _STORAGE_ERRNOS)
_ERRNO_PATH = re.compile(rf"\[Errno (?:{_ERRNO_CODES})\] [^'\n]*?: '([^'\n]+)'")
#: Resuming is the way out of a storage error that stopped a sweep.
RESUME_HINT = (
    "Free space on that file system (or make it writable), then rerun the same command with "
    "--resume: finished trials are kept, the others continue from their last checkpoints, and "
    "epochs missing from MLflow are logged from the trials' own results."
)


class StorageError(RuntimeError):
    """A write failed because its storage is full or read-only (SQLite "database or disk is
    full", OSError ENOSPC / EROFS / EDQUOT).

    ``what`` names the storage (``MLflow store``, ``results``, ``report``), ``path`` the file or
    store, ``reason`` the cause in words and ``todo`` the way out; ``notes`` are appended (e.g.
    whether the sweep's MLflow runs could be marked). ``exit_status`` is the entrypoints' exit
    status for it (74, sysexits' EX_IOERR).
    """

    exit_status = 74

    def __init__(self, what: str, path: str, reason: str, todo: str = RESUME_HINT) -> None:
        super().__init__(what, path, reason, todo)
        self.what, self.path, self.reason, self.todo = what, path, reason, todo
        self.notes: list[str] = []

    def __str__(self) -> str:
        return " ".join([f"{self.what} {self.path}: {self.reason}.", *self.notes, self.todo])


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def storage_reason(text: str) -> tuple[str, str | None] | None:
    """``(reason, path or None)`` when an error's text says its storage is full or read-only
    (a trial's error reaches the driver as text); else None."""
    for needle, reason in _STORAGE_TEXTS:
        if needle in text:
            found = _ERRNO_PATH.search(text)
            return reason, found.group(1) if found else None
    return None


def storage_error(
    exc: BaseException,
    path: str | os.PathLike[str] | None = None,
    what: str = "storage",
    todo: str = RESUME_HINT,
) -> StorageError | None:
    """The ``StorageError`` that ``exc`` (or an exception in its chain) amounts to, else None.

    An OSError names its own file; otherwise ``path`` (the store or directory being written)
    is named, or the path an OSError's text holds. A ``StorageError`` in the chain is
    returned as it is.
    """
    for link in _chain(exc):
        if isinstance(link, StorageError):
            return link
        if isinstance(link, OSError) and link.errno in _STORAGE_ERRNOS:
            named = link.filename if link.filename else path
            return StorageError(what, str(named or "?"), _STORAGE_ERRNOS[link.errno], todo)
    for link in _chain(exc):
        found = storage_reason(str(link))
        if found is not None:
            reason, named = found
            return StorageError(what, str(named or path or "?"), reason, todo)
    return None


class _QuietStorageErrors(logging.Filter):
    """Drops MLflow's own ERROR record (with its SQLAlchemy traceback) of a write that failed
    because the store is full or read-only: MLflow raises the same error to the tracker,
    which raises it as one ``StorageError`` naming the store."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or storage_error(error) is None


#: The logger of MLflow's SQL stores' sessions (``mlflow.store.db.utils.make_managed_session``).
logging.getLogger("mlflow.store.db.utils").addFilter(_QuietStorageErrors())


def store_name(tracking_uri: str) -> str:
    """How a message names an MLflow store: a SQLite store's database file, else its URI."""
    db = _sqlite_path(tracking_uri)
    return str(db) if db is not None else tracking_uri


# ----------------------------------------------------------------------------- URIs


def default_tracking_uri(storage_path: str | os.PathLike[str]) -> str:
    """The local SQLite store beside the sweep's storage: ``sqlite:////abs/storage/mlflow.db``.

    An absolute path, never the working directory (under ``ray job submit`` that is a temporary
    unpacked copy). ``mlflow ui --backend-store-uri <this>`` opens it without a server.
    """
    path = Path(storage_path).expanduser().resolve() / "mlflow.db"
    return f"sqlite:///{path.as_posix()}"


def resolve_tracking_uri(uri: str | None, storage_path: str | os.PathLike[str]) -> str:
    """The URI to use: ``uri`` (from the spec) else ``$MLFLOW_TRACKING_URI`` else the default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage_path)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def default_artifact_location(uri: str) -> str | None:
    """For a SQLite store, ``file:///<db dir>/mlartifacts``; other stores choose their own."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts").as_uri()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200 within ``timeout`` seconds. sqlite: the
    database's directory must be creatable and writable. File stores are refused (MLflow 3 puts
    them in maintenance mode). Raises ``TrackingError`` naming the URI and what to do.
    """
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            response = requests.get(health, timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}: {exc}). "
                "Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix "
                "`tracking_uri` in the sweep YAML or $MLFLOW_TRACKING_URI, or unset both to "
                "use the local SQLite store beside the sweep's storage."
            ) from exc
        if response.status_code != 200:
            raise TrackingError(
                f"MLflow tracking server {uri} answered {health} with HTTP "
                f"{response.status_code}; expected 200. Check that the URI points at an MLflow "
                "tracking server (not its UI proxy or another service)."
            )
        return
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is None or not db.is_absolute():
            raise TrackingError(
                f"tracking URI {uri}: use an absolute SQLite path, sqlite:////abs/path/mlflow.db "
                "(four slashes), so that the store does not depend on the working directory."
            )
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"tracking URI {uri}: cannot create directory {db.parent}: {exc}"
            ) from exc
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"tracking URI {uri}: {db} is not writable by this user.")
        return
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {uri!r} is a file store, which MLflow 3 no longer supports. Use "
            "sqlite:////abs/path/mlflow.db or an http:// tracking server."
        )
    # Other backends (postgresql://, mysql://, databricks) are checked by their first request.


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


def epoch_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of one reported result, without Ray Tune's bookkeeping keys."""
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if key in _TUNE_RESULT_KEYS or key.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            metrics[key] = float(value)
    return metrics


def result_epoch(result: dict[str, Any]) -> int:
    """The epoch a result reports (``epoch``; Tune's ``training_iteration`` if absent)."""
    epoch = result.get("epoch", result.get("training_iteration"))
    if epoch is None:
        raise ValueError(f"result has neither 'epoch' nor 'training_iteration': {sorted(result)}")
    return int(epoch)


def compute_metrics(
    result: dict[str, Any],
    epochs_run: int,
    resources: dict[str, Any] | None = None,
    retries: int = 0,
) -> dict[str, float]:
    """The ``compute/*`` metrics (``vocabulary.COMPUTE_METRICS``) of a trial that ended.

    Wall seconds are the last result's ``wall_seconds`` (Tune's ``time_total_s`` if absent);
    CPU and GPU seconds are *reserved* ones, wall x ``num_workers`` x ``cpus_per_worker`` /
    ``gpus_per_worker`` of the resolved ``resources`` section (left out without it).
    """
    wall = float(result.get("wall_seconds", result.get("time_total_s", 0.0)) or 0.0)
    compute = {
        "compute/epochs_run": float(epochs_run),
        "compute/wall_seconds": wall,
        "compute/retries": float(retries),
    }
    if resources:
        workers = float(resources.get("num_workers", 1))
        compute["compute/cpu_seconds"] = (
            wall * workers * float(resources.get("cpus_per_worker", 1.0))
        )
        compute["compute/gpu_seconds"] = (
            wall * workers * float(resources.get("gpus_per_worker", 0.0))
        )
    assert set(compute) <= set(vocabulary.COMPUTE_METRICS)
    return compute


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


# ----------------------------------------------------------------------------- run layout


def search_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run of the experiment matching ``filter_string``, oldest first (all pages
    of ``MlflowClient.search_runs``). The one search of the writer and the reader."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """The trial runs nested under a sweep's parent run, oldest first."""
    return search_runs(client, experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


# ----------------------------------------------------------------------------- UI view


def runs_view(metric: str, params: list[str] | None = None) -> str:
    """The value of the experiment tag ``mlflow.sharedViewState.<VIEW_KEY>``: a saved view of
    MLflow 3's runs table (``{name, createdAt, updatedAt, state}``, state a JSON text of the
    table's search and column state) listing trial runs only (no nesting under the sweep's run),
    best ``metric`` first, with ``metric``, the test probe, the outcome and ``params`` shown."""
    columns = [
        f"metrics.`{metric}`",
        "metrics.`test/probe_top1`",
        f"tags.`{TAG_STATUS}`",
        *(f"params.`{key}`" for key in params or ()),
    ]
    state = {
        "searchFilter": f"tags.`{TAG_ROLE}` = 'trial'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": vocabulary.direction(metric) == "min",
        "selectedColumns": list(dict.fromkeys(columns)),
    }
    # A fixed time: the tag is rewritten as varying keys appear, the view stays the same one.
    return json.dumps(
        {"name": f"trials by {metric}", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)}
    )


def browse_url(ui_uri: str, experiment_id: str) -> str:
    """The MLflow UI page of a sweep's trials: the runs table in model-training mode with the
    trials' view (``runs_view``). ``ui_uri``: where the UI is served (``mlflow ui`` serves
    ``http://127.0.0.1:5000``; a tracking server serves it at its own URI)."""
    return (
        f"{ui_uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    )


def sweep_page(tracking_uri: str, experiment: str) -> str | None:
    """``browse_url`` of ``experiment`` in the store at ``tracking_uri``, or None when it has no
    such experiment or does not answer. A SQLite store's page is the one ``mlflow ui
    --backend-store-uri <tracking_uri>`` serves on its default port (127.0.0.1:5000)."""
    scheme = urlparse(tracking_uri).scheme.lower()
    ui = tracking_uri if scheme in ("http", "https") else "http://127.0.0.1:5000"
    try:
        found = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # a store that went away: the hint is not worth an error
        return None
    return browse_url(ui, found.experiment_id) if found is not None else None


# ----------------------------------------------------------------------------- writer


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


def _read_text(path: str) -> str | None:
    """A local file's or a URI's (``pyarrow.fs``) text; None when it does not exist."""
    try:
        if "://" not in path:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as stream:
            return stream.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def recorded_results(paths: Sequence[str]) -> dict[int, dict[str, Any]]:
    """A trial's own record of its epochs: the first result of each epoch in the ``result.json``
    files (Tune's ``JsonLoggerCallback``, one JSON result a line) at ``paths``, by epoch.

    The first, as ``SweepTracker.log_epoch`` logs the first report of an epoch; a line cut
    short (a driver killed mid-write) or without an epoch is skipped.
    """
    results: dict[int, dict[str, Any]] = {}
    for path in paths:
        text = _read_text(path)
        for line in (text or "").splitlines():
            try:
                result = json.loads(line)
                epoch = result_epoch(result)
            except (ValueError, TypeError):
                continue
            if epoch >= 1:
                results.setdefault(epoch, result)
    return results


class SweepTracker:
    """Logs one sweep execution to MLflow: a parent run and one child run per trial.

    ``execution`` names this execution of the sweep and must stay the same when it is resumed
    (the sweep passes its Tune experiment name); a new one starts a new parent run. Picklable
    (Tune saves its callbacks with the experiment): the client is rebuilt on first use.

    In the driver: ``with tracker: tuner.fit()`` (with ``MlflowCallback(tracker)`` among the
    Tune callbacks) closes the parent whatever happens.

    ``results_dir``: the sweep's Tune experiment directory (``<storage>/<sweep>``, a path or
    URI), whose ``<trial_id>/result.json`` are the trials' own records: a continued execution
    logs the epochs its runs lack from them (``backfill``).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        execution: str | None = None,
        spec_text: str | None = None,
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
            experiment_id, _VIEW_TAG_PREFIX + VIEW_KEY, runs_view(self.metric, self._view_params)
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


# ----------------------------------------------------------------------------- Tune callback


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
                self.tracker._log(
                    self.tracker.parent_run_id,  # type: ignore[arg-type]
                    tags={TAG_ERROR: vocabulary.error_line(str(failed), _MAX_ERROR_TAG)},
                )
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


# ----------------------------------------------------------------------------- reader


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def find_parent_run(client: MlflowClient, experiment_id: str, parent_run_id: str | None) -> Run:
    """The given parent run, else the experiment's latest sweep (parent) run.

    Raises LookupError when the experiment has no sweep run.
    """
    if parent_run_id is not None:
        return client.get_run(parent_run_id)
    parents = search_runs(client, experiment_id, f"tags.`{TAG_ROLE}` = 'sweep'")
    if not parents:
        raise LookupError(f"experiment {experiment_id} has no sweep (parent) run")
    return parents[-1]


def run_row(run: Run) -> tuple[Row, list[str]]:
    """One trial's row of the results table and its varying keys.

    Varying values keep their type (numbers stay numbers), except lists and dicts, which are
    written as ``vocabulary.format_value`` writes them (op lists ``crop+color``). Metrics are
    ``vocabulary.RESULT_METRICS`` and ``COMPUTE_METRICS``, None where the run has none.
    """
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    varying = json.loads(tags.get(TAG_VARYING, "{}"))
    status = "running" if run.info.status == "RUNNING" else tags.get(TAG_STATUS, "running")
    row: Row = {
        "trial_id": tags.get(TAG_TRIAL_ID, ""),
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "replicate": _int_or_none(tags.get(TAG_REPLICATE)) or 0,
        "seed": _int_or_none(params.get("train.seed")),
        "status": status,
        "status_detail": tags.get(TAG_STATUS_DETAIL, ""),
        "epochs_planned": _int_or_none(params.get("train.epochs")),
    }
    for key, value in varying.items():
        is_text = isinstance(value, (list, tuple, dict))
        row[key] = vocabulary.format_value(value) if is_text else value
    for key in (*vocabulary.RESULT_METRICS, *vocabulary.COMPUTE_METRICS):
        value = metrics.get(key)
        row[key] = float(value) if value is not None else None
    return row, list(varying)


def load_results(
    client: MlflowClient,
    experiment: str,
    parent_run_id: str | None = None,
    metric: str = vocabulary.DEFAULT_RANKING_METRIC,
) -> SweepResults:
    """Read one sweep execution back: a row per trial, the varying keys and the per-epoch
    history of ``metric``. ``parent_run_id`` defaults to the experiment's latest sweep run.

    Raises LookupError (naming the experiments there are) for an unknown experiment.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"no MLflow experiment {experiment!r}; experiments: {names}")
    parent = find_parent_run(client, found.experiment_id, parent_run_id)
    rows: list[Row] = []
    keys: list[str] = []
    histories: dict[str, list[tuple[int, float]]] = {}
    class_counts: list[int] = []
    for run in child_runs(client, found.experiment_id, parent.info.run_id):
        row, varying = run_row(run)
        rows.append(row)
        keys.extend(k for k in varying if k not in keys)
        history = client.get_metric_history(run.info.run_id, metric)
        by_step = {int(m.step): float(m.value) for m in history}
        points = sorted(by_step.items())
        if metric in vocabulary.MONITOR_METRICS:
            points = measured_points(points, run.data.params, row["status"])
        histories[run.info.run_id] = points
        classes = dataset_classes(run.data.params)
        if classes is not None:
            class_counts.append(classes)
    return SweepResults(
        experiment,
        parent.info.run_id,
        rows,
        keys,
        histories,
        num_classes=max(class_counts) if class_counts else None,
    )


def measured_points(
    points: list[tuple[int, float]], params: dict[str, str], status: str
) -> list[tuple[int, float]]:
    """The ``(epoch, value)`` points of a monitor (``vocabulary.MONITOR_METRICS``) at which the
    trial measured it (``vocabulary.monitor_measured`` with the run's ``train.epochs``,
    ``eval.eval_every``, ``eval.probe.epochs`` params), not the values carried in between; a
    diverged trial's last epoch carries too. Params missing: every point."""
    try:
        epochs = int(params["train.epochs"])
        every = int(params["eval.eval_every"])
        probes = [int(e) for e in json.loads(params.get("eval.probe.epochs", "[]"))]
    except (KeyError, ValueError, TypeError):
        return points
    kept = [(e, v) for e, v in points if vocabulary.monitor_measured(e, epochs, every, probes)]
    if status == "diverged" and points and kept and kept[-1][0] == points[-1][0]:
        kept = kept[:-1]
    return kept


def dataset_classes(params: dict[str, str]) -> int | None:
    """The number of classes of a trial's dataset, from its params, when known without reading
    it: synthetic ``data.num_classes``, the torchvision datasets' published counts; else None."""
    name = params.get("data.name")
    if name == "synthetic":
        return _int_or_none(params.get("data.num_classes"))
    from ablate.data import KNOWN_TRAIN_CLASSES

    known = KNOWN_TRAIN_CLASSES.get(name or "")
    return known[0] if known else None


def publish_report(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    metric: str = vocabulary.DEFAULT_RANKING_METRIC,
    mode: str = "max",
    log_to_mlflow: bool = True,
) -> Report:
    """Read one sweep execution back from MLflow, write its report and log it under
    ``report/`` of the parent run (unless ``log_to_mlflow`` is False): the tables
    (``results``, ``history``, ``comparisons`` Parquet), ``summary.md`` and ``figures/``
    (with the forest plot and the importance figure), and the importance of each swept key as
    metrics of the parent run (``importance_metrics``).

    ``metric`` and ``mode`` are the sweep's ranking (``scheduler.metric`` / ``scheduler.mode``),
    so that ``summary.md`` ranks as ``summary.json`` does. ``out_dir`` defaults to
    ``reports/<experiment>/<parent run id>`` under the working directory. Raises LookupError
    for an unknown experiment or one without a sweep run, ``StorageError`` when the report's
    directory, the store or its artifact location is full or read-only (naming it, and the
    ``entrypoints.report`` command that writes the report again).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    results = load_results(client, experiment, parent_run_id, metric)
    out = Path(out_dir) if out_dir else Path("reports") / experiment / results.parent_run_id
    again = (
        "Free space there (or make it writable), then write the report again with `python -m "
        f"entrypoints.report --experiment {experiment} --run {results.parent_run_id} "
        f"--tracking-uri {tracking_uri} --out {out} --metric {metric} --mode {mode}`; the "
        "sweep's results and runs are complete."
    )
    try:
        built = report.build_report(results, out, metric=metric, mode=mode)
    except OSError as exc:
        failure = storage_error(exc, out, "report directory", again)
        if failure is None:
            raise
        raise failure from exc
    if log_to_mlflow:
        try:
            client.log_artifacts(results.parent_run_id, str(built.out_dir), artifact_path="report")
            values = importance_metrics(built)
            if values:
                now = _now_ms()
                client.log_batch(
                    results.parent_run_id,
                    metrics=[Metric(k, v, now, 0) for k, v in values.items()],
                )
        except Exception as exc:
            if isinstance(exc, OSError):  # copying into a file artifact store
                where = client.get_run(results.parent_run_id).info.artifact_uri
                failure = storage_error(exc, where, "MLflow artifact store", again)
            else:
                failure = storage_error(exc, store_name(tracking_uri), "MLflow store", again)
            if failure is None:
                raise
            raise failure from exc
    return built


def importance_metrics(built: Report) -> dict[str, float]:
    """The report's key importance as parent-run metrics: ``importance/<key>`` (share of the
    variance of the ranking metric its main effect explains), ``importance/<a> x <b>`` (two-way
    interaction) and ``importance/seed_noise`` (within configurations); empty when nothing
    varies or no trial has the metric. Keys are dotted names, valid in MLflow metric names."""
    importance = built.confidence.importance if built.confidence is not None else None
    if importance is None:
        return {}
    values = {f"importance/{key}": imp.share for key, imp in importance.main.items()}
    values |= {
        f"importance/{a} x {b}": imp.share for (a, b), imp in importance.interactions.items()
    }
    values["importance/seed_noise"] = importance.residual
    return values


__all__ = [
    "RUN_NAME_ALIASES",
    "MlflowCallback",
    "SweepTracker",
    "TrackingError",
    "browse_url",
    "check_reachable",
    "child_runs",
    "compute_metrics",
    "config_params",
    "default_artifact_location",
    "default_tracking_uri",
    "epoch_metrics",
    "find_parent_run",
    "importance_metrics",
    "load_results",
    "publish_report",
    "resolve_tracking_uri",
    "run_name",
    "run_row",
    "runs_view",
    "search_runs",
    "sweep_page",
]
