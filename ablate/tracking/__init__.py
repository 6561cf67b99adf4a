"""MLflow tracking of a sweep: its run layout, the writer fed by Ray Tune, the reader.

- ``layout``: where a sweep lives in MLflow (one experiment per sweep, a parent run per
  execution, a child run per trial; the tags that find them), the store's URI (the default
  SQLite file beside the sweep's storage) and its checks, the runs' searches, the UI's view.
- ``storage``: a full or read-only store, results or report directory as one ``StorageError``.
- ``results``: a trial's reported results as MLflow metrics (no Ray).
- ``writer``: ``SweepTracker`` logs runs, params, per-epoch metrics, outcomes and compute from
  the sweep's driver, so workers never touch the store; a resumed execution continues its runs.
- ``callback``: ``MlflowCallback``, the Ray Tune callback that feeds the tracker; the only
  module here that imports Ray, loaded on first use of the name (``__getattr__``).
- ``reader``: ``load_results`` reads an execution back as the report's ``SweepResults``;
  ``report_components`` the sweep's own report figures and findings its parent run records.
- ``publish``: ``publish_report`` builds the report (``ablate.report``, which knows nothing of
  MLflow) with those figures and findings and logs it under ``report/`` of the parent run.

Importing this package imports neither Ray nor the report: rebuilding a report from its runs
(``python -m entrypoints.report``) runs without Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.tracking.layout import (
    VIEW_KEY,
    TrackingError,
    browse_url,
    check_reachable,
    child_runs,
    default_artifact_location,
    default_tracking_uri,
    resolve_tracking_uri,
    runs_view,
    search_runs,
    store_name,
    sweep_page,
)
from ablate.tracking.publish import ReportComponentError, importance_metrics, publish_report
from ablate.tracking.reader import find_parent_run, load_results, report_components, run_row
from ablate.tracking.results import compute_metrics, epoch_metrics
from ablate.tracking.storage import RESUME_HINT, StorageError, storage_error, storage_reason
from ablate.tracking.writer import RUN_NAME_ALIASES, SweepTracker, config_params, run_name

if TYPE_CHECKING:
    from ablate.tracking.callback import MlflowCallback


def __getattr__(name: str) -> Any:
    """``MlflowCallback``, imported (with Ray) only when it is asked for."""
    if name == "MlflowCallback":
        from ablate.tracking.callback import MlflowCallback

        return MlflowCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RESUME_HINT",
    "RUN_NAME_ALIASES",
    "VIEW_KEY",
    "MlflowCallback",
    "ReportComponentError",
    "StorageError",
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
    "report_components",
    "resolve_tracking_uri",
    "run_name",
    "run_row",
    "runs_view",
    "search_runs",
    "storage_error",
    "storage_reason",
    "store_name",
    "sweep_page",
]
