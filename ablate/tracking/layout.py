"""Where a sweep lives in MLflow: the tags that find its runs, the store's URI and its checks,
the runs' searches and the UI's view of the trials.

Layout: one experiment per sweep (``tracking.experiment``, else the sweep's name); one *parent*
run per sweep execution (tags ``TAG_SWEEP`` + ``TAG_EXECUTION``, ``TAG_ROLE`` ``sweep``); one
*child* run per Ray Tune trial nested under it (tag ``mlflow.parentRunId``, ``TAG_ROLE``
``trial``), found again by ``TAG_TRIAL_ID``. The default store is a SQLite file beside the
sweep's storage (``default_tracking_uri``), its artifacts in ``mlartifacts/`` beside it.
``search_runs`` is the one search of the writer and the reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import requests
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ablate import vocabulary

#: Tag keys, written by the tracker (``writer``) and read back by ``reader.load_results``.
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
#: The parent run's description in MLflow's UI (its "Description" box): the spec's
#: ``description``, the question the sweep asks, which the report opens with.
TAG_DESCRIPTION = "mlflow.note.content"
#: Parent-run tags: the sweep's own report figures and findings (JSON lists of names), set by
#: ``publish.publish_report``, read by ``reader.report_components`` to rebuild its report.
TAG_REPORT_FIGURES = "ablate.report.figures"
TAG_REPORT_FINDINGS = "ablate.report.findings"
#: Experiment tag naming what the experiment is for; MLflow 3's UI opens a
#: ``custom_model_development`` experiment on its runs (model training), not on GenAI traces.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The saved view of the runs table the tracker keeps on each sweep experiment (experiment tag
#: ``mlflow.sharedViewState.<key>``, opened by ``?viewStateShareKey=<key>``, listed in the runs
#: page's "Views" menu): trial runs only (flat), best ranking metric first, its column shown.
VIEW_KEY = "ablate-trials"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


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


def store_name(tracking_uri: str) -> str:
    """How a message names an MLflow store: a SQLite store's database file, else its URI."""
    db = _sqlite_path(tracking_uri)
    return str(db) if db is not None else tracking_uri


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
