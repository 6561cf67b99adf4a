"""``summary.md``: the report as Markdown, and the formatters of its lines.

``summary_markdown`` writes the trial counts, the configurations ranked as ``summary.json``
ranks them (``table.best_configurations``), the set tied for best with every configuration
against it, the findings with their comparisons and verdicts, the importance of each key and
the synergy of compositions (``confidence``), early stopping, the trials that did not
complete, compute and the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ablate.report.confidence import CONFIGURATION, Confidence, assess, importance_terms
from ablate.report.findings import Finding
from ablate.report.table import (
    Row,
    SweepResults,
    best_configurations,
    comparable,
    configuration_keys,
)
from ablate.stats import CONFIDENCE, Comparison, GroupStats, improvement_sign
from ablate.vocabulary import COMPUTE_METRICS, FINAL_METRICS, format_value, shown_metrics


def _p(value: float | None) -> str:
    """A p-value as a table shows it: 4 decimals, ``<0.0001`` below that."""
    if value is None:
        return "—"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _ci(low: float | None, high: float | None) -> str:
    return "(no CI)" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def _fmt(s: GroupStats | None) -> str:
    if not s:
        return "—"
    # One replicate has no spread: say so rather than print a misleading ± 0.
    return f"{s.mean:.4f}" if s.std is None else f"{s.mean:.4f} ± {s.std:.4f}"


def _cell(value: Any) -> str:
    """A Markdown table cell: run names contain ``|``, which would split the row."""
    return str(value).replace("|", "\\|")


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
        for name, share, _ in importance_terms(imp):
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
