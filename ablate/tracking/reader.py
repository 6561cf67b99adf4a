"""The reader: one sweep execution read back from MLflow as the report's input.

``load_results`` turns a parent run and its children into a ``report.SweepResults``: a row per
trial (``run_row``), the varying keys and the per-epoch history of the ranking metric (a
monitor's measured epochs only); ``report_components`` the sweep's own report figures and
findings, recorded on its parent run. Neither Ray nor the report is imported with this module:
``SweepResults`` only when a sweep is read back, so that the report's own imports stay the
report's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Run

from ablate import vocabulary
from ablate.tracking.layout import (
    TAG_DESCRIPTION,
    TAG_REPLICATE,
    TAG_REPORT_FIGURES,
    TAG_REPORT_FINDINGS,
    TAG_ROLE,
    TAG_STATUS,
    TAG_STATUS_DETAIL,
    TAG_TRIAL_ID,
    TAG_VARYING,
    child_runs,
    search_runs,
)

if TYPE_CHECKING:
    from ablate.report import Row, SweepResults


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
    from ablate.report import SweepResults  # the report's input; its imports stay the report's

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
        description=sweep_description(client, parent.info.run_id),
    )


def logged_spec(client: MlflowClient, parent_run_id: str) -> dict[str, Any]:
    """The spec the parent run logged as ``spec.yaml`` (the file as written, without ``--set``
    overrides), parsed; empty when the run has none or it does not read as a mapping."""
    import tempfile

    import yaml
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_run_id, "spec.yaml", tmp)
            with open(path, encoding="utf-8") as handle:
                spec = yaml.safe_load(handle)
    except (OSError, MlflowException, yaml.YAMLError):
        return {}
    return spec if isinstance(spec, dict) else {}


def sweep_description(client: MlflowClient, parent_run_id: str) -> str:
    """The sweep's ``description`` (the question it asks, which the report opens with): the
    parent run's MLflow description (tag ``TAG_DESCRIPTION``, the resolved spec's, ``--set``
    included), else that of the ``spec.yaml`` it logged (runs of older versions); empty when
    neither has one."""
    description = client.get_run(parent_run_id).data.tags.get(TAG_DESCRIPTION)
    if description is None:
        description = logged_spec(client, parent_run_id).get("description")
    return description.strip() if isinstance(description, str) else ""


def report_components(client: MlflowClient, parent_run_id: str) -> tuple[list[str], list[str]]:
    """``(figures, findings)``: the sweep's own report figures and findings (``report.figures``
    / ``report.findings`` of its spec) as the parent run records them, so that a report is
    rebuilt the way the sweep built it.

    Read from the parent run's tags ``TAG_REPORT_FIGURES`` / ``TAG_REPORT_FINDINGS`` (JSON
    lists, set by ``publish_report`` with the names it built the report with); a sweep that
    ended before its report has none, and then the ``report`` section of its ``spec.yaml`` is
    read instead. Names that are not strings are dropped; none recorded: two empty lists.
    """
    tags = client.get_run(parent_run_id).data.tags
    recorded: list[list[str]] = []
    section: Any = None
    for tag, field_name in ((TAG_REPORT_FIGURES, "figures"), (TAG_REPORT_FINDINGS, "findings")):
        if tag in tags:
            try:
                names = json.loads(tags[tag])
            except ValueError:
                names = []
        else:
            if section is None:
                section = logged_spec(client, parent_run_id).get("report")
            names = section.get(field_name) if isinstance(section, dict) else None
        recorded.append([n for n in names if isinstance(n, str)] if isinstance(names, list) else [])
    return recorded[0], recorded[1]


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
