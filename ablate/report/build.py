"""``build_report``: write a sweep's report from its results table.

Pure: no MLflow, no Ray. ``ablate.tracking`` reads a sweep back into a ``SweepResults`` and
logs what ``build_report`` writes into the sweep's parent run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ablate.report.confidence import Confidence, assess
from ablate.report.figures import FIGURES, draw_confidence_figures, draw_figures
from ablate.report.findings import FINDINGS, Finding, check_findings
from ablate.report.markdown import summary_markdown
from ablate.report.table import Row, SweepResults, write_results_table
from ablate.stats import improvement_sign
from ablate.vocabulary import DEFAULT_RANKING_METRIC


@dataclass
class Report:
    """What ``build_report`` wrote, and what it was built from."""

    out_dir: Path
    results_path: Path
    history_path: Path
    summary_path: Path
    figures: list[Path]
    findings: list[Finding]
    results: SweepResults
    comparisons_path: Path | None = None
    confidence: Confidence | None = None
    #: The user's figures and findings that raised (``figure `a.b:f` raised ValueError: ...``),
    #: left out of the report and named in ``summary.md``.
    failed: list[str] = field(default_factory=list)


def build_report(
    results: SweepResults,
    out_dir: str | Path,
    *,
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
    figures: Sequence[str] = (),
    findings: Sequence[str] = (),
) -> Report:
    """Write the report of ``results`` into ``out_dir``: ``results.parquet`` (a row per
    trial), ``history.parquet`` (``results.histories``, which hold ``metric``),
    ``comparisons.parquet`` (every configuration against the best: ``Confidence.
    comparison_rows``), ``figures/`` (with ``comparisons_forest`` and ``importance``) and
    ``summary.md`` ranked by ``metric`` in the direction of ``mode``.

    ``figures`` / ``findings``: a user's own figures and findings beside the registered ones,
    named ``module.path:factory`` (``validate_plugins``). One of them that raises while the
    report is built is left out, and named with its error in ``summary.md`` and
    ``Report.failed``: the rest of the report is written.

    Raises ValueError for a mode other than ``"max"`` / ``"min"`` and the errors of
    ``validate_plugins`` (before writing anything).
    """
    improvement_sign(mode)  # validates it
    validate_plugins(figures, findings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "experiment": results.experiment,
        "parent_run_id": results.parent_run_id,
        "ranking_metric": metric,
        "ranking_mode": mode,
        "varying_keys": json.dumps(results.varying_keys),
        "description": results.description,
    }
    results_path = out / "results.parquet"
    write_results_table(results.rows, results_path, metadata)
    history_path = out / "history.parquet"
    history_rows: list[Row] = [
        {"run_id": run_id, "epoch": epoch, "metric": metric, "value": value}
        for run_id, points in results.histories.items()
        for epoch, value in points
    ]
    pq.write_table(
        pa.Table.from_pylist(
            history_rows,
            schema=pa.schema(
                [
                    ("run_id", pa.string()),
                    ("epoch", pa.int64()),
                    ("metric", pa.string()),
                    ("value", pa.float64()),
                ],
                metadata=metadata,
            ),
        ),
        history_path,
    )
    confidence = assess(results.rows, results.varying_keys, metric, mode)
    comparisons_path = out / "comparisons.parquet"
    write_results_table(confidence.comparison_rows(), comparisons_path, metadata)
    failed: list[str] = []
    drawn = draw_figures(results, out / "figures", metric, figures, failed)
    drawn += draw_confidence_figures(confidence, out / "figures")
    checked = check_findings(results.rows, results.varying_keys, metric, mode, findings, failed)
    summary_path = out / "summary.md"
    text = summary_markdown(results, checked, drawn, metric, mode, confidence, failed)
    summary_path.write_text(text, encoding="utf-8")
    return Report(
        out,
        results_path,
        history_path,
        summary_path,
        drawn,
        checked,
        results,
        comparisons_path,
        confidence,
        failed,
    )


def component_errors(
    figures: Sequence[str] = (), findings: Sequence[str] = ()
) -> Iterator[tuple[str, int, str, ValueError | TypeError]]:
    """Each report figure or finding name that is not usable, as ``(kind, index, name,
    error)``: ``kind`` ``"figure"`` or ``"finding"``, ``index`` its place in its list. A usable
    name is a registered one (``FIGURES`` / ``FINDINGS``) or a ``module.path:factory`` that
    imports and fits (a ``FigureKind`` or a function ``(results, metric) -> Figure | None``; a
    function ``(rows, varying_keys, metric, mode) -> Finding``). ``error`` is a
    ``registry.UnknownComponentError`` (with did-you-mean) for an unknown name, a
    ``registry.PluginImportError`` for a plugin that does not import, a TypeError for one
    that does not fit; all but TypeError are ValueErrors."""
    for kind, registry, names in (("figure", FIGURES, figures), ("finding", FINDINGS, findings)):
        for index, name in enumerate(names):
            try:
                registry.validate(name)
            except (ValueError, TypeError) as error:
                yield kind, index, name, error


def validate_plugins(figures: Sequence[str] = (), findings: Sequence[str] = ()) -> None:
    """Check a sweep's own report figures and findings before anything runs; raises the
    first ``component_errors`` error."""
    for _kind, _index, _name, error in component_errors(figures, findings):
        raise error
