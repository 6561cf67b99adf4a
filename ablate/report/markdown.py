"""``summary.md``: the report as Markdown, and the formatters of its lines.

``summary_markdown`` opens with ``headline_lines`` (``## In short``: the question the sweep
asked, its answer in plain words with the numbers -- seed noise first when it dominates,
nothing claimed with one seed --, the interactions of crossed keys, whether the probe agrees
with the ranking, and what would settle what is open), then writes the trial counts, the
configurations ranked as ``summary.json`` ranks them (``table.best_configurations``), the set
tied for best with every configuration against it, the findings with their comparisons and
verdicts, the importance of each key with its F-test and the synergy of compositions
(``confidence``), early stopping, the trials that did not complete, compute and the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ablate.report.confidence import CONFIGURATION, Confidence, assess, importance_terms
from ablate.report.figures import file_stem
from ablate.report.findings import Finding
from ablate.report.table import (
    Row,
    SweepResults,
    best_configurations,
    comparable,
    configuration_keys,
    spread_text,
)
from ablate.stats import (
    ALPHA,
    CONFIDENCE,
    Comparison,
    GroupStats,
    Importance,
    describe,
    improvement_sign,
    verdict,
)
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
        f"add seeds with `{RESUME_COMMAND.format(k=3)}` to get confidence intervals and "
        "verdicts.",
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
    named = "{" + ", ".join(f"`{t}`" for t in tied) + "}"
    heading = "## Tied for best"
    if family == 0:
        heading = "## Against the best (not tested)"
        text = (
            "No configuration could be tested against the best (one replicate each), so none "
            "is called tied with it or worse than it: the table gives each single run's "
            f"difference from the highest, `{best.best}`, without intervals or p."
        )
    else:
        text = (
            f"Tied for best at the {alpha:.0%} level (Holm over the {family} testable "
            f"comparisons with the best, paired by seed): {named} ({len(tied)} of "
            f"{len(conf.table)}); the best by mean is `{best.best}`."
        )
        if best.untestable:
            names = ", ".join(f"`{n}`" for n in sorted(map(str, best.untestable)))
            text += f" Not tested (one replicate), so neither tied nor worse: {names}."
    lines = ["", heading, "", text]
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
    if family == 0:
        return [*lines, "", "Table: `comparisons.parquet`."]
    lines += [
        "",
        "Differences are paired by seed (replicate r of every configuration shares its seed, data "
        "split and augmentation stream); p is the paired t-test (Welch's t where seeds do not "
        "match), reported because the exact sign-flip test cannot reach 0.05 with fewer than 6 "
        "seeds; effect size is Hedges-corrected d_z. Table: `comparisons.parquet`.",
    ]
    return lines


# ----------------------------------------------------------------------------- the headline

#: Most seeds per configuration the headline proposes adding; a difference that needs more is
#: called too small to settle at this scale.
SEED_BUDGET = 20

#: The command that adds seeds to a sweep (only the new trials run).
RESUME_COMMAND = "python -m entrypoints.sweep <spec.yaml> --resume --set replicates={k}"


def _stat_text(s: GroupStats | None, over: Sequence[str] = ()) -> str:
    """``0.9314 ± 0.0021 over 3 seeds`` / ``0.9314, 1 seed`` (plus what else it averages)."""
    if s is None:
        return "no value"
    value = f"{s.mean:.4f}" if s.std is None else f"{s.mean:.4f} ± {s.std:.4f}"
    return f"{value}, {spread_text(s.n, over)}"


def _diff_text(c: Comparison) -> str:
    if not c.testable:
        return f"{c.diff:+.4f}, not tested"
    return (
        f"{c.diff:+.4f} [{CONFIDENCE:.0%} CI {c.ci_low:+.4f}, {c.ci_high:+.4f}], "
        f"{'Holm p' if c.family_size > 1 else 'p'} {_p(c.p_reported)}"
    )


def _f_text(imp: Importance) -> str:
    return f"F({imp.df}, {imp.df_resid}) = {imp.f:.2f}, p {_p(imp.p)}"


def _settle(need: int, replicates: int, what: str) -> str:
    k = replicates + need
    return (
        f"{need} more seed{'s' if need != 1 else ''} of {what} (80% power at the observed "
        f"difference): `{RESUME_COMMAND.format(k=k)}` (runs only the new seeds)."
    )


def _interaction_lines(conf: Confidence) -> tuple[list[str], list[str]]:
    """(answer lines, what-would-settle lines) of each crossed pair of keys: a 2 x 2 pair is
    tested by its difference of differences paired by seed (``stats.difference_of_differences``),
    a larger one by the two-way ANOVA F-test (``stats.key_importance``)."""
    answers: list[str] = []
    settle: list[str] = []
    imp = conf.importance
    if imp is None:
        return answers, settle
    for (a, b), term in imp.interactions.items():
        contrast = conf.contrasts.get((a, b))
        figure = f"figure `{file_stem(f'interaction_{a}_x_{b}')}`"
        effect, p, test = "", term.p, f"two-way ANOVA {_f_text(term)}" if term.p is not None else ""
        if contrast is not None:
            (x0, x1), (b0, b1) = contrast.levels, contrast.by_levels
            e0, e1 = contrast.effects
            c = contrast.comparison
            effect = (
                f"the effect of `{a}` {format_value(x0)} → {format_value(x1)} is {e0:+.4f} at "
                f"`{b}`={format_value(b0)} and {e1:+.4f} at `{b}`={format_value(b1)}"
            )
            if c.testable:
                p = c.p
                how = "paired by seed" if c.paired else c.test
                test = f"their difference {_diff_text(c)} ({how}, {c.n} seeds)"
        if p is None:
            answers.append(
                f"`{a}` × `{b}`: not tested (one seed per configuration)"
                + (f"; in single runs {effect}" if effect else "")
                + f". See {figure}."
            )
            continue
        if p < ALPHA:
            answers.append(
                f"**`{a}` and `{b}` interact**: "
                + (f"{effect}; {test}. " if effect else f"{test}. ")
                + f"Read the effect of each at each value of the other ({figure}), not "
                "averaged over it."
            )
            continue
        with_interval = contrast is not None and contrast.comparison.testable
        answers.append(
            f"No evidence that `{a}` and `{b}` interact: "
            + (f"{effect}; {test}" if effect else test)
            + ". Not significant is not the same as no interaction"
            + (": the interval shows how large it could still be." if with_interval else ".")
            + f" See {figure}."
        )
        if contrast is not None and contrast.comparison.testable:
            v = verdict(contrast.comparison, "greater")
            if v.add_seeds is not None and v.add_seeds <= SEED_BUDGET:
                settle.append(
                    f"Whether `{a}` interacts with `{b}`: "
                    + _settle(v.add_seeds, conf.replicates, "each of the four combinations")
                )
            elif v.add_seeds is not None:
                c = contrast.comparison
                settle.append(
                    f"The interaction of `{a}` and `{b}` ({c.diff:+.4f}, {CONFIDENCE:.0%} CI "
                    f"{c.ci_low:+.4f} to {c.ci_high:+.4f}): detecting one of the observed size "
                    f"would take about {v.add_seeds} more seeds each, more than the "
                    f"{SEED_BUDGET} this report proposes; this sweep can only say that an "
                    "interaction beyond the interval is unlikely."
                )
    return answers, settle


def _agreement_lines(conf: Confidence) -> list[str]:
    """The ranking metric against the probe (or kNN): flagged when their orders differ."""
    ag, second = conf.agreement, conf.second_metric
    if ag is None or second is None or ag.best is None:
        return []
    corr = (
        f"Spearman ρ = {ag.spearman:.2f}, Kendall τ = {ag.kendall:.2f} over {ag.n} configurations"
        if ag.spearman is not None and ag.kendall is not None
        else f"{ag.n} configurations"
    )
    if not ag.flips:
        return [f"`{second}` orders the configurations as `{conf.metric}` does ({corr})."]
    first_best, second_best = ag.best
    text = (
        f"**`{conf.metric}` and `{second}` disagree on the order** ({corr}; "
        f"{len(ag.flips)} pair{'s' if len(ag.flips) != 1 else ''} in the other order)."
    )
    if first_best != second_best:
        means = conf.comparison_rows()
        place = next((i for i, r in enumerate(means, 1) if r[CONFIGURATION] == second_best), None)
        text += f" Best by `{conf.metric}`: `{first_best}`; best by `{second}`: `{second_best}`" + (
            f" ({_ordinal(place)} by `{conf.metric}`)." if place else "."
        )
    shown = "; ".join(f"`{a}` above `{b}`" for a, b in ag.flips[:3])
    more = f" and {len(ag.flips) - 3} more" if len(ag.flips) > 3 else ""
    text += f" Order flips (by `{conf.metric}`, reversed by `{second}`): {shown}{more}."
    return [text]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _widest_interval(conf: Confidence) -> str:
    """`` With 2 seeds, the 95% intervals of the differences reach ±1.7.``"""
    if conf.best is None:
        return ""
    halves = [
        (c.ci_high - c.ci_low) / 2 for c in conf.best.comparisons.values() if c.ci_low is not None
    ]
    if not halves:
        return ""
    return (
        f" With {conf.replicates} seeds, the {CONFIDENCE:.0%} intervals of the differences from "
        f"the best reach ±{max(halves):.2g}."
    )


def headline_lines(results: SweepResults, conf: Confidence) -> list[str]:
    """``## In short``: the question the sweep asked (its ``description``), the answer in
    plain words with its numbers (seed noise first when it dominates; nothing claimed with one
    seed), the interactions of crossed keys, whether the probe agrees with the ranking, and
    what would settle what is open (configurations, seeds, the command)."""
    keys = ", ".join(f"`{k}`" for k in conf.keys) or "nothing"
    question = results.description.strip()
    lines = ["## In short", ""]
    lines.append(
        f"**Question:** {question}"
        if question
        else f"**Question** (the spec has no `description`): how does `{conf.metric}` change "
        f"with {keys}?"
    )
    lines.append("")
    if conf.best is None:
        return [*lines, f"No completed trial reported `{conf.metric}`: nothing to answer.", ""]
    rows = conf.comparison_rows()
    best = conf.best.best
    best_stats = describe(conf.table[best].values())
    answer: list[str] = []
    settle: list[str] = []
    if len(rows) == 1:
        answer.append(f"One configuration: `{conf.metric}` {_stat_text(best_stats)}.")
    elif not conf.tested:
        lines += [
            "**One seed per configuration: nothing here is tested.** With one run each, a "
            "difference between configurations cannot be told from seed noise; the ranking "
            "below is of single runs, and no configuration is called tied with the best or "
            "worse than it.",
            "",
        ]
        runner = rows[1]
        answer.append(
            f"Highest single run: `{best}` ({best_stats.mean:.4f}); next `{runner[CONFIGURATION]}` "
            f"({runner['mean']:.4f}, {runner['diff']:+.4f})."
        )
        settle.append(
            f"Any claim: 3 seeds of every configuration (to test `{best}` against "
            f"`{runner[CONFIGURATION]}` first): `{RESUME_COMMAND.format(k=3)}` (runs only the "
            "new seeds)."
        )
    else:
        if conf.noise_dominates:
            imp = conf.importance
            lines += [
                "**Seed noise dominates: this sweep cannot tell these configurations apart.** "
                f"{imp.residual:.0%} of the variance of `{conf.metric}` is between seeds of the "
                "same configuration, more than any swept key explains, and no key or "
                "interaction is significant at the 5% level." + _widest_interval(conf),
                "",
            ]
        rivals = [r for r in rows[1:] if r[CONFIGURATION] in conf.best.tied]
        beaten = [r for r in rows[1:] if r[CONFIGURATION] not in conf.best.tied]
        beaten = [r for r in beaten if r[CONFIGURATION] not in conf.best.untestable]
        if not rivals and beaten:
            answer.append(
                f"`{best}` is best ({_stat_text(best_stats)}): better than every other "
                f"configuration tested against it (Holm, 5% level); the closest, "
                f"`{beaten[0][CONFIGURATION]}`, is "
                f"{_diff_text(conf.best.comparisons[beaten[0][CONFIGURATION]])}."
            )
        elif rivals:
            shown = "; ".join(
                f"`{r[CONFIGURATION]}` {_diff_text(conf.best.comparisons[r[CONFIGURATION]])}"
                for r in rivals[:3]
            )
            more = f" and {len(rivals) - 3} more" if len(rivals) > 3 else ""
            answer.append(
                f"`{best}` has the highest mean ({_stat_text(best_stats)}), but "
                f"{len(rivals)} other configuration{'s' if len(rivals) != 1 else ''} cannot "
                f"be told apart from it at the 5% level (difference from it): {shown}{more}."
            )
            worse = "less" if conf.mode == "max" else "greater"
            settleable, too_small = [], []
            for r in rivals:
                v = verdict(conf.best.comparisons[r[CONFIGURATION]], worse)
                if v.add_seeds is not None and v.add_seeds <= SEED_BUDGET:
                    settleable.append((r[CONFIGURATION], v.add_seeds))
                elif v.add_seeds is not None:
                    too_small.append((r, v.add_seeds))
            if settleable:
                need = max(k for _, k in settleable)
                names = ", ".join(f"`{n}`" for n, _ in settleable)
                settle.append(
                    f"To tell `{best}` from {names}: "
                    + _settle(need, conf.replicates, "each configuration")
                )
            for r, k in too_small[:3]:
                settle.append(
                    f"`{r[CONFIGURATION]}` against `{best}` ({r['diff']:+.4f}): telling them "
                    f"apart would take about {k} more seeds each (80% power at the observed "
                    f"difference), more than the {SEED_BUDGET} this report proposes: at this "
                    "noise level this sweep cannot separate them."
                )
        if conf.best.untestable:
            names = ", ".join(f"`{n}`" for n in sorted(map(str, conf.best.untestable)))
            answer.append(f"Not tested (one seed): {names}.")
        if beaten and rivals:
            answer.append(
                f"{len(beaten)} configuration{'s are' if len(beaten) != 1 else ' is'} below "
                f"`{best}` at the 5% level (Holm)."
            )
    inter_answers, inter_settle = _interaction_lines(conf)
    answer += inter_answers
    settle += inter_settle
    answer += _agreement_lines(conf)
    ag = conf.agreement
    if ag is not None and ag.best is not None and ag.best[0] != ag.best[1]:
        settle.append(
            f"Which of `{ag.best[0]}` (best by `{conf.metric}`) and `{ag.best[1]}` (best by "
            f"`{conf.second_metric}`) is better depends on the evaluation; the linear probe is "
            "the paper's protocol. Compare the two on the probe before choosing."
        )
    lines += ["**Answer:**", ""] + [f"- {a}" for a in answer]
    lines += ["", "**What would settle what is open:**", ""]
    lines += [f"- {s}" for s in settle] if settle else ["- Nothing is open at the 5% level."]
    return [*lines, ""]


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
        lines += [f"- {f.claim}: " + ", ".join(f"`{name}`" for name in f.trials) for f in used]
    return lines


def importance_lines(conf: Confidence) -> list[str]:
    """``## Which keys matter``: importance of each key, two-way interactions, op synergy."""
    lines: list[str] = []
    if conf.importance is not None:
        imp = conf.importance
        unbalanced = not all(i.balanced for i in (*imp.main.values(), *imp.interactions.values()))
        tests = (
            "F: each term's F-test against the seed noise (the variation between seeds of one "
            f"configuration, {imp.df_resid} degrees of freedom): a key's main effect given the "
            "other keys' main effects, an interaction given every main effect (two-way ANOVA, "
            "type II)."
            if imp.df_resid > 0
            else "With one replicate per configuration there is no seed noise to test against: "
            "no term is tested (configurations are not replicates of each other)."
        )
        lines += [
            "",
            "## Which keys matter",
            "",
            f"Share of the variance of `{conf.metric}` over {imp.n} completed trials explained "
            "by each swept key (main effect) and by the interaction of two crossed keys; seed "
            f"noise is the share within configurations. {tests}"
            + (
                " The design is unbalanced: shares overlap and are descriptive."
                if unbalanced
                else ""
            ),
            "",
            "| term | share | F (df) | p |",
            "|---|---|---|---|",
        ]
        tested = {key: i for key, i in imp.main.items()}
        tested |= {f"{a} x {b}": i for (a, b), i in imp.interactions.items()}
        for name, share, _ in importance_terms(imp):
            term = tested.get(name)
            f = (
                f"{term.f:.2f} ({term.df}, {term.df_resid})"
                if term is not None and term.f is not None
                else "—"
            )
            p = _p(term.p) if term is not None else "—"
            lines.append(f"| {_cell(name)} | {share:.3f} | {f} | {p} |")
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
    failed: Sequence[str] = (),
) -> str:
    """``summary.md``: trial counts, the configurations ranked by ``metric`` and ``mode`` (the
    sweep's ranking, as ``summary.json``), the set tied for best with every configuration
    against the best, the findings with their comparisons and verdicts, the importance of each
    key and the synergy of compositions (``confidence``; computed by ``assess`` when None),
    early stopping, trials that did not complete, compute, figures; ``failed``: the user's
    figures and findings that raised, named under "Not in this report"."""
    rows, keys = results.rows, results.varying_keys
    conf = confidence if confidence is not None else assess(rows, keys, metric, mode)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    better = "higher" if mode == "max" else "lower"
    lines = [
        f"# Ablation report: {results.experiment}",
        "",
        *headline_lines(results, conf),
        "## The sweep",
        "",
        f"Parent run `{results.parent_run_id}`; {len(rows)} trials: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        "",
        f"Varying: {', '.join(f'`{k}`' for k in keys) or 'nothing'}. Ranking metric: `{metric}` "
        f"(last epoch, validation split; {better} is better). Means are over completed trials: "
        "mean ± sample std over seeds (n seeds); with one seed there is no ±.",
        "",
    ]
    lines += ["## Best configurations", ""]
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
            f"`{metric}` (± over seeds)",
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
    if failed:
        lines += [
            "",
            "## Not in this report",
            "",
            "Your own figures and findings that raised while the report was built (the rest "
            "of the report is complete; fix them, then rebuild it with `python -m "
            "entrypoints.report --experiment <name>`):",
            "",
            *(f"- {line}" for line in failed),
        ]
    return "\n".join(lines) + "\n"
