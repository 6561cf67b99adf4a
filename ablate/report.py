"""Ablation reports from a results table: findings, the paper's figures, a summary.

Pure: no MLflow, no Ray. ``ablate.tracking.load_results`` reads a sweep back into a
``SweepResults`` (one row per trial, the varying keys, the ranking metric per epoch) and
``ablate.tracking.publish_report`` logs what ``build_report`` writes: ``results.parquet``,
``history.parquet``, the figures (PNG + SVG) laid out like SimCLR's (Chen et al., 2020)
Figures 5, 8 and 9, and ``summary.md`` with the configurations ranked by the sweep's metric and
mode and the paper's qualitative findings checked on this sweep.

Means and figures use comparable trials only (``vocabulary.COMPARABLE_STATUSES``: a trial stopped
early by ASHA has fewer epochs); they are mean ± sample std (``stats.describe``) over replicates
and any other varying key, and configurations rank by ``stats.rank``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, product
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablate.config import AUGMENTATION_OPS, FIGURE5_OPS
from ablate.stats import GroupStats, describe, rank
from ablate.vocabulary import (
    COMPARABLE_STATUSES,
    COMPUTE_METRICS,
    DEFAULT_RANKING_METRIC,
    FINAL_METRICS,
    OPS_KEY,
    shown_metrics,
)

HEAD_ORDER = ("nonlinear", "linear", "none")  # the paper's Figure 8 finding, best first

Row = dict[str, Any]


# ----------------------------------------------------------------------------- results table


@dataclass
class SweepResults:
    """The trials of one sweep execution: what a report is built from.

    ``rows``: one dict per trial (``trial_id``, ``run_id``, ``run_name``, ``replicate``, ``seed``,
    ``status``, ``status_detail``, ``epochs_planned``, each varying key, and the metrics of
    ``vocabulary.RESULT_METRICS`` and ``COMPUTE_METRICS``, None where absent). ``histories``:
    ``run_id -> [(epoch, value)]`` of the ranking metric, epochs ascending. ``num_classes``, when
    known, hides top-k accuracies with k >= it (always 1.0).
    """

    experiment: str
    parent_run_id: str
    rows: list[Row]
    varying_keys: list[str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    num_classes: int | None = None


def write_results_table(rows: Sequence[Row], path: Path, metadata: dict[str, str]) -> pa.Table:
    """Rows -> Parquet with one type per column (mixed numbers widen to float, else text)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    arrays, fields = [], []
    for name in columns:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool) for v in present):
            kind = pa.bool_()
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            kind = pa.int64()
        elif present and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
        ):
            kind = pa.float64()
            values = [float(v) if v is not None else None for v in values]
        else:
            kind = pa.string()
            values = [None if v is None else v if isinstance(v, str) else str(v) for v in values]
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(name, kind))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))
    pq.write_table(table, path)
    return table


# ----------------------------------------------------------------------------- aggregation


def comparable(rows: Iterable[Row], statuses: Sequence[str] = COMPARABLE_STATUSES) -> list[Row]:
    """The rows whose status is one of ``statuses``."""
    return [row for row in rows if row.get("status") in statuses]


def group_stats(
    rows: Iterable[Row],
    keys: Sequence[str],
    metric: str,
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> dict[tuple[Any, ...], GroupStats]:
    """``GroupStats`` of ``metric`` per combination of ``keys`` (over replicates and the rest),
    for groups with a finite value."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in comparable(rows, statuses):
        if row.get(metric) is None:
            continue
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row[metric])
    described = {key: describe(values) for key, values in groups.items()}
    return {key: value for key, value in described.items() if value is not None}


def _sorted_values(values: Iterable[Any]) -> list[Any]:
    values = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=str)


# ----------------------------------------------------------------------------- Figure 5 data


@dataclass
class AugmentationMatrix:
    """Figure 5: row = first op, column = second op, diagonal = the op alone.

    ``mean``/``std``/``count`` are (n, n) with NaN/0 where the sweep has no trial; ``row_mean``
    (n,) averages the row's cells (the paper's last column).
    """

    ops: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    row_mean: np.ndarray

    def cell(self, first: str, second: str | None = None) -> float:
        i = self.ops.index(first)
        return float(self.mean[i, self.ops.index(second or first)])


def parse_ops(value: Any) -> list[str]:
    """``["crop", "color"]`` or ``"crop+color"`` -> ``["crop", "color"]``."""
    if isinstance(value, str):
        return [op for op in value.split("+") if op and op != "none"]
    return [str(op) for op in value]


def augmentation_matrix(
    rows: Iterable[Row],
    metric: str = DEFAULT_RANKING_METRIC,
    key: str = OPS_KEY,
    statuses: Sequence[str] = COMPARABLE_STATUSES,
) -> AugmentationMatrix:
    """Results table -> the Figure 5 matrix (pure: no I/O). Trials with 1 or 2 ops count."""
    cells: dict[tuple[str, str], list[float]] = {}
    for row in comparable(rows, statuses):
        value, score = row.get(key), row.get(metric)
        if value is None or score is None or not math.isfinite(score):
            continue
        ops = parse_ops(value)
        if len(ops) == 1:
            cells.setdefault((ops[0], ops[0]), []).append(score)
        elif len(ops) == 2:
            cells.setdefault((ops[0], ops[1]), []).append(score)
    present = {op for pair in cells for op in pair}
    order = [op for op in (*FIGURE5_OPS, *AUGMENTATION_OPS) if op in present]
    order = list(dict.fromkeys(order)) + sorted(present - set(order))
    n = len(order)
    mean = np.full((n, n), np.nan)
    std = np.full((n, n), np.nan)
    count = np.zeros((n, n), dtype=np.int64)
    for (first, second), values in cells.items():
        i, j = order.index(first), order.index(second)
        summary = describe(values)
        assert summary is not None
        mean[i, j], count[i, j] = summary.mean, summary.n
        std[i, j] = np.nan if summary.std is None else summary.std
    row_mean = np.full(n, np.nan)
    for i in range(n):
        if np.isfinite(mean[i]).any():
            row_mean[i] = float(np.nanmean(mean[i]))
    return AugmentationMatrix(order, mean, std, count, row_mean)


# ----------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """One qualitative claim of the paper checked on this sweep."""

    claim: str
    source: str
    verdict: str  # "yes" | "no" | "not covered by this sweep"
    evidence: str


NOT_COVERED = "not covered by this sweep"


def replicate_std(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str = DEFAULT_RANKING_METRIC
) -> float | None:
    """Pooled std over replicates of one configuration (sqrt of the mean within-config
    variance): the run-to-run noise, unlike a marginal std that mixes other varying keys."""
    variances = [
        s.std**2 for s in group_stats(rows, list(varying_keys), metric).values() if s.n > 1
    ]
    return math.sqrt(float(np.mean(variances))) if variances else None


def _noise_note(gaps: Iterable[float], noise: float | None) -> str:
    if noise is None:
        return "; no replicates, so no noise estimate"
    note = f"; replicate std {noise:.4f}"
    if any(abs(gap) <= noise for gap in gaps):
        note += " (a gap is within one replicate std: the spread does not separate them)"
    return note


def _held_in_settings(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    key: str,
    metric: str,
    holds: Callable[[list[tuple[Any, GroupStats]]], bool | None],
) -> str:
    """'holds in k of m settings of <other keys>': the claim at matched values of the others."""
    others = [k for k in varying_keys if k != key]
    if not others:
        return ""
    per_setting = group_stats(rows, [*others, key], metric)
    checked = held = 0
    for setting in sorted({k[:-1] for k in per_setting}, key=str):
        series = [(k[-1], s) for k, s in per_setting.items() if k[:-1] == setting]
        verdict = holds(series)
        if verdict is not None:
            checked += 1
            held += verdict
    return f"; holds in {held} of {checked} settings of {', '.join(others)}"


def _not_covered(claim: str, source: str, why: str) -> Finding:
    return Finding(claim, source, NOT_COVERED, why)


def _scores_by_op_set(rows: Sequence[Row], metric: str) -> dict[frozenset[str], list[float]]:
    """Finite ``metric`` values of comparable trials with one op or two distinct ops, keyed by
    the set of ops (both orders of a pair pooled)."""
    scores: dict[frozenset[str], list[float]] = {}
    for row in comparable(rows):
        if row.get(OPS_KEY) is None or row.get(metric) is None:
            continue
        ops = parse_ops(row[OPS_KEY])
        distinct = len(set(ops)) == len(ops)
        if len(ops) in (1, 2) and distinct and math.isfinite(row[metric]):
            scores.setdefault(frozenset(ops), []).append(row[metric])
    return scores


def check_crop_color(
    rows: Sequence[Row],
    varying_keys: Sequence[str] = (OPS_KEY,),
    metric: str = DEFAULT_RANKING_METRIC,
) -> Finding:
    """Figure 5: crop + color distortion is the best pair of two ops (both orders pooled)."""
    claim, source = "crop+color is the best pair of augmentations", "Figure 5"
    if OPS_KEY not in varying_keys:
        return _not_covered(claim, source, "augment.ops does not vary")
    pairs = {ops: v for ops, v in _scores_by_op_set(rows, metric).items() if len(ops) == 2}
    target = frozenset(("crop", "color"))
    if target not in pairs or len(pairs) < 2:
        return _not_covered(claim, source, "needs crop+color and another pair of ops")
    stats = {pair: s for pair, values in pairs.items() if (s := describe(values)) is not None}
    ours = stats[target]
    other_pair, other = max(
        ((p, s) for p, s in stats.items() if p != target), key=lambda item: item[1].mean
    )
    noise = replicate_std(rows, varying_keys, metric)
    evidence = (
        f"{metric}: crop+color {ours}; best other pair {'+'.join(sorted(other_pair))} {other} "
        f"(of {len(pairs) - 1} other pairs){_noise_note([ours.mean - other.mean], noise)}"
    )
    return Finding(claim, source, "yes" if ours.mean > other.mean else "no", evidence)


def check_composition(
    rows: Sequence[Row],
    varying_keys: Sequence[str] = (OPS_KEY,),
    metric: str = DEFAULT_RANKING_METRIC,
) -> Finding:
    """Figure 5: no single transformation suffices; crop + color beats crop alone and color
    alone (both orders of the pair pooled)."""
    claim, source = "crop+color beats each of its ops alone (composition matters)", "Figure 5"
    if OPS_KEY not in varying_keys:
        return _not_covered(claim, source, "augment.ops does not vary")
    scores = _scores_by_op_set(rows, metric)
    target = frozenset(("crop", "color"))
    singles = [op for op in ("crop", "color") if frozenset((op,)) in scores]
    if target not in scores or not singles:
        return _not_covered(claim, source, "needs crop+color and crop or color alone")
    stats = {ops: s for ops, values in scores.items() if (s := describe(values)) is not None}
    ours = stats[target]
    alone = {op: stats[frozenset((op,))] for op in singles}
    gaps = [ours.mean - s.mean for s in alone.values()]
    evidence = f"{metric}: crop+color {ours}; " + "; ".join(
        f"{op} alone {s}" for op, s in alone.items()
    )

    def pair_wins(series: list[tuple[Any, GroupStats]]) -> bool | None:
        grouped: dict[frozenset[str], list[float]] = {}
        for ops, s in series:  # both orders of a pair pooled
            grouped.setdefault(frozenset(parse_ops(ops)), []).append(s.mean)
        by_ops = {ops: float(np.mean(means)) for ops, means in grouped.items()}
        rivals = [
            by_ops[frozenset((op,))] for op in ("crop", "color") if frozenset((op,)) in by_ops
        ]
        return all(by_ops[target] > r for r in rivals) if target in by_ops and rivals else None

    evidence += _held_in_settings(rows, varying_keys, OPS_KEY, metric, pair_wins)
    evidence += _noise_note(gaps, replicate_std(rows, varying_keys, metric))
    return Finding(claim, source, "yes" if all(g > 0 for g in gaps) else "no", evidence)


def _means_decrease_along(
    series: list[tuple[Any, GroupStats]], order: Sequence[Any]
) -> bool | None:
    """Means strictly decrease along ``order`` (values missing from ``series`` skipped)."""
    by_value = dict(series)
    means = [by_value[v].mean for v in order if v in by_value]
    return all(a > b for a, b in pairwise(means)) if len(means) >= 2 else None


def check_head_order(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str = DEFAULT_RANKING_METRIC
) -> Finding:
    """Figure 8: a nonlinear projection head beats a linear one, which beats none."""
    claim, source = "nonlinear > linear > none (projection head)", "Figure 8"
    marginal = group_stats(rows, ["model.head"], metric)
    heads = [h for h in HEAD_ORDER if (h,) in marginal]
    if "model.head" not in varying_keys or len(heads) < 2:
        return _not_covered(claim, source, "needs at least two of the head types")
    means = [marginal[(h,)] for h in heads]
    holds = all(a.mean > b.mean for a, b in pairwise(means))
    evidence = f"{metric}: " + "; ".join(f"{h} {s}" for h, s in zip(heads, means, strict=True))
    evidence += _held_in_settings(
        rows,
        varying_keys,
        "model.head",
        metric,
        lambda series: _means_decrease_along(series, HEAD_ORDER),
    )
    gaps = [a.mean - b.mean for a, b in pairwise(means)]
    evidence += _noise_note(gaps, replicate_std(rows, varying_keys, metric))
    return Finding(claim, source, "yes" if holds else "no", evidence)


def _larger_wins(series: list[tuple[Any, GroupStats]]) -> bool | None:
    if len(series) < 2:
        return None
    ordered = sorted(series, key=lambda item: item[0])
    return ordered[-1][1].mean > ordered[0][1].mean


def check_batch_size(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str = DEFAULT_RANKING_METRIC
) -> Finding:
    """Figure 9: at an equal number of epochs, a larger batch gives a better encoder.

    Yes when, at every epoch budget, the largest batch beats the smallest one; the evidence
    also says whether the means rise monotonically with the batch size.
    """
    claim, source = "larger batches are better at equal epochs", "Figure 9"
    if "train.batch_size" not in varying_keys:
        return _not_covered(claim, source, "train.batch_size does not vary")
    epochs_key = "train.epochs" if "train.epochs" in varying_keys else "epochs_planned"
    stats = group_stats(rows, [epochs_key, "train.batch_size"], metric)
    parts, verdicts, gaps = [], [], []
    for epochs in _sorted_values(key[0] for key in stats):
        sizes = _sorted_values(key[1] for key in stats if key[0] == epochs)
        if len(sizes) < 2:
            continue
        series = [stats[(epochs, size)] for size in sizes]
        verdicts.append(series[-1].mean > series[0].mean)
        gaps.append(series[-1].mean - series[0].mean)
        monotone = all(a.mean < b.mean for a, b in pairwise(series))
        cells = ", ".join(f"bs={size}: {s}" for size, s in zip(sizes, series, strict=True))
        parts.append(f"{epochs} epochs: {cells} [{'' if monotone else 'not '}monotone]")
    if not verdicts:
        return _not_covered(claim, source, "no epoch budget has two batch sizes")
    evidence = f"{metric}: " + "; ".join(parts)
    others = [k for k in varying_keys if k not in ("train.batch_size", "train.epochs")]
    if others:  # the claim at matched values of the other keys, per epoch budget
        keys = [*others, epochs_key, "train.batch_size"]
        evidence += _held_in_settings(rows, keys, "train.batch_size", metric, _larger_wins)
    evidence += _noise_note(gaps, replicate_std(rows, varying_keys, metric))
    return Finding(claim, source, "yes" if all(verdicts) else "no", evidence)


def check_findings(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str = DEFAULT_RANKING_METRIC
) -> list[Finding]:
    """The paper's qualitative findings, each yes / no / not covered, on a results table."""
    return [
        check_crop_color(rows, varying_keys, metric),
        check_composition(rows, varying_keys, metric),
        check_head_order(rows, varying_keys, metric),
        check_batch_size(rows, varying_keys, metric),
    ]


# ----------------------------------------------------------------------------- figures


def _spread(s: GroupStats | None) -> float:
    """An error bar's half-length: the sample std, 0 for no group or a single replicate."""
    return s.std if s is not None and s.std is not None else 0.0


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; Figure.savefig needs no pyplot global state."""
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def plot_augmentation_matrix(matrix: AugmentationMatrix, stem: Path, metric: str) -> list[Path]:
    """Figure 5 heatmap, annotated, the row means as a separate last column."""
    n = len(matrix.ops)
    data = np.concatenate([matrix.mean, matrix.row_mean[:, None]], axis=1)
    fig = Figure(figsize=(1.1 * (n + 1) + 2.0, 0.9 * n + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="Greens", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    finite = data[np.isfinite(data)]
    mid = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i, j in product(range(n), range(n + 1)):
        if not np.isfinite(data[i, j]):
            continue
        text = f"{data[i, j]:.3f}"
        if j < n and matrix.count[i, j] > 1:
            text += f"\n±{matrix.std[i, j]:.3f}"
        color = "white" if data[i, j] > mid else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.axvline(n - 0.5, color="black", linewidth=2)
    ax.set_xticks(range(n + 1), [*matrix.ops, "Average"], rotation=30, ha="right")
    ax.set_yticks(range(n), matrix.ops)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    ax.set_title("Augmentation pairs (diagonal: single op)")
    return _save(fig, stem)


def _grouped_bars(
    ax: Any,
    groups: Sequence[Any],
    series: Sequence[Any],
    stats: Callable[[Any, Any], GroupStats | None],
    series_label: Callable[[Any], str],
) -> None:
    """Bars per ``series`` within each x group, with std error bars."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, item in enumerate(series):
        values = [stats(group, item) for group in groups]
        heights = [s.mean if s else np.nan for s in values]
        errors = [_spread(s) for s in values]
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, heights, width, yerr=errors, capsize=3, label=series_label(item))
    ax.set_xticks(x, [str(g) for g in groups])
    ax.legend(fontsize=8)


def _bar_ylim(ax: Any, rows: Sequence[Row], metric: str) -> None:
    values = [r[metric] for r in comparable(rows) if r.get(metric) is not None]
    values = [v for v in values if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        pad = max((high - low) * 0.5, 0.01)
        ax.set_ylim(max(0.0, low - pad), high + pad)


def plot_head_bars(
    rows: Sequence[Row], varying_keys: Sequence[str], stem: Path, metric: str
) -> list[Path]:
    """Figure 8: head type grouped by projection output dimension."""
    dim_key = "model.out_dim" if "model.out_dim" in varying_keys else None
    stats = group_stats(rows, ["model.head", dim_key or "model.head"], metric)
    heads = [h for h in ("linear", "nonlinear", "none") if any(k[0] == h for k in stats)]
    heads += sorted({k[0] for k in stats} - set(heads), key=str)
    dims = _sorted_values(k[1] for k in stats) if dim_key else ["all"]
    fig = Figure(figsize=(max(5.0, 1.2 * len(dims) + 3), 4))
    ax = fig.add_subplot()
    _grouped_bars(
        ax,
        dims,
        heads,
        lambda dim, head: stats.get((head, dim if dim_key else head)),
        lambda head: str(head),
    )
    ax.set_xlabel("projection output dimensionality" if dim_key else "")
    ax.set_ylabel(metric)
    ax.set_title("Projection head")
    _bar_ylim(ax, rows, metric)
    return _save(fig, stem)


def plot_batch_epochs(
    rows: Sequence[Row], varying_keys: Sequence[str], stem: Path, metric: str
) -> list[Path]:
    """Figure 9: batch sizes grouped by training epochs."""
    epochs_key = "train.epochs" if "train.epochs" in varying_keys else "epochs_planned"
    stats = group_stats(rows, [epochs_key, "train.batch_size"], metric)
    budgets = _sorted_values(k[0] for k in stats)
    sizes = _sorted_values(k[1] for k in stats)
    fig = Figure(figsize=(max(5.0, 1.3 * len(budgets) + 3), 4))
    ax = fig.add_subplot()
    _grouped_bars(ax, budgets, sizes, lambda e, b: stats.get((e, b)), lambda b: f"bs={b}")
    ax.set_xlabel("training epochs")
    ax.set_ylabel(metric)
    ax.set_title("Batch size x training epochs")
    _bar_ylim(ax, rows, metric)
    return _save(fig, stem)


def _line(ax: Any, rows: Sequence[Row], key: str, metric: str, label: str | None = None) -> None:
    stats = group_stats(rows, [key], metric)
    xs = _sorted_values(k[0] for k in stats)
    ys = [stats[(x,)] for x in xs]
    ax.errorbar(
        xs, [s.mean for s in ys], yerr=[_spread(s) for s in ys], marker="o", capsize=3, label=label
    )
    positive = [x for x in xs if x > 0]
    if len(positive) == len(xs) and xs and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(key)


def plot_temperature(rows: Sequence[Row], stem: Path, metric: str) -> list[Path]:
    """The temperature of NT-Xent against the ranking metric (and the contrastive accuracy)."""
    has_contrastive = any(r.get("train/contrastive_top1") is not None for r in comparable(rows))
    fig = Figure(figsize=(9 if has_contrastive else 5, 4))
    axes = fig.subplots(1, 2 if has_contrastive else 1, squeeze=False)[0]
    _line(axes[0], rows, "loss.temperature", metric)
    axes[0].set_ylabel(metric)
    axes[0].set_title("Temperature")
    if has_contrastive:
        _line(axes[1], rows, "loss.temperature", "train/contrastive_top1")
        axes[1].set_ylabel("train/contrastive_top1")
        axes[1].set_title("Contrastive accuracy")
    return _save(fig, stem)


def _numeric(values: Iterable[Any]) -> bool:
    values = list(values)
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def plot_generic(rows: Sequence[Row], keys: Sequence[str], stem: Path, metric: str) -> list[Path]:
    """Any one varying key (line if numeric, else bars) or two (heatmap when both have 3+
    values, else grouped bars), mean ± std over everything else."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    if len(keys) == 1:
        (key,) = keys
        stats = group_stats(rows, [key], metric)
        xs = _sorted_values(k[0] for k in stats)
        if _numeric(xs):
            _line(ax, rows, key, metric)
        else:
            ax.bar(
                range(len(xs)),
                [stats[(x,)].mean for x in xs],
                yerr=[_spread(stats[(x,)]) for x in xs],
                capsize=3,
            )
            ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, ha="right")
            ax.set_xlabel(key)
            _bar_ylim(ax, rows, metric)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {key}")
        return _save(fig, stem)
    first, second = keys
    stats = group_stats(rows, [first, second], metric)
    xs = _sorted_values(k[0] for k in stats)
    ys = _sorted_values(k[1] for k in stats)
    if len(xs) >= 3 and len(ys) >= 3:
        grid = np.full((len(xs), len(ys)), np.nan)
        for (x, y), s in stats.items():
            grid[xs.index(x), ys.index(y)] = s.mean
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=metric)
        for i, j in product(range(len(xs)), range(len(ys))):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7)
        ax.set_yticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xticks(range(len(ys)), [str(y) for y in ys], rotation=30, ha="right")
        ax.set_ylabel(first)
        ax.set_xlabel(second)
    else:
        groups, series, swap = (xs, ys, False) if len(xs) >= len(ys) else (ys, xs, True)
        _grouped_bars(
            ax,
            groups,
            series,
            lambda g, s: stats.get((s, g) if swap else (g, s)),
            lambda s: f"{second if not swap else first}={s}",
        )
        ax.set_xlabel(first if not swap else second)
        ax.set_ylabel(metric)
        _bar_ylim(ax, rows, metric)
    ax.set_title(f"{metric} by {first} x {second}")
    return _save(fig, stem)


_CURVE_STYLE = {
    "completed": {"color": "tab:blue", "linestyle": "-", "marker": None},
    "stopped": {"color": "tab:orange", "linestyle": "--", "marker": "x"},
    "diverged": {"color": "tab:red", "linestyle": ":", "marker": "v"},
    "failed": {"color": "tab:gray", "linestyle": ":", "marker": "s"},
    "interrupted": {"color": "tab:purple", "linestyle": "-.", "marker": "|"},
    "running": {"color": "tab:green", "linestyle": "-", "marker": ">"},
}


def plot_learning_curves(
    rows: Sequence[Row], histories: dict[str, list[tuple[int, float]]], stem: Path, metric: str
) -> list[Path]:
    """The early-stopping picture: metric vs epoch for every trial; stopped trials dashed and
    marked where they stopped, diverged/failed ones marked at their last epoch."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    seen: set[str] = set()
    for row in rows:
        points = histories.get(row["run_id"]) or []
        if not points:
            continue
        style = _CURVE_STYLE.get(row["status"], _CURVE_STYLE["running"])
        epochs, values = zip(*points, strict=True)
        ax.plot(epochs, values, color=style["color"], linestyle=style["linestyle"], alpha=0.8)
        if style["marker"]:
            ax.plot(epochs[-1], values[-1], marker=style["marker"], color=style["color"], ms=8)
        seen.add(row["status"])
    handles = [
        Line2D([], [], color=s["color"], linestyle=s["linestyle"], marker=s["marker"], label=name)
        for name, s in _CURVE_STYLE.items()
        if name in seen
    ]
    if handles:
        ax.legend(handles=handles, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title("Every trial by epoch (stopped early: dashed, x)")
    return _save(fig, stem)


def choose_figures(
    varying_keys: Sequence[str], rows: Sequence[Row], metric: str = DEFAULT_RANKING_METRIC
) -> list[tuple[str, tuple[str, ...]]]:
    """``[(figure name, keys)]`` to draw for the keys this sweep varies: the paper's figures
    for the keys they cover, a generic plot for the rest, and the learning curves."""
    chosen: list[tuple[str, tuple[str, ...]]] = []
    covered: set[str] = set()
    keys = list(varying_keys)
    if OPS_KEY in keys and augmentation_matrix(rows, metric).ops:
        chosen.append(("augmentation_matrix", (OPS_KEY,)))
        covered.add(OPS_KEY)
    if "model.head" in keys:
        chosen.append(("projection_head", ("model.head", "model.out_dim")))
        covered.update(("model.head", "model.out_dim"))
    if "train.batch_size" in keys:
        chosen.append(("batch_size_epochs", ("train.batch_size", "train.epochs")))
        covered.update(("train.batch_size", "train.epochs"))
    if "loss.temperature" in keys:
        chosen.append(("temperature", ("loss.temperature",)))
        covered.add("loss.temperature")
    rest = [k for k in keys if k not in covered]
    if len(keys) in (1, 2) and rest:
        chosen.append(("by_" + "_x_".join(keys), tuple(keys)))
    else:
        chosen.extend(("by_" + key, (key,)) for key in rest)
    chosen.append(("learning_curves", ()))
    return chosen


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def draw_figures(results: SweepResults, fig_dir: Path, metric: str) -> list[Path]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    rows, keys = results.rows, results.varying_keys
    paths: list[Path] = []
    has_data = bool(group_stats(rows, [], metric))  # a completed trial carries the metric
    for name, fig_keys in choose_figures(keys, rows, metric):
        stem = fig_dir / _file_stem(name)
        if name == "learning_curves":
            if any(results.histories.values()):
                paths += plot_learning_curves(rows, results.histories, stem, metric)
        elif not has_data:
            continue
        elif name == "augmentation_matrix":
            paths += plot_augmentation_matrix(augmentation_matrix(rows, metric), stem, metric)
        elif name == "projection_head":
            paths += plot_head_bars(rows, keys, stem, metric)
        elif name == "batch_size_epochs":
            paths += plot_batch_epochs(rows, keys, stem, metric)
        elif name == "temperature":
            paths += plot_temperature(rows, stem, metric)
        else:
            paths += plot_generic(rows, list(fig_keys), stem, metric)
    return paths


# ----------------------------------------------------------------------------- summary


def _fmt(s: GroupStats | None) -> str:
    if not s:
        return "—"
    # One replicate has no spread: say so rather than print a misleading ± 0.
    return f"{s.mean:.4f}" if s.std is None else f"{s.mean:.4f} ± {s.std:.4f}"


def _cell(value: Any) -> str:
    """A Markdown table cell: run names contain ``|``, which would split the row."""
    return str(value).replace("|", "\\|")


def best_configurations(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    metric: str,
    mode: str = "max",
    top: int = 10,
    also: Sequence[str] = (),
) -> list[tuple[tuple[Any, ...], dict[str, GroupStats | None]]]:
    """The ``top`` configurations (values of ``varying_keys``) by ``stats.rank``: mean
    ``metric`` of comparable replicates in the direction of ``mode``, configurations without
    a comparable value last. Each comes with the ``GroupStats`` of ``metric`` and ``also``.
    Raises ValueError for a mode other than ``"max"`` / ``"min"``.
    """
    members: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        members.setdefault(tuple(row.get(k) for k in varying_keys), [])
    for row in comparable(rows):
        members[tuple(row.get(k) for k in varying_keys)].append(row)
    measured = {key: describe(r.get(metric) for r in group) for key, group in members.items()}
    return [
        (key, {m: describe(r.get(m) for r in members[key]) for m in dict.fromkeys((metric, *also))})
        for key in rank(measured, mode)[:top]
    ]


def stopped_while_improving(
    results: SweepResults, metric: str
) -> list[tuple[Row, int, float, float | None]]:
    """Stopped trials whose ``metric`` (an accuracy: higher is better) rose at their last
    evaluation: ``(row, stop epoch, last gain, best completed value at that epoch)``.

    Early rungs favour fast starters; a trial still climbing when it was stopped may have been
    a slow starter rather than a weak configuration.
    """
    completed_at: dict[int, list[float]] = {}
    for row in results.rows:
        if row["status"] == "completed":
            for epoch, value in results.histories.get(row["run_id"], []):
                completed_at.setdefault(epoch, []).append(value)
    found = []
    for row in results.rows:
        points = results.histories.get(row["run_id"]) or []
        if row["status"] != "stopped" or len(points) < 2:
            continue
        (_, before), (epoch, last) = points[-2], points[-1]
        if last > before:
            leaders = completed_at.get(epoch)
            found.append((row, epoch, last - before, max(leaders) if leaders else None))
    return found


def _early_stopping_lines(results: SweepResults, metric: str) -> list[str]:
    stopped = [r for r in results.rows if r["status"] == "stopped"]
    climbing = stopped_while_improving(results, metric)
    if not stopped:
        return []
    first_only = [r for r in stopped if len(results.histories.get(r["run_id"]) or []) < 2]
    lines = [
        "",
        "## Early stopping",
        "",
        f"Trials stopped early: {len(stopped)}. Still improving at their last evaluation "
        f"(`{metric}` rose): {len(climbing)}. Stopped at their first evaluation, before any "
        f"trend showed: {len(first_only)}.",
    ]
    if climbing or first_only:
        lines += [
            "",
            "Early rungs favour fast starters: a configuration that learns slowly at first (as "
            "crop + colour does at small scale) can be stopped before it overtakes. Compare the "
            "learning curves, or raise `scheduler.grace_period`.",
        ]
    if climbing:
        lines += [
            "",
            f"| run | stopped at epoch | `{metric}` | last gain | best completed trial then |",
            "|---|---|---|---|---|",
        ]
        for row, epoch, gain, leader in climbing:
            value = dict(results.histories[row["run_id"]])[epoch]
            leader_text = f"{leader:.4f}" if leader is not None else "-"
            lines.append(
                f"| {_cell(row['run_name'])} | {epoch} | {value:.4f} | +{gain:.4f} | "
                f"{leader_text} |"
            )
    return lines


def summary_markdown(
    results: SweepResults,
    findings: Sequence[Finding],
    figures: Sequence[Path],
    metric: str,
    mode: str = "max",
) -> str:
    """``summary.md``: trial counts, the configurations ranked by ``metric`` and ``mode`` (the
    sweep's ranking, as ``summary.json``), the findings, early stopping, trials that did not
    complete, compute, figures."""
    rows, keys = results.rows, results.varying_keys
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    better = "higher" if mode == "max" else "lower"
    lines = [
        f"# Ablation report: {results.experiment}",
        "",
        f"Parent run `{results.parent_run_id}`; {len(rows)} trials: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        "",
        f"Varying: {', '.join(f'`{k}`' for k in keys) or 'nothing'}. Ranking metric: `{metric}` "
        f"(last epoch, validation split; {better} is better). Means are over completed trials: "
        "mean ± sample std over replicates (n trials).",
        "",
        "## Best configurations",
        "",
    ]
    shown = [
        m
        for m in shown_metrics(FINAL_METRICS, results.num_classes)
        if m != metric and any(r.get(m) is not None for r in comparable(rows))
    ]
    best = best_configurations(rows, keys, metric, mode, also=shown)
    if any(stats[metric] for _, stats in best):
        header = ["rank", *(f"`{k}`" for k in keys), "n", f"`{metric}`", *(f"`{m}`" for m in shown)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for place, (key, stats) in enumerate(best, 1):
            n = stats[metric].n if stats[metric] else 0
            cells = [str(place), *(_cell(v) for v in key), str(n), _fmt(stats[metric])]
            cells += [_fmt(stats.get(m)) for m in shown]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append(f"No completed trial reported `{metric}`.")
    lines += ["", "## The paper's findings on this sweep", ""]
    lines += ["| finding | paper | verdict | evidence |", "|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f.claim} | {f.source} | **{f.verdict}** | {f.evidence} |")
    lines += _early_stopping_lines(results, metric)
    others = [r for r in rows if r["status"] != "completed"]
    if others:
        lines += ["", "## Trials that did not complete", "", "| run | status | detail |"]
        lines.append("|---|---|---|")
        for r in others:
            cells = (r["run_name"], r["status"], r["status_detail"])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    totals = {
        m: sum(r[m] for r in rows if r.get(m) is not None and math.isfinite(r[m]))
        for m in COMPUTE_METRICS
    }
    lines += [
        "",
        "## Compute",
        "",
        f"{int(totals['compute/epochs_run'])} epochs in all; "
        f"{totals['compute/wall_seconds']:.1f} trial wall seconds; "
        f"{totals['compute/cpu_seconds']:.1f} CPU seconds and "
        f"{totals['compute/gpu_seconds']:.1f} GPU seconds reserved.",
    ]
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- report


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


def build_report(
    results: SweepResults,
    out_dir: str | Path,
    *,
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Report:
    """Write the report of ``results`` into ``out_dir``: ``results.parquet`` (a row per
    trial), ``history.parquet`` (``results.histories``, which hold ``metric``), ``figures/``
    and ``summary.md`` ranked by ``metric`` in the direction of ``mode``.

    Raises ValueError for a mode other than ``"max"`` / ``"min"`` (before writing anything).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {
        "experiment": results.experiment,
        "parent_run_id": results.parent_run_id,
        "ranking_metric": metric,
        "ranking_mode": mode,
        "varying_keys": json.dumps(results.varying_keys),
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
    figures = draw_figures(results, out / "figures", metric)
    findings = check_findings(results.rows, results.varying_keys, metric)
    summary_path = out / "summary.md"
    text = summary_markdown(results, findings, figures, metric, mode)
    summary_path.write_text(text, encoding="utf-8")
    return Report(out, results_path, history_path, summary_path, figures, findings, results)
