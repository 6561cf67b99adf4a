"""The paper's qualitative findings checked on a sweep, one registered check each.

``FINDINGS`` (an ``ablate.registry.Registry``) holds each check of SimCLR's (Chen et al.,
2020) findings by name, in the order ``summary.md`` lists them: ``crop_color`` and
``composition`` (Figure 5), ``head_order`` (Figure 8), ``batch_size`` (Figure 9). A check is
``check(rows, varying_keys, metric, mode) -> Finding``: the comparisons behind the claim (one
Holm family, paired by seed, ``ablate.stats``) and its verdict, or ``NOT_COVERED`` when the
sweep does not vary what the claim needs. A user's own check is named ``module.path:factory``
(a function of that signature) and runs after the built-in ones (``check_findings``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from ablate.registry import Entry, Registry, raised
from ablate.report.augmentation import RIDES_WITH, op_meanings, paper_ops
from ablate.report.confidence import better
from ablate.report.table import (
    Row,
    averaged_keys,
    comparable,
    group_stats,
    is_finite,
    labelled_samples,
    run_name,
    sorted_values,
    spread_text,
)
from ablate.stats import (
    Comparison,
    GroupStats,
    Verdict,
    compare,
    describe,
    holm_family,
    rank,
    verdict,
    versus_best,
)
from ablate.vocabulary import DEFAULT_RANKING_METRIC, OPS_KEY

HEAD_ORDER = ("nonlinear", "linear", "none")  # the paper's Figure 8 finding, best first

NOT_COVERED = "not covered by this sweep"


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


#: ``check(rows, varying_keys, metric, mode) -> Finding``.
FindingCheck = Callable[[Sequence[Row], Sequence[str], str, str], Finding]


def _plugin_check(name: str, component: Any) -> Entry[FindingCheck]:
    """A user's finding: a callable, run as ``check(rows, varying_keys, metric, mode)``."""
    if not callable(component):
        raise TypeError(
            f"report finding {name}: {type(component).__name__} is not callable; a finding is "
            "a function (rows, varying_keys, metric, mode) -> ablate.report.Finding"
        )
    doc = (inspect.getdoc(component) or "").strip()
    return Entry(name, component, doc.splitlines()[0] if doc else "", {}, plugin=True)


#: The findings a report checks, by name, in the order summary.md lists them.
FINDINGS: Registry[FindingCheck] = Registry(
    "report finding", "report.findings", check=_plugin_check
)


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
    others = [k for k in varying_keys if k != key and k != "train.seed"]
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
    return (
        f"; taking each value of {', '.join(others)} separately, the means order as claimed in "
        f"{held} of {checked} (descriptive)"
    )


def _not_covered(claim: str, source: str, why: str) -> Finding:
    return Finding(claim, source, NOT_COVERED, why)


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


def _rider_note(names: Iterable[str], rows: Sequence[Row], riders: Iterable[str] = ()) -> str:
    """What rode along in the trials used: flip with crop (as in the paper), ``riders`` in
    every configuration compared."""
    used = set(names)
    absorbed = sorted(
        {
            f"{op} rides with {RIDES_WITH[op]}"
            for r in rows
            if run_name(r) in used and r.get(OPS_KEY) is not None
            for op in paper_ops(r[OPS_KEY])[1]
        }
    )
    notes = [f"{note} (as in the paper)" for note in absorbed]
    if riders:
        notes.append(f"{'+'.join(sorted(riders))} rides along in every configuration compared")
    return "; " + "; ".join(notes) if notes else ""


def _means(
    table: dict[Any, dict[Any, float]],
    labels: Iterable[Any],
    over: dict[Any, list[str]] | None = None,
) -> str:
    """``crop+color 0.9314 ± 0.0021 (± std over 3 seeds; each seed averaged over model.head)``:
    each label's mean over seeds, saying what the ± and the mean are taken over (``over``:
    {label: the other keys its values average})."""
    return "; ".join(
        f"{label} {_stat(table[label], (over or {}).get(label, []))}" for label in labels
    )


def _stat(samples: dict[Any, float], over: Sequence[str] = ()) -> str:
    s = describe(samples.values())
    value = f"{s.mean:.4f}" if s.std is None else f"{s.mean:.4f} ± {s.std:.4f}"
    return f"{value} ({spread_text(s.n, over)})"


def _others(varying_keys: Sequence[str], *shown: str) -> list[str]:
    """The configuration keys besides ``shown``: what a finding's means average over."""
    return [k for k in varying_keys if k != "train.seed" and k not in shown]


@FINDINGS.register("crop_color", "Figure 5: crop+color is the best pair of augmentations")
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
    meanings = op_meanings(rows)

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
        claims = dict.fromkeys(comparisons, better(mode))
    trials = [n for k in table for n in names[k]]
    over = averaged_keys(rows, pair, _others(varying_keys, OPS_KEY))
    evidence = (
        f"{metric}: {_means(table, [target, others[0]], over)} (best other of {len(others)} "
        "pairs)" + _rider_note(trials, rows)
    )
    # Already one Holm family: every pair against the best pair (closest first).
    return _judged(claim, source, comparisons, claims, evidence, trials, adjusted=True)


@FINDINGS.register("composition", "Figure 5: crop+color beats each of its ops alone")
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
    meanings = op_meanings(rows)
    core = frozenset(("crop", "color"))
    present: dict[frozenset[str], int] = {}
    for row in comparable(rows):
        if id(row) in meanings and is_finite(row.get(metric)):
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
    over = averaged_keys(rows, label, _others(varying_keys, OPS_KEY))
    evidence = f"{metric}: {_means(table, ['crop+color', *singles], over)}"

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
    claims = dict.fromkeys(comparisons, better(mode))
    return _judged(claim, source, comparisons, claims, evidence, trials)


def _means_decrease_along(
    series: list[tuple[Any, GroupStats]], order: Sequence[Any]
) -> bool | None:
    """Means strictly decrease along ``order`` (values missing from ``series`` skipped)."""
    by_value = dict(series)
    means = [by_value[v].mean for v in order if v in by_value]
    return all(a > b for a, b in pairwise(means)) if len(means) >= 2 else None


@FINDINGS.register("head_order", "Figure 8: nonlinear > linear > none (projection head)")
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

    def head(row: Row) -> str | None:
        return row.get("model.head") if row.get("model.head") in HEAD_ORDER else None

    table, names = labelled_samples(rows, head, metric)
    heads = [h for h in HEAD_ORDER if h in table]
    if len(heads) < 2:
        return _not_covered(claim, source, "needs at least two of the head types")
    comparisons = {f"{a} − {b}": compare(table[a], table[b]) for a, b in pairwise(heads)}
    over = averaged_keys(rows, head, _others(varying_keys, "model.head"))
    evidence = f"{metric}: {_means(table, heads, over)}"
    evidence += _held_in_settings(
        rows,
        varying_keys,
        "model.head",
        metric,
        lambda series: _means_decrease_along(series, HEAD_ORDER),
    )
    trials = [n for h in heads for n in names[h]]
    claims = dict.fromkeys(comparisons, better(mode))
    return _judged(claim, source, comparisons, claims, evidence, trials)


@FINDINGS.register("batch_size", "Figure 9: larger batches are better at equal epochs")
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
    for epochs in sorted_values(key[0] for key in table):
        sizes = sorted_values(key[1] for key in table if key[0] == epochs)
        if len(sizes) < 2:
            continue
        series = [describe(table[(epochs, size)].values()) for size in sizes]
        monotone = all(a.mean < b.mean for a, b in pairwise(series))
        over = averaged_keys(
            rows, budget_and_size, _others(varying_keys, "train.batch_size", "train.epochs")
        )
        cells = ", ".join(
            f"bs={size}: {_stat(table[(epochs, size)], over.get((epochs, size), []))}"
            for size in sizes
        )
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
    claims = dict.fromkeys(comparisons, better(mode))
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
    extra: Sequence[str] = (),
    failed: list[str] | None = None,
) -> list[Finding]:
    """The paper's qualitative findings on a results table (every check in ``FINDINGS``), then
    the ``extra`` ones (``module.path:factory`` plugins; a registered name is already checked),
    each with its comparisons and a verdict: holds / contradicted / undecided (add k seeds) /
    untestable / not covered.

    Raises ``registry.UnknownComponentError`` / ``PluginImportError`` for an ``extra`` name
    that is unknown or does not import. With ``failed`` a user's finding that raises or
    returns no ``Finding`` is described there (``finding `a.b:f` raised ValueError: ...``) and
    left out, so that it does not cost the report of a sweep that ran; without it, it raises
    (TypeError when it returns no ``Finding``). A registered finding's error always raises.
    """
    entries = [
        *FINDINGS,
        *(FINDINGS.get(n) for n in dict.fromkeys(extra) if n not in FINDINGS.names()),
    ]
    findings = []
    for entry in entries:
        try:
            finding = entry.component(rows, varying_keys, metric, mode)
            if not isinstance(finding, Finding):
                raise TypeError(
                    f"report finding {entry.name} returned {type(finding).__name__}, not an "
                    "ablate.report.Finding"
                )
        except Exception as error:
            if not entry.plugin or failed is None:
                raise
            failed.append(raised("finding", entry.name, error))
            continue
        findings.append(finding)
    return findings
