"""Ablation reports from a results table: findings, the paper's figures, a summary.

Pure: no MLflow, no Ray. ``ablate.tracking.load_results`` reads a sweep back into a
``SweepResults`` (one row per trial, the varying keys, the ranking metric per epoch) and
``ablate.tracking.publish_report`` logs what ``build_report`` writes: ``results.parquet``,
``history.parquet``, the figures (PNG + SVG) laid out like SimCLR's (Chen et al., 2020)
Figures 5, 8 and 9, and ``summary.md`` with the configurations ranked by the sweep's metric and
mode and the paper's qualitative findings checked on this sweep.

Means and figures use comparable trials only (``vocabulary.COMPARABLE_STATUSES``: a trial stopped
early by ASHA has fewer epochs); they are mean ± sample std (``stats.describe``) over seeds, a
seed's trials averaged first where another key varies (which the text and figures name), and
configurations rank by ``table.rank_configurations``, the ranking ``summary.json`` uses too.
``summary.md`` opens with the answer to the sweep's ``description`` (``markdown.headline_lines``);
one replicate tests nothing and claims no tie.

One module per concept: ``table`` (results rows, the Parquet table, grouping, the ranking),
``augmentation`` (op lists and the Figure 5 matrix), ``findings`` (the ``FINDINGS`` registry of
the paper's claims), ``confidence`` (every configuration against the best, key importance,
synergy), ``figures`` (the ``FIGURES`` registry), ``markdown`` (``summary.md``) and ``build``
(``build_report``). A sweep's own figures and findings are named ``module.path:factory``
(``build_report(figures=..., findings=...)``, checked early by ``validate_plugins``).
"""

from ablate.report.augmentation import (
    RIDES_WITH,
    AugmentationMatrix,
    augmentation_matrix,
    paper_ops,
    parse_ops,
)
from ablate.report.build import Report, build_report, component_errors, validate_plugins
from ablate.report.confidence import (
    CONFIGURATION,
    Confidence,
    assess,
    importance_terms,
    interaction_contrasts,
    second_metric,
)
from ablate.report.figures import (
    FIGURES,
    FigureKind,
    choose_figures,
    draw_confidence_figures,
    draw_figures,
    file_stem,
    forest_figure,
    learning_curves_figure,
    plot_augmentation_matrix,
    plot_batch_epochs,
    plot_forest,
    plot_generic,
    plot_head_bars,
    plot_importance,
    plot_interaction,
    plot_learning_curves,
    plot_temperature,
)
from ablate.report.findings import (
    FINDINGS,
    HEAD_ORDER,
    NOT_COVERED,
    Finding,
    FindingCheck,
    check_batch_size,
    check_composition,
    check_crop_color,
    check_findings,
    check_head_order,
    replicate_std,
)
from ablate.report.markdown import (
    SHOWN_COMPARISONS,
    finding_lines,
    format_comparison,
    headline_lines,
    importance_lines,
    stopped_while_improving,
    summary_markdown,
    tied_lines,
    untestable_note,
)
from ablate.report.table import (
    RankedConfiguration,
    Row,
    SweepResults,
    best_configurations,
    comparable,
    configuration_keys,
    configuration_label,
    group_stats,
    labelled_samples,
    rank_configurations,
    seed_group_stats,
    spread_text,
    write_results_table,
)

__all__ = [
    "CONFIGURATION",
    "FIGURES",
    "FINDINGS",
    "HEAD_ORDER",
    "NOT_COVERED",
    "RIDES_WITH",
    "SHOWN_COMPARISONS",
    "AugmentationMatrix",
    "Confidence",
    "FigureKind",
    "Finding",
    "FindingCheck",
    "RankedConfiguration",
    "Report",
    "Row",
    "SweepResults",
    "assess",
    "augmentation_matrix",
    "best_configurations",
    "build_report",
    "check_batch_size",
    "check_composition",
    "check_crop_color",
    "check_findings",
    "check_head_order",
    "choose_figures",
    "comparable",
    "component_errors",
    "configuration_keys",
    "configuration_label",
    "draw_confidence_figures",
    "draw_figures",
    "file_stem",
    "finding_lines",
    "forest_figure",
    "format_comparison",
    "group_stats",
    "headline_lines",
    "importance_lines",
    "importance_terms",
    "interaction_contrasts",
    "labelled_samples",
    "learning_curves_figure",
    "paper_ops",
    "parse_ops",
    "plot_augmentation_matrix",
    "plot_batch_epochs",
    "plot_forest",
    "plot_generic",
    "plot_head_bars",
    "plot_importance",
    "plot_interaction",
    "plot_learning_curves",
    "plot_temperature",
    "rank_configurations",
    "replicate_std",
    "second_metric",
    "seed_group_stats",
    "spread_text",
    "stopped_while_improving",
    "summary_markdown",
    "tied_lines",
    "untestable_note",
    "validate_plugins",
    "write_results_table",
]
