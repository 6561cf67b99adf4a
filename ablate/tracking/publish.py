"""A sweep's report, built from its runs and logged back under ``report/`` of its parent run.

``publish_report`` reads the execution back (``reader.load_results``), has ``ablate.report``
build the report (which knows nothing of MLflow) with the sweep's own figures and findings,
records their names on the parent run (``layout.TAG_REPORT_FIGURES`` / ``TAG_REPORT_FINDINGS``,
read back by ``reader.report_components``) and logs its files and the swept keys' importance
(``importance_metrics``) to the parent run.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from ablate import vocabulary
from ablate.tracking.layout import TAG_REPORT_FIGURES, TAG_REPORT_FINDINGS, store_name
from ablate.tracking.reader import load_results, report_components
from ablate.tracking.storage import storage_error

if TYPE_CHECKING:
    from ablate.report import Report


class ReportComponentError(ValueError):
    """A report figure or finding that is unknown, does not import or does not fit its kind;
    the message names the name, where it came from (given, or recorded on the parent run) and
    the cause (``ablate.report.component_errors``)."""


def publish_report(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    metric: str = vocabulary.DEFAULT_RANKING_METRIC,
    mode: str = "max",
    figures: Sequence[str] = (),
    findings: Sequence[str] = (),
    recorded: bool = False,
    log_to_mlflow: bool = True,
) -> Report:
    """Read one sweep execution back from MLflow, write its report and log it under
    ``report/`` of the parent run (unless ``log_to_mlflow`` is False): the tables
    (``results``, ``history``, ``comparisons`` Parquet), ``summary.md`` and ``figures/``
    (with the forest plot and the importance figure), and the importance of each swept key as
    metrics of the parent run (``importance_metrics``).

    ``metric`` and ``mode`` are the sweep's ranking (``scheduler.metric`` / ``scheduler.mode``),
    so that ``summary.md`` ranks as ``summary.json`` does. ``figures`` / ``findings``: the
    sweep's own (``report.figures`` / ``report.findings`` of its spec: registered names or
    ``module.path:factory``); with ``recorded`` the ones the parent run recorded
    (``reader.report_components``) come first, these added. The names built with are recorded
    on the parent run (tags ``ablate.report.figures`` / ``ablate.report.findings``, JSON lists)
    unless ``log_to_mlflow`` is False. ``out_dir`` defaults to
    ``reports/<experiment>/<parent run id>`` under the working directory.

    Raises ``ReportComponentError`` (a ValueError) for a figure or finding that is unknown,
    does not import or does not fit (given names are checked before MLflow is read), LookupError
    for an unknown experiment or one without a sweep run, ``StorageError`` when the report's
    directory, the store or its artifact location is full or read-only (naming it, and the
    ``entrypoints.report`` command that writes the report again).
    """
    _check_components(figures, findings, "given")
    client = MlflowClient(tracking_uri=tracking_uri)
    results = load_results(client, experiment, parent_run_id, metric)
    run_id = results.parent_run_id
    if recorded:
        logged_figures, logged_findings = report_components(client, run_id)
        _check_components(logged_figures, logged_findings, f"recorded on parent run {run_id}")
        figures = [*logged_figures, *figures]
        findings = [*logged_findings, *findings]
    figures, findings = list(dict.fromkeys(figures)), list(dict.fromkeys(findings))
    out = Path(out_dir) if out_dir else Path("reports") / experiment / run_id
    flags = [f"--figure {shlex.quote(n)}" for n in figures]
    flags += [f"--finding {shlex.quote(n)}" for n in findings]
    again = (
        "Free space there (or make it writable), then write the report again with `python -m "
        f"entrypoints.report --experiment {experiment} --run {run_id} "
        f"--tracking-uri {tracking_uri} --out {out} --metric {metric} --mode {mode}"
        f"{''.join(' ' + f for f in flags)}`; the sweep's results and runs are complete."
    )
    from ablate.report import build_report  # only here: tracking is imported without the report

    if log_to_mlflow:
        # Recorded before the report is built, so that a figure that fails while drawing still
        # leaves the names a rebuild (``entrypoints.report``) starts from.
        tags = [
            RunTag(TAG_REPORT_FIGURES, json.dumps(figures)),
            RunTag(TAG_REPORT_FINDINGS, json.dumps(findings)),
        ]
        try:
            client.log_batch(run_id, tags=tags)
        except Exception as exc:
            failure = storage_error(exc, store_name(tracking_uri), "MLflow store", again)
            if failure is None:
                raise
            raise failure from exc
    try:
        built = build_report(
            results, out, metric=metric, mode=mode, figures=figures, findings=findings
        )
    except OSError as exc:
        failure = storage_error(exc, out, "report directory", again)
        if failure is None:
            raise
        raise failure from exc
    if log_to_mlflow:
        try:
            client.log_artifacts(run_id, str(built.out_dir), artifact_path="report")
            values = importance_metrics(built)
            if values:
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
        except Exception as exc:
            if isinstance(exc, OSError):  # copying into a file artifact store
                where = client.get_run(run_id).info.artifact_uri
                failure = storage_error(exc, where, "MLflow artifact store", again)
            else:
                failure = storage_error(exc, store_name(tracking_uri), "MLflow store", again)
            if failure is None:
                raise
            raise failure from exc
    return built


def _check_components(figures: Sequence[str], findings: Sequence[str], origin: str) -> None:
    """Raises ``ReportComponentError`` naming the first of ``figures`` / ``findings`` that
    ``ablate.report.component_errors`` finds unusable, its kind and ``origin``."""
    if not (figures or findings):
        return
    from ablate.report import component_errors

    for kind, _index, name, error in component_errors(figures, findings):
        raise ReportComponentError(f"report {kind} {name!r} ({origin}): {error}")


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
