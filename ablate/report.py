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
from dataclasses import dataclass, field, replace
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
from ablate.stats import (
    CONFIDENCE,
    BestFamily,
    Comparison,
    GroupStats,
    KeyImportance,
    Synergy,
    Verdict,
    compare,
    describe,
    holm_family,
    improvement_sign,
    key_importance,
    rank,
    samples_by_config,
    synergy,
    verdict,
    versus_best,
)
from ablate.vocabulary import (
    COMPARABLE_STATUSES,
    COMPUTE_METRICS,
    DEFAULT_RANKING_METRIC,
    FINAL_METRICS,
    OPS_KEY,
    format_value,
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

NOT_COVERED = "not covered by this sweep"
#: Ops that ride with another under the paper's names: its "crop" is a random crop and resize
#: *with a random horizontal flip* (Chen et al., 2020, Appendix A), so [crop, flip] is its crop.
RIDES_WITH: dict[str, str] = {"flip": "crop"}


@dataclass
class Finding:
    """One qualitative claim of the paper checked on this sweep.

    ``verdict``: ``stats.Verdict``'s phrase -- ``holds``, ``contradicted``, ``undecided (add k
    seeds)``, ``untestable (one replicate)`` -- or ``NOT_COVERED``; ``label`` its first word
    (``"not covered"`` for ``NOT_COVERED``). ``evidence``: the means of what was compared and
    what rode along. ``comparisons``: ``{"A − B": stats.Comparison}``, one Holm family, the
    verdict's basis (differences in the metric's units, 95% CIs, paired by seed). ``trials``:
    run names of the trials used.
    """

    claim: str
    source: str
    verdict: str
    evidence: str
    label: str = "not covered"
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    trials: list[str] = field(default_factory=list)


def replicate_std(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str = DEFAULT_RANKING_METRIC
) -> float | None:
    """Pooled std over replicates of one configuration (sqrt of the mean within-config
    variance): the run-to-run noise, unlike a marginal std that mixes other varying keys."""
    variances = [
        s.std**2 for s in group_stats(rows, list(varying_keys), metric).values() if s.n > 1
    ]
    return math.sqrt(float(np.mean(variances))) if variances else None


def _held_in_settings(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    key: str,
    metric: str,
    holds: Callable[[list[tuple[Any, GroupStats]]], bool | None],
) -> str:
    """'means agree in k of m settings of <other keys>': the claim on the means at matched
    values of the others (descriptive; the verdict pools them per seed)."""
    others = [k for k in varying_keys if k != key]
    if not others:
        return ""
    per_setting = group_stats(rows, [*others, key], metric)
    checked = held = 0
    for setting in sorted({k[:-1] for k in per_setting}, key=str):
        series = [(k[-1], s) for k, s in per_setting.items() if k[:-1] == setting]
        verdict_ = holds(series)
        if verdict_ is not None:
            checked += 1
            held += verdict_
    return f"; the means agree in {held} of {checked} settings of {', '.join(others)}"


def _not_covered(claim: str, source: str, why: str) -> Finding:
    return Finding(claim, source, NOT_COVERED, why)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _better(mode: str) -> str:
    """The ``stats.verdict`` claim "A is better than B" under ``mode``."""
    return "greater" if mode == "max" else "less"


def _run_name(row: Row) -> str:
    return str(row.get("run_name") or row.get("trial_id") or "?")


def labelled_samples(
    rows: Sequence[Row], label: Callable[[Row], Any], metric: str
) -> tuple[dict[Any, dict[Any, float]], dict[Any, list[str]]]:
    """``({label: {seed: value}}, {label: run names})`` of the comparable rows with a finite
    ``metric`` whose ``label(row)`` is not None (``stats.samples_by_config`` on that label).

    Pairs by ``seed`` when every used row has one, else by ``replicate``; without either each
    row is its own pairing id, so comparisons fall back to Welch's unpaired t.
    """
    used = [r for r in comparable(rows) if _is_finite(r.get(metric)) and label(r) is not None]
    pair_by = next(
        (k for k in ("seed", "replicate") if all(r.get(k) is not None for r in used)), None
    )
    keyed = [
        {**r, "_label": label(r), "_pair": r[pair_by] if pair_by else index}
        for index, r in enumerate(used)
    ]
    table = {k[0]: v for k, v in samples_by_config(keyed, ["_label"], metric, "_pair").items()}
    names: dict[Any, list[str]] = {}
    for r in keyed:
        names.setdefault(r["_label"], []).append(_run_name(r))
    return table, names


def format_comparison(name: str, c: Comparison) -> str:
    """``A − B: +0.0990 [95% CI +0.0812, +0.1168], Holm p 0.0030 (paired t, 3 seeds)``."""
    if not c.testable:
        seeds = "1 seed" if c.n <= 1 else f"{c.n_a} vs {c.n_b} trials"
        return f"{name}: {c.diff:+.4f} (no CI: {seeds})"
    p_name = f"Holm p (of {c.family_size})" if c.family_size > 1 else "p"
    n = f"{c.n} seeds" if c.paired else f"{c.n_a} vs {c.n_b} trials"
    return (
        f"{name}: {c.diff:+.4f} [{CONFIDENCE:.0%} CI {c.ci_low:+.4f}, {c.ci_high:+.4f}], "
        f"{p_name} {_p(c.p_reported)} ({c.test}, {n})"
    )


def _all_hold(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict of a conjunction of claims: contradicted if one is, holds if all do,
    untestable if all are; else undecided with the most seeds any part needs."""
    labels = [v.label for v in verdicts]
    if "contradicted" in labels:
        return Verdict("contradicted")
    if all(label == "holds" for label in labels):
        return Verdict("holds")
    if all(label == "untestable" for label in labels):
        return verdicts[0]
    undecided = [v for v in verdicts if v.label == "undecided"]
    if not undecided:
        return Verdict("undecided", None, "part of it has one replicate")
    if all(v.add_seeds is not None for v in undecided):
        return Verdict("undecided", max(v.add_seeds for v in undecided))
    return next(v for v in undecided if v.add_seeds is None)


def _judged(
    claim: str,
    source: str,
    comparisons: dict[str, Comparison],
    claims: dict[str, str],
    evidence: str,
    trials: Iterable[str],
    adjusted: bool = False,
) -> Finding:
    """A finding whose ``comparisons`` (one Holm family, adjusted here unless ``adjusted``)
    must each support its claim in ``claims`` ("greater" / "less")."""
    family = comparisons if adjusted else holm_family(comparisons)
    overall = _all_hold([verdict(c, claims[name]) for name, c in family.items()])
    return Finding(
        claim,
        source,
        str(overall),
        evidence,
        overall.label,
        family,
        list(dict.fromkeys(trials)),
    )


def paper_ops(value: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """An op list by what the paper's names mean: ``(its ops in order without riders, the
    riders)``; ``RIDES_WITH`` names them (``[crop, flip, color]`` -> ``((crop, color),
    {flip})``: the paper's crop + colour)."""
    ops = parse_ops(value)
    riders = frozenset(op for op in ops if RIDES_WITH.get(op) in ops)
    return tuple(op for op in ops if op not in riders), riders


def _op_meanings(rows: Sequence[Row]) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
    """``{id(row): (set of its paper ops, riders)}`` of the rows with ``augment.ops``."""
    meanings = {}
    for row in rows:
        if row.get(OPS_KEY) is not None:
            ops, riders = paper_ops(row[OPS_KEY])
            meanings[id(row)] = (frozenset(ops), riders)
    return meanings


def _rider_note(names: Iterable[str], rows: Sequence[Row], riders: Iterable[str] = ()) -> str:
    """What rode along in the trials used: flip with crop (as in the paper), ``riders`` in
    every configuration compared."""
    used = set(names)
    absorbed = sorted(
        {
            f"{op} rides with {RIDES_WITH[op]}"
            for r in rows
            if _run_name(r) in used and r.get(OPS_KEY) is not None
            for op in paper_ops(r[OPS_KEY])[1]
        }
    )
    notes = [f"{note} (as in the paper)" for note in absorbed]
    if riders:
        notes.append(f"{'+'.join(sorted(riders))} rides along in every configuration compared")
    return "; " + "; ".join(notes) if notes else ""


def _means(table: dict[Any, dict[Any, float]], labels: Iterable[Any]) -> str:
    return "; ".join(f"{label} {describe(table[label].values())}" for label in labels)


def check_crop_color(
    rows: Sequence[Row],
    varying_keys: Sequence[str] = (OPS_KEY,),
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Finding:
    """Figure 5: crop + color distortion is the best pair of two ops (both orders pooled; ops
    by their paper meaning, ``paper_ops``): ``stats.versus_best`` over the pairs; holds when
    crop+color is the best and beats every other pair (Holm), contradicted when another pair
    beats it."""
    claim, source = "crop+color is the best pair of augmentations", "Figure 5"
    if OPS_KEY not in varying_keys:
        return _not_covered(claim, source, "augment.ops does not vary")
    meanings = _op_meanings(rows)

    target = "crop+color"

    def pair(row: Row) -> str | None:
        ops = meanings.get(id(row), (frozenset(), frozenset()))[0]
        if len(ops) != 2:
            return None
        return target if ops == {"crop", "color"} else "+".join(sorted(ops))

    table, names = labelled_samples(rows, pair, metric)
    if target not in table or len(table) < 2:
        return _not_covered(claim, source, "needs crop+color and another pair of ops")
    best = versus_best(table, mode)
    others = [k for k in rank({k: describe(v.values()) for k, v in table.items()}, mode)]
    others = [k for k in others if k != target]
    if best.best == target:
        comparisons = {f"{other} − {target}": best.comparisons[other] for other in others}
        claims = dict.fromkeys(comparisons, "less" if mode == "max" else "greater")
    else:
        comparisons = {f"{target} − {best.best}": best.comparisons[target]}
        claims = dict.fromkeys(comparisons, _better(mode))
    trials = [n for k in table for n in names[k]]
    evidence = (
        f"{metric}: {_means(table, [target, others[0]])} (best other of {len(others)} pairs)"
        + _rider_note(trials, rows)
    )
    # Already one Holm family: every pair against the best pair (closest first).
    return _judged(claim, source, comparisons, claims, evidence, trials, adjusted=True)


def check_composition(
    rows: Sequence[Row],
    varying_keys: Sequence[str] = (OPS_KEY,),
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Finding:
    """Figure 5: no single transformation suffices; crop + color beats crop alone and color
    alone. Ops by their paper meaning (``paper_ops``: ``[crop, flip]`` is crop,
    ``[crop, flip, color]`` crop + colour); both orders of the pair pooled; other ops that ride
    along must be the same in every configuration compared (then they are stated). Each
    comparison is paired by seed (other varying keys averaged per seed), Holm over the two."""
    claim, source = "crop+color beats each of its ops alone (composition matters)", "Figure 5"
    if OPS_KEY not in varying_keys:
        return _not_covered(claim, source, "augment.ops does not vary")
    meanings = _op_meanings(rows)
    core = frozenset(("crop", "color"))
    present: dict[frozenset[str], int] = {}
    for row in comparable(rows):
        if id(row) in meanings and _is_finite(row.get(metric)):
            ops = meanings[id(row)][0]
            present[ops] = present.get(ops, 0) + 1
    # Riders: ops beside crop/color shared by every configuration compared; none preferred.
    candidates = sorted(
        {ops - core for ops in present}, key=lambda e: (len(e), -present.get(core | e, 0))
    )
    riders = next(
        (
            e
            for e in candidates
            if core | e in present and any(frozenset((op,)) | e in present for op in core)
        ),
        None,
    )
    if riders is None:
        return _not_covered(claim, source, "needs crop+color and crop or color alone")
    labels = {core | riders: "crop+color", frozenset(("crop",)) | riders: "crop"}
    labels[frozenset(("color",)) | riders] = "color"

    def label(row: Row) -> str | None:
        return labels.get(meanings.get(id(row), (None,))[0])

    table, names = labelled_samples(rows, label, metric)
    singles = [op for op in ("crop", "color") if op in table]
    comparisons = {f"crop+color − {op}": compare(table["crop+color"], table[op]) for op in singles}
    trials = [n for k in ("crop+color", *singles) for n in names[k]]
    evidence = f"{metric}: {_means(table, ['crop+color', *singles])}"

    def pair_wins(series: list[tuple[Any, GroupStats]]) -> bool | None:
        by_ops: dict[str, list[float]] = {}
        for ops, s in series:  # both orders of a pair pooled
            named = labels.get(frozenset(paper_ops(ops)[0]))
            if named is not None:
                by_ops.setdefault(named, []).append(s.mean)
        means = {k: float(np.mean(v)) for k, v in by_ops.items()}
        rivals = [means[op] for op in ("crop", "color") if op in means]
        if "crop+color" not in means or not rivals:
            return None
        return all((means["crop+color"] > r) == (mode == "max") for r in rivals)

    evidence += _held_in_settings(rows, varying_keys, OPS_KEY, metric, pair_wins)
    evidence += _rider_note(trials, rows, riders)
    claims = dict.fromkeys(comparisons, _better(mode))
    return _judged(claim, source, comparisons, claims, evidence, trials)


def _means_decrease_along(
    series: list[tuple[Any, GroupStats]], order: Sequence[Any]
) -> bool | None:
    """Means strictly decrease along ``order`` (values missing from ``series`` skipped)."""
    by_value = dict(series)
    means = [by_value[v].mean for v in order if v in by_value]
    return all(a > b for a, b in pairwise(means)) if len(means) >= 2 else None


def check_head_order(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Finding:
    """Figure 8: a nonlinear projection head beats a linear one, which beats none. Each
    adjacent pair of the heads present is compared, paired by seed (other varying keys
    averaged per seed), Holm over the pairs."""
    claim, source = "nonlinear > linear > none (projection head)", "Figure 8"
    if "model.head" not in varying_keys:
        return _not_covered(claim, source, "model.head does not vary")
    table, names = labelled_samples(
        rows, lambda r: r.get("model.head") if r.get("model.head") in HEAD_ORDER else None, metric
    )
    heads = [h for h in HEAD_ORDER if h in table]
    if len(heads) < 2:
        return _not_covered(claim, source, "needs at least two of the head types")
    comparisons = {f"{a} − {b}": compare(table[a], table[b]) for a, b in pairwise(heads)}
    evidence = f"{metric}: {_means(table, heads)}"
    evidence += _held_in_settings(
        rows,
        varying_keys,
        "model.head",
        metric,
        lambda series: _means_decrease_along(series, HEAD_ORDER),
    )
    trials = [n for h in heads for n in names[h]]
    claims = dict.fromkeys(comparisons, _better(mode))
    return _judged(claim, source, comparisons, claims, evidence, trials)


def check_batch_size(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Finding:
    """Figure 9: at an equal number of epochs, a larger batch gives a better encoder.

    At every epoch budget with two batch sizes, the largest batch against the smallest, paired
    by seed (other varying keys averaged per seed), Holm over the budgets; the evidence says
    whether the means rise monotonically with the batch size.
    """
    claim, source = "larger batches are better at equal epochs", "Figure 9"
    if "train.batch_size" not in varying_keys:
        return _not_covered(claim, source, "train.batch_size does not vary")
    epochs_key = "train.epochs" if "train.epochs" in varying_keys else "epochs_planned"

    def budget_and_size(row: Row) -> tuple[Any, Any] | None:
        key = (row.get(epochs_key), row.get("train.batch_size"))
        return None if None in key else key

    table, names = labelled_samples(rows, budget_and_size, metric)
    comparisons: dict[str, Comparison] = {}
    parts, trials = [], []
    for epochs in _sorted_values(key[0] for key in table):
        sizes = _sorted_values(key[1] for key in table if key[0] == epochs)
        if len(sizes) < 2:
            continue
        series = [describe(table[(epochs, size)].values()) for size in sizes]
        monotone = all(a.mean < b.mean for a, b in pairwise(series))
        cells = ", ".join(f"bs={size}: {s}" for size, s in zip(sizes, series, strict=True))
        parts.append(f"{epochs} epochs: {cells} [{'' if monotone else 'not '}monotone]")
        name = f"bs={sizes[-1]} − bs={sizes[0]} at {epochs} epochs"
        comparisons[name] = compare(table[(epochs, sizes[-1])], table[(epochs, sizes[0])])
        trials += [n for size in sizes for n in names[(epochs, size)]]
    if not comparisons:
        return _not_covered(claim, source, "no epoch budget has two batch sizes")
    evidence = f"{metric}: " + "; ".join(parts)
    others = [k for k in varying_keys if k not in ("train.batch_size", "train.epochs")]
    if others:  # the claim at matched values of the other keys, per epoch budget
        keys = [*others, epochs_key, "train.batch_size"]
        evidence += _held_in_settings(rows, keys, "train.batch_size", metric, _larger_wins)
    claims = dict.fromkeys(comparisons, _better(mode))
    return _judged(claim, source, comparisons, claims, evidence, trials)


def _larger_wins(series: list[tuple[Any, GroupStats]]) -> bool | None:
    if len(series) < 2:
        return None
    ordered = sorted(series, key=lambda item: item[0])
    return ordered[-1][1].mean > ordered[0][1].mean


def check_findings(
    rows: Sequence[Row],
    varying_keys: Sequence[str],
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> list[Finding]:
    """The paper's qualitative findings on a results table, each with its comparisons and a
    verdict: holds / contradicted / undecided (add k seeds) / untestable / not covered."""
    return [
        check_crop_color(rows, varying_keys, metric, mode),
        check_composition(rows, varying_keys, metric, mode),
        check_head_order(rows, varying_keys, metric, mode),
        check_batch_size(rows, varying_keys, metric, mode),
    ]


# ----------------------------------------------------------------------------- confidence


#: Key of a configuration's label in the comparisons table.
CONFIGURATION = "configuration"


def configuration_keys(varying_keys: Sequence[str], rows: Sequence[Row] = ()) -> list[str]:
    """The keys that make a configuration: the varying keys except ``train.seed`` (seeds are
    the replicates every configuration is paired by) and, given the ``rows``, except keys that
    take one value in all of them (a grid of one value names no difference)."""
    keys = [k for k in varying_keys if k != "train.seed"]
    if not rows:
        return keys
    return [k for k in keys if len({format_value(r.get(k)) for r in rows}) > 1]


def configuration_label(values: Sequence[Any], keys: Sequence[str]) -> str:
    """``crop+color`` for one key, ``augment.ops=crop+color, model.head=linear`` for more,
    ``all trials`` for none."""
    if not keys:
        return "all trials"
    if len(keys) == 1:
        return format_value(values[0])
    return ", ".join(f"{k}={format_value(v)}" for k, v in zip(keys, values, strict=True))


@dataclass
class Confidence:
    """How sure the sweep is: every configuration against the best, the importance of each
    swept key, and the synergy of each op composition (``assess``).

    ``keys``: the configuration keys; ``table``: ``{configuration label: {seed: value}}``;
    ``best``: ``stats.versus_best`` of it (None without a finite value); ``importance``:
    ``stats.key_importance`` (None without keys or values); ``synergies``: ``{"a+b":
    (stats.Synergy, Verdict)}``, Holm over all compositions; ``replicates``: the most
    comparable replicates any configuration has.
    """

    metric: str
    mode: str
    keys: list[str]
    table: dict[str, dict[Any, float]]
    names: dict[str, list[str]]
    best: BestFamily | None
    importance: KeyImportance | None
    synergies: dict[str, tuple[Synergy, Verdict]]
    replicates: int

    def comparison_rows(self) -> list[Row]:
        """The comparisons table: one row per configuration, best first, against the best
        (``diff`` = configuration - best, paired by seed; ``verdict``: of the claim "the best
        is better than this configuration")."""
        if self.best is None:
            return []
        groups = {k: describe(v.values()) for k, v in self.table.items()}
        rows: list[Row] = []
        for label in rank(groups, self.mode):
            s = groups[label]
            c = self.best.comparisons.get(label)
            worse = "less" if self.mode == "max" else "greater"
            rows.append(
                {
                    CONFIGURATION: label,
                    "metric": self.metric,
                    "mean": s.mean if s else None,
                    "std": s.std if s else None,
                    "n": s.n if s else 0,
                    "diff": c.diff if c else 0.0,
                    "ci_low": c.ci_low if c else None,
                    "ci_high": c.ci_high if c else None,
                    "p": c.p if c else None,
                    "p_adjusted": c.p_adjusted if c else None,
                    "p_permutation": c.p_permutation if c else None,
                    "effect_size": c.effect_size if c else None,
                    "n_pairs": c.n if c else None,
                    "test": c.test if c else "best",
                    "family_size": c.family_size if c else None,
                    "tied_with_best": label in self.best.tied,
                    "verdict": str(verdict(c, worse)) if c else "best",
                }
            )
        return rows


def assess(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str = "max"
) -> Confidence:
    """The ``Confidence`` of a results table: pure, tolerant of missing metrics, failed trials,
    one replicate and nothing varying (the parts that cannot be computed are None / empty)."""
    keys = configuration_keys(varying_keys, rows)

    def label(row: Row) -> str:
        return configuration_label([row.get(k) for k in keys], keys)

    table, names = labelled_samples(rows, label, metric)
    best = versus_best(table, mode) if table else None
    used = [r for r in comparable(rows) if _is_finite(r.get(metric))]
    importance = key_importance(used, keys, metric) if keys and used else None
    return Confidence(
        metric,
        mode,
        keys,
        table,
        names,
        best,
        importance,
        _synergies(rows, varying_keys, metric, mode),
        max((len(v) for v in table.values()), default=0),
    )


def _synergies(
    rows: Sequence[Row], varying_keys: Sequence[str], metric: str, mode: str
) -> dict[str, tuple[Synergy, Verdict]]:
    """Each composition of two ops (a then b, by paper meaning) whose single ops were both
    measured: ``stats.synergy`` against the better single op, Holm over the compositions."""
    if OPS_KEY not in varying_keys:
        return {}

    def ops(row: Row) -> str | None:
        if row.get(OPS_KEY) is None:
            return None
        core = paper_ops(row[OPS_KEY])[0]
        return "+".join(core) if len(core) in (1, 2) and len(set(core)) == len(core) else None

    table, _ = labelled_samples(rows, ops, metric)
    found = {
        label: synergy(table, label, tuple(label.split("+")), mode)
        for label in table
        if "+" in label and all(op in table for op in label.split("+"))
    }
    family = holm_family({label: s.comparison for label, s in found.items()})
    return {
        label: (replace(s, comparison=family[label]), verdict(family[label], _better(mode)))
        for label, s in found.items()
    }


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


#: Line style and end marker of a trial's curve by its outcome (the colour is its
#: configuration's): completed solid, stopped early dashed with an x where it stopped.
_CURVE_STYLE = {
    "completed": {"linestyle": "-", "marker": None},
    "stopped": {"linestyle": "--", "marker": "x"},
    "diverged": {"linestyle": ":", "marker": "v"},
    "failed": {"linestyle": ":", "marker": "s"},
    "interrupted": {"linestyle": "-.", "marker": "|"},
    "running": {"linestyle": (0, (1, 1)), "marker": ">"},
}


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours: the tab10 / tab20 palettes, evenly spaced viridis beyond 20."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def learning_curves_figure(
    rows: Sequence[Row],
    histories: dict[str, list[tuple[int, float]]],
    varying_keys: Sequence[str],
    metric: str,
) -> Figure:
    """The early-stopping picture: ``metric`` against epoch for every trial, a point at each
    epoch in ``histories`` (the measured ones: ``tracking.load_results`` leaves out the values
    a trial carried between evaluations).

    One colour per configuration (``configuration_keys`` of ``varying_keys``; its replicates
    share it), named in the legend as the report's tables name it (``configuration_label``);
    line style by outcome (``_CURVE_STYLE``: completed solid, stopped early dashed and marked x
    where it stopped), explained in a second legend.
    """
    keys = configuration_keys(varying_keys, rows)
    configs = _sorted_configs(rows, keys)
    colours = dict(zip(configs, _colours(len(configs)), strict=True))
    fig = Figure(figsize=(7 + (3.5 if keys else 0), 4.5))
    ax = fig.add_subplot()
    statuses: set[str] = set()
    drawn: list[tuple[Any, ...]] = []
    for row in rows:
        points = histories.get(row["run_id"]) or []
        if not points:
            continue
        config = tuple(row.get(k) for k in keys)
        style = _CURVE_STYLE.get(row["status"], _CURVE_STYLE["running"])
        epochs, values = zip(*points, strict=True)
        colour = colours[config]
        ax.plot(
            epochs, values, color=colour, linestyle=style["linestyle"], marker="o", ms=3, alpha=0.85
        )
        if style["marker"]:
            ax.plot(epochs[-1], values[-1], marker=style["marker"], color=colour, ms=9, ls="")
        statuses.add(row["status"])
        drawn.append(config)
    status_handles = [
        Line2D([], [], color="black", linestyle=s["linestyle"], marker=s["marker"], label=name)
        for name, s in _CURVE_STYLE.items()
        if name in statuses
    ]
    shown = [c for c in configs if c in drawn]
    legend_style = {"fontsize": 7, "title_fontsize": 8}
    if keys and shown:
        if status_handles:  # an extra artist: tight_layout makes room for ax.legend_ only
            ax.add_artist(
                ax.legend(
                    handles=status_handles,
                    title="outcome",
                    loc="lower left",
                    bbox_to_anchor=(1.02, 0.0),
                    **legend_style,
                )
            )
        config_handles = [
            Line2D([], [], color=colours[c], marker="o", ms=3, label=configuration_label(c, keys))
            for c in shown
        ]
        ax.legend(
            handles=config_handles,
            title="configuration",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            ncols=1 if len(shown) <= 18 else 2,
            **legend_style,
        )
    elif status_handles:
        ax.legend(handles=status_handles, title="outcome", **legend_style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (measured epochs)")
    ax.set_title("Every trial by epoch")
    return fig


def _sorted_configs(rows: Sequence[Row], keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """The configurations of ``rows`` in a stable order (each key's values sorted)."""
    configs = list(dict.fromkeys(tuple(row.get(k) for k in keys) for row in rows))
    return sorted(configs, key=lambda c: tuple(_order(v) for v in c))


def _order(value: Any) -> tuple[int, float, str]:
    """A sort key that puts numbers first, by value, then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def plot_learning_curves(
    rows: Sequence[Row],
    histories: dict[str, list[tuple[int, float]]],
    stem: Path,
    metric: str,
    varying_keys: Sequence[str] = (),
) -> list[Path]:
    """``learning_curves_figure`` written as ``stem.png`` and ``stem.svg``."""
    return _save(learning_curves_figure(rows, histories, varying_keys, metric), stem)


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
                paths += plot_learning_curves(rows, results.histories, stem, metric, keys)
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


# ----------------------------------------------------------------------------- confidence: figures


def plot_forest(conf: Confidence, stem: Path) -> list[Path]:
    """Each configuration's difference from the best (paired by seed) with its 95% CI, best at
    the top; tied with the best: blue, distinguishable: grey; no CI (one replicate): hollow."""
    rows = conf.comparison_rows()
    fig = Figure(figsize=(7, max(2.5, 0.32 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    for y, row in enumerate(rows):
        color = "tab:blue" if row["tied_with_best"] else "tab:gray"
        if row["ci_low"] is not None:
            ax.errorbar(
                row["diff"],
                y,
                xerr=[[row["diff"] - row["ci_low"]], [row["ci_high"] - row["diff"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        else:
            ax.plot(row["diff"], y, "o", mfc="none", color=color)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [_short(row[CONFIGURATION]) for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{conf.metric}: configuration − best ({CONFIDENCE:.0%} CI, paired by seed)")
    ax.set_title("Difference from the best (blue: tied with it)")
    return _save(fig, stem)


def _short(label: str, limit: int = 48) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _importance_terms(importance: KeyImportance) -> list[tuple[str, float, str]]:
    """``(name, share, kind)`` of every main effect, interaction and the seed noise."""
    terms = [(key, imp.share, "main effect") for key, imp in importance.main.items()]
    terms += [
        (f"{a} x {b}", imp.share, "interaction") for (a, b), imp in importance.interactions.items()
    ]
    terms.append(("seed noise (within configurations)", importance.residual, "seed noise"))
    return terms


def plot_importance(importance: KeyImportance, stem: Path, metric: str) -> list[Path]:
    """Bar chart of the share of the variance of ``metric`` each key, each two-way interaction
    and the seed noise explain (``stats.key_importance``)."""
    terms = _importance_terms(importance)
    colors = {"main effect": "tab:blue", "interaction": "tab:orange", "seed noise": "tab:gray"}
    fig = Figure(figsize=(7, max(2.5, 0.4 * len(terms) + 1.5)))
    ax = fig.add_subplot()
    y = np.arange(len(terms))
    ax.barh(y, [share for _, share, _ in terms], color=[colors[k] for _, _, k in terms])
    for i, (_, share, _) in enumerate(terms):
        ax.text(share, i, f" {share:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, [_short(name) for name, _, _ in terms], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"share of the variance of {metric}")
    ax.set_title("Importance of each swept key (blue), interactions (orange)")
    return _save(fig, stem)


def draw_confidence_figures(conf: Confidence, fig_dir: Path) -> list[Path]:
    """``comparisons_forest`` (two or more configurations) and ``importance`` (a key varies
    and some trial has the metric)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if conf.best is not None and len(conf.table) >= 2:
        paths += plot_forest(conf, fig_dir / "comparisons_forest")
    if conf.importance is not None:
        paths += plot_importance(conf.importance, fig_dir / "importance", conf.metric)
    return paths


# ----------------------------------------------------------------------------- confidence: text


def _p(value: float | None) -> str:
    """A p-value as a table shows it: 4 decimals, ``<0.0001`` below that."""
    if value is None:
        return "—"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _ci(low: float | None, high: float | None) -> str:
    return "(no CI)" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def untestable_note(conf: Confidence) -> list[str]:
    """The plain sentence a sweep with one replicate gets."""
    if conf.replicates > 1 or not conf.table:
        return []
    return [
        "**One replicate per configuration: no claim can be tested.** A difference between two "
        "configurations cannot be told from seed noise without at least two seeds of each; "
        "rerun with `replicates: 3` (or more) to get confidence intervals and verdicts.",
        "",
    ]


def tied_lines(conf: Confidence) -> list[str]:
    """``## Tied for best``: the set not distinguishable from the best, and every configuration
    against the best (the comparisons table)."""
    if conf.best is None or len(conf.table) < 2:
        return []
    best, alpha = conf.best, conf.best.alpha
    tied = [row[CONFIGURATION] for row in conf.comparison_rows() if row["tied_with_best"]]
    family = max((c.family_size for c in best.comparisons.values() if c.testable), default=0)
    named = "{" + ", ".join(f"`{_cell(t)}`" for t in tied) + "}"
    if family == 0:
        text = (
            f"No configuration could be tested against the best (one replicate each), so all "
            f"{len(tied)} count as tied for best: {named}. The best by mean is "
            f"`{_cell(best.best)}`."
        )
    else:
        text = (
            f"Tied for best at the {alpha:.0%} level (Holm over the {family} testable "
            f"comparisons with the best, paired by seed): {named} ({len(tied)} of "
            f"{len(conf.table)}); the best by mean is `{_cell(best.best)}`."
        )
        if best.untestable:
            text += (
                f" {len(best.untestable)} of them count as tied only because they have one "
                "replicate (no test)."
            )
    lines = ["", "## Tied for best", "", text]
    lines += [
        "",
        f"| configuration | n | `{conf.metric}` | − best [{CONFIDENCE:.0%} CI] | p | Holm p | "
        "sign-flip p | effect size | best is better |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in conf.comparison_rows():
        mean = "—" if row["mean"] is None else f"{row['mean']:.4f}"
        effect = "—" if row["effect_size"] is None else f"{row['effect_size']:+.2f}"
        diff = (
            "—"
            if row["test"] == "best"
            else f"{row['diff']:+.4f} {_ci(row['ci_low'], row['ci_high'])}"
        )
        cells = [
            _cell(row[CONFIGURATION]),
            str(row["n"]),
            mean,
            diff,
            _p(row["p"]),
            _p(row["p_adjusted"]),
            _p(row["p_permutation"]),
            effect,
            row["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences are paired by seed (replicate r of every configuration shares its seed, data "
        "split and augmentation stream); p is the paired t-test (Welch's t where seeds do not "
        "match), reported because the exact sign-flip test cannot reach 0.05 with fewer than 6 "
        "seeds; effect size is Hedges-corrected d_z. Table: `comparisons.parquet`.",
    ]
    return lines


#: Comparisons of one finding shown in summary.md; the rest are counted.
SHOWN_COMPARISONS = 3


def finding_lines(findings: Sequence[Finding]) -> list[str]:
    """The findings table (verdict, each comparison's difference with its CI, Holm p and seeds)
    and the trials each finding used."""
    lines = [
        "| finding | paper | verdict | difference [95% CI], Holm p, seeds | evidence |",
        "|---|---|---|---|---|",
    ]
    for f in findings:
        shown = [format_comparison(name, c) for name, c in f.comparisons.items()]
        if len(shown) > SHOWN_COMPARISONS:
            rest = len(shown) - SHOWN_COMPARISONS
            shown = [*shown[:SHOWN_COMPARISONS], f"and {rest} more in the same Holm family"]
        cells = [f.claim, f.source, f"**{f.verdict}**", "; ".join(shown) or "—", f.evidence]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    used = [f for f in findings if f.trials]
    if used:
        lines += ["", "Trials each finding used:", ""]
        lines += [
            f"- {f.claim}: " + ", ".join(f"`{_cell(name)}`" for name in f.trials) for f in used
        ]
    return lines


def importance_lines(conf: Confidence) -> list[str]:
    """``## Which keys matter``: importance of each key, two-way interactions, op synergy."""
    lines: list[str] = []
    if conf.importance is not None:
        imp = conf.importance
        unbalanced = not all(i.balanced for i in (*imp.main.values(), *imp.interactions.values()))
        lines += [
            "",
            "## Which keys matter",
            "",
            f"Share of the variance of `{conf.metric}` over {imp.n} completed trials explained "
            "by each swept key (main effect, one-way ANOVA; p: its F-test, the other keys left "
            "in the error term) and by the interaction of two crossed keys; seed noise is the "
            "share within configurations."
            + (
                " The design is unbalanced: shares overlap and are descriptive."
                if unbalanced
                else ""
            ),
            "",
            "| term | share | p |",
            "|---|---|---|",
        ]
        p_of = {key: i.p for key, i in imp.main.items()}
        for name, share, _ in _importance_terms(imp):
            lines.append(f"| {_cell(name)} | {share:.3f} | {_p(p_of.get(name))} |")
    if conf.synergies:
        lines += [
            "",
            "### Synergy of compositions",
            "",
            "Does (a then b) beat the better of a and b alone? Synergy = composition − better "
            f"single op (positive: the composition helps), {CONFIDENCE:.0%} CI, paired by seed, "
            "Holm over the compositions.",
            "",
            "| composition | better single op | synergy [95% CI] | Holm p | seeds | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for label, (s, v) in conf.synergies.items():
            c = s.comparison
            cells = [
                label,
                str(s.better_single),
                f"{s.synergy:+.4f} {_ci(s.ci_low, s.ci_high)}",
                _p(c.p_adjusted),
                str(c.n),
                str(v),
            ]
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return lines


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
    results: SweepResults, metric: str, mode: str = "max"
) -> list[tuple[Row, int, float, float | None]]:
    """Stopped trials whose ``metric`` improved (rose with ``mode`` "max", fell with "min") at
    their last evaluation: ``(row, stop epoch, last gain, best completed value at that
    epoch)``; the gain is the improvement, so positive in either mode. Raises ValueError for
    another mode.

    Early rungs favour fast starters; a trial still improving when it was stopped may have
    been a slow starter rather than a weak configuration.
    """
    sign = improvement_sign(mode)
    best = max if sign > 0 else min
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
        gain = sign * (last - before)
        if gain > 0:
            leaders = completed_at.get(epoch)
            found.append((row, epoch, gain, best(leaders) if leaders else None))
    return found


def _early_stopping_lines(results: SweepResults, metric: str, mode: str) -> list[str]:
    stopped = [r for r in results.rows if r["status"] == "stopped"]
    climbing = stopped_while_improving(results, metric, mode)
    if not stopped:
        return []
    first_only = [r for r in stopped if len(results.histories.get(r["run_id"]) or []) < 2]
    lines = [
        "",
        "## Early stopping",
        "",
        f"Trials stopped early: {len(stopped)}. Still improving at their last evaluation "
        f"(`{metric}` {'rose' if mode == 'max' else 'fell'}): {len(climbing)}. Stopped at "
        "their first evaluation, before any "
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
            f"| run | stopped at epoch | `{metric}` | last improvement | best completed trial "
            "then |",
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
    confidence: Confidence | None = None,
) -> str:
    """``summary.md``: trial counts, the configurations ranked by ``metric`` and ``mode`` (the
    sweep's ranking, as ``summary.json``), the set tied for best with every configuration
    against the best, the findings with their comparisons and verdicts, the importance of each
    key and the synergy of compositions (``confidence``; computed by ``assess`` when None),
    early stopping, trials that did not complete, compute, figures."""
    rows, keys = results.rows, results.varying_keys
    conf = confidence if confidence is not None else assess(rows, keys, metric, mode)
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
    config_keys = configuration_keys(keys)  # replicates (seeds) are averaged, as in figures
    best = best_configurations(rows, config_keys, metric, mode, also=shown)
    if any(stats[metric] for _, stats in best):
        header = [
            "rank",
            *(f"`{k}`" for k in config_keys),
            "n",
            f"`{metric}`",
            *(f"`{m}`" for m in shown),
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for place, (key, stats) in enumerate(best, 1):
            n = stats[metric].n if stats[metric] else 0
            values = (_cell(format_value(v)) for v in key)  # written as configuration_label does
            cells = [str(place), *values, str(n), _fmt(stats[metric])]
            cells += [_fmt(stats.get(m)) for m in shown]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append(f"No completed trial reported `{metric}`.")
    lines += tied_lines(conf)
    lines += ["", "## The paper's findings on this sweep", ""]
    lines += untestable_note(conf)
    lines += finding_lines(findings)
    lines += importance_lines(conf)
    lines += _early_stopping_lines(results, metric, mode)
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
    comparisons_path: Path | None = None
    confidence: Confidence | None = None


def build_report(
    results: SweepResults,
    out_dir: str | Path,
    *,
    metric: str = DEFAULT_RANKING_METRIC,
    mode: str = "max",
) -> Report:
    """Write the report of ``results`` into ``out_dir``: ``results.parquet`` (a row per
    trial), ``history.parquet`` (``results.histories``, which hold ``metric``),
    ``comparisons.parquet`` (every configuration against the best: ``Confidence.
    comparison_rows``), ``figures/`` (with ``comparisons_forest`` and ``importance``) and
    ``summary.md`` ranked by ``metric`` in the direction of ``mode``.

    Raises ValueError for a mode other than ``"max"`` / ``"min"`` (before writing anything).
    """
    improvement_sign(mode)  # validates it
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
    confidence = assess(results.rows, results.varying_keys, metric, mode)
    comparisons_path = out / "comparisons.parquet"
    write_results_table(confidence.comparison_rows(), comparisons_path, metadata)
    figures = draw_figures(results, out / "figures", metric)
    figures += draw_confidence_figures(confidence, out / "figures")
    findings = check_findings(results.rows, results.varying_keys, metric, mode)
    summary_path = out / "summary.md"
    text = summary_markdown(results, findings, figures, metric, mode, confidence)
    summary_path.write_text(text, encoding="utf-8")
    return Report(
        out,
        results_path,
        history_path,
        summary_path,
        figures,
        findings,
        results,
        comparisons_path,
        confidence,
    )
