"""Statistics of a sweep's results: what a group of replicates says, and how groups rank.

Pure functions of numbers (no MLflow, no Ray); distributions come from ``scipy.stats``.

The ranking rule, used by the sweep's closing table, ``summary.json`` and the report alike:
a configuration's statistics use its *comparable* replicates only (``vocabulary.
COMPARABLE_STATUSES``: a trial stopped early reports an earlier epoch's value); configurations
are ordered by that mean in the direction of ``mode``; configurations with no comparable value
come last, in their given order.

Beyond one group (tables ``{configuration: {seed: value}}``, see ``samples_by_config``):
``compare`` (A - B paired by seed: difference, t interval, paired t p, exact sign-flip p,
Hedges-corrected d_z; Welch when seeds do not match), ``holm``/``holm_family`` (family-wise
adjustment), ``versus_best`` (every configuration against the best, and the set tied for
best), ``key_importance`` (ANOVA shares of main effects and two-way interactions),
``synergy`` (a composition against its better single op), ``t_test_power``/``seeds_needed``
(replicates for 80% power) and ``verdict`` (holds / contradicted / undecided (add k seeds) /
untestable).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product
from typing import Any, TypeVar

import numpy as np
from scipy import stats as scipy_stats
from scipy.special import gammaln

from ablate.vocabulary import COMPARABLE_STATUSES

K = TypeVar("K", bound=Hashable)

#: Confidence level of every interval the report states.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class GroupStats:
    """Mean, sample std, n and the t-interval of the mean of one group's finite values.

    ``std`` and the interval are None for a single value: one replicate has no spread.
    """

    mean: float
    std: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    def __str__(self) -> str:
        if self.std is None:
            return f"{self.mean:.4f} (n=1)"
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN and inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values: Iterable[float | None], confidence: float = CONFIDENCE) -> GroupStats | None:
    """``GroupStats`` of the finite ``values``; None when there is none.

    The interval is Student's t interval of the mean (``scipy.stats.t``), ``n - 1`` degrees
    of freedom; with zero spread it collapses to the mean.
    """
    data = finite(values)
    if not data:
        return None
    mean = float(np.mean(data))
    if len(data) == 1:
        return GroupStats(mean, None, 1)
    std = float(np.std(data, ddof=1))
    half = (
        float(scipy_stats.t.ppf(0.5 + confidence / 2, len(data) - 1)) * std / math.sqrt(len(data))
    )
    return GroupStats(mean, std, len(data), mean - half, mean + half)


def improvement_sign(mode: str) -> float:
    """+1.0 for ``mode`` ``"max"`` (higher is better), -1.0 for ``"min"``: a difference times
    it is positive when it is an improvement. Raises ValueError for another mode."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


def rank(groups: Mapping[K, GroupStats | None], mode: str) -> list[K]:
    """The keys of ``groups`` best first by mean (``mode`` ``"max"`` or ``"min"``); groups
    without statistics last, in their given order. Raises ValueError for another mode."""
    sign = improvement_sign(mode)
    measured = [k for k, s in groups.items() if s is not None]
    unmeasured = [k for k, s in groups.items() if s is None]
    return sorted(measured, key=lambda k: -sign * groups[k].mean) + unmeasured


# ----------------------------------------------------------------------------- comparisons
#
# Input shape used below. A *table* maps a configuration key (any hashable: a tuple of varying
# values, an op string) to its *samples*: ``{pairing id: value}``, the pairing id being the
# trial's ``train.seed`` (or replicate index). Replicate r of every configuration runs with
# the same seed, data split and augmentation stream, so the values of A and B at one pairing
# id form a pair. ``samples_by_config`` builds a table from the results table's row dicts.

#: Level of every test and of the "tied for best" set unless a caller says otherwise.
ALPHA = 0.05
#: Power at which ``seeds_needed`` sizes an undecided comparison.
POWER = 0.8
#: Largest number of pairs whose 2^n sign flips are enumerated exactly.
EXACT_PERMUTATION_MAX_N = 16

Samples = Mapping[Hashable, float]


def _hashable(value: Any) -> Hashable:
    """A table cell as a dict key: lists (op lists, JSON arrays) become tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def samples_by_config(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    pair_by: str = "seed",
    statuses: Collection[str] | None = COMPARABLE_STATUSES,
) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """The table ``{(value of each of keys): {pairing id: metric}}`` of the results rows.

    ``rows``: row dicts of the results table (``report.run_row``), each with the ``keys``, the
    ``metric``, ``status`` and the ``pair_by`` field (``"seed"``, else ``"replicate"``).
    Rows whose ``status`` is not in ``statuses`` (None: keep all) or whose metric is missing
    or not finite are left out. Values of one configuration that share a pairing id (e.g.
    ``keys`` a subset of the varying keys, or both orders of an op pair) are averaged: the
    seed is the unit of replication, so the pair is formed on the per-seed mean. Raises
    KeyError naming the row when a row has no ``pair_by`` field.
    """
    pooled: dict[tuple[Hashable, ...], dict[Hashable, list[float]]] = {}
    for index, row in enumerate(rows):
        if statuses is not None and row.get("status") not in statuses:
            continue
        value = row.get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        if row.get(pair_by) is None:
            raise KeyError(f"results row {index} has no {pair_by!r} to pair replicates by")
        config = tuple(_hashable(row.get(k)) for k in keys)
        pooled.setdefault(config, {}).setdefault(row[pair_by], []).append(float(value))
    return {
        config: {pid: float(np.mean(vals)) for pid, vals in by_id.items()}
        for config, by_id in pooled.items()
    }


@dataclass(frozen=True)
class Comparison:
    """Configuration A against B on one metric: ``diff`` = mean(A) - mean(B), in the metric's
    units.

    ``test``: ``"paired t"`` (pairs by seed), ``"Welch t"`` (seeds did not match: unpaired,
    see ``compare``) or ``"none"`` (fewer than two pairs/values per side: untestable, p and
    the interval are None). ``p`` is the reported two-sided p of ``test``; ``p_permutation``
    the exact sign-flip permutation p of the paired differences (a distribution-free check,
    None when unpaired); ``effect_size`` Hedges-corrected d_z (paired: mean diff / sd of the
    diffs) or Hedges' g (Welch); ``n`` pairs (paired) or the smaller group (Welch);
    ``n_a``/``n_b`` the values of each side. ``p_adjusted`` and ``family_size`` are set when
    the comparison is part of a Holm family (``holm_family``).
    """

    diff: float
    ci_low: float | None
    ci_high: float | None
    p: float | None
    p_permutation: float | None
    effect_size: float | None
    n: int
    n_a: int
    n_b: int
    test: str
    p_adjusted: float | None = None
    family_size: int = 1

    @property
    def paired(self) -> bool:
        return self.test == "paired t"

    @property
    def testable(self) -> bool:
        return self.p is not None

    @property
    def p_reported(self) -> float | None:
        """The p a verdict uses: Holm-adjusted within its family when set, else ``p``."""
        return self.p_adjusted if self.p_adjusted is not None else self.p


def _hedges_factor(df: float) -> float:
    """Hedges' small-sample bias correction J(df) = Γ(df/2) / (√(df/2) Γ((df-1)/2))
    (Hedges 1981), computed with ``scipy.special.gammaln``. J(1) is 0 (Γ(0) is infinite),
    which would erase every effect measured on two seeds, so df < 2 is left uncorrected."""
    if df < 2:
        return 1.0
    return math.exp(gammaln(df / 2) - gammaln((df - 1) / 2)) / math.sqrt(df / 2)


def _sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided sign-flip permutation p of mean(diffs) (``scipy.stats.permutation_test``,
    ``permutation_type='samples'`` on one sample flips signs): exact over all 2^n flips for
    n <= ``EXACT_PERMUTATION_MAX_N``, else 9999 seeded random flips. Its smallest value is
    2 / 2^n (0.0625 at n = 5)."""
    exact = len(diffs) <= EXACT_PERMUTATION_MAX_N
    result = scipy_stats.permutation_test(
        (diffs,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf if exact else 9999,
        vectorized=True,
        axis=-1,
        random_state=np.random.default_rng(0),
    )
    return float(result.pvalue)


def compare(
    a: Samples, b: Samples, confidence: float = CONFIDENCE, min_pairs: int = 2
) -> Comparison:
    """A against B, paired by seed: ``diff`` = mean over pairs of a[s] - b[s].

    ``a``, ``b``: ``{pairing id: value}`` (non-finite values dropped). With at least
    ``min_pairs`` common pairing ids the comparison uses those pairs only:

    - interval: Student's t interval of the mean difference (``scipy.stats.ttest_rel``),
      n - 1 degrees of freedom;
    - reported p: the paired t-test (``scipy.stats.ttest_rel``, two-sided). It is the one
      reported because sweeps run 2-5 seeds, and there the exact sign-flip permutation test
      cannot reach 0.05 at all (its smallest two-sided p is 2 / 2^n: 0.5, 0.25, 0.125, 0.0625
      for n = 2..5); the t-test assumes roughly normal seed noise of the differences, which
      ``p_permutation`` (exact sign flips, no distributional assumption) lets a reader check;
    - effect size: d_z = mean diff / sd of diffs with Hedges' correction J(n - 1).

    Without enough common seeds (e.g. ``train.seed`` itself varies, or failed replicates) it
    falls back to Welch's unpaired t (``scipy.stats.ttest_ind(equal_var=False)``; interval
    with the Welch-Satterthwaite degrees of freedom; Hedges' g on the pooled sd) when each
    side has two values, flagged by ``test == "Welch t"``; else it is untestable
    (``test == "none"``, diff of the means or of the one pair, no p).

    Zero spread of the differences: the interval collapses to the difference and p is 1
    when it is 0, else 0 (no seed varies it); the effect size is then None.
    """
    a = {k: float(v) for k, v in a.items() if v is not None and math.isfinite(float(v))}
    b = {k: float(v) for k, v in b.items() if v is not None and math.isfinite(float(v))}
    if not a or not b:
        raise ValueError(f"compare needs values on both sides, got {len(a)} and {len(b)}")
    common = [k for k in a if k in b]
    if len(common) >= max(min_pairs, 2):
        diffs = np.array([a[k] - b[k] for k in common])
        n, diff = len(diffs), float(np.mean(diffs))
        sd = float(np.std(diffs, ddof=1))
        if sd == 0.0:
            p = 1.0 if diff == 0.0 else 0.0
            return Comparison(diff, diff, diff, p, p, None, n, len(a), len(b), "paired t")
        result = scipy_stats.ttest_rel([a[k] for k in common], [b[k] for k in common])
        ci = result.confidence_interval(confidence)
        d_z = diff / sd * _hedges_factor(n - 1)
        return Comparison(
            diff,
            float(ci.low),
            float(ci.high),
            float(result.pvalue),
            _sign_flip_p(diffs),
            d_z,
            n,
            len(a),
            len(b),
            "paired t",
        )
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    diff = float(np.mean(xa) - np.mean(xb))
    if len(xa) < 2 or len(xb) < 2:
        if len(common) == 1:  # one shared seed: report that pair's difference
            diff = a[common[0]] - b[common[0]]
        n = min(len(xa), len(xb))
        return Comparison(diff, None, None, None, None, None, n, len(xa), len(xb), "none")
    va, vb = np.var(xa, ddof=1) / len(xa), np.var(xb, ddof=1) / len(xb)
    n = min(len(xa), len(xb))
    if va + vb == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return Comparison(diff, diff, diff, p, None, None, n, len(xa), len(xb), "Welch t")
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    p = float(scipy_stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    dof = len(xa) + len(xb) - 2
    pooled = math.sqrt(
        ((len(xa) - 1) * np.var(xa, ddof=1) + (len(xb) - 1) * np.var(xb, ddof=1)) / dof
    )
    g = diff / pooled * _hedges_factor(dof) if pooled > 0 else None
    return Comparison(diff, diff - half, diff + half, p, None, g, n, len(xa), len(xb), "Welch t")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; None stays None
    and does not count towards the family size m.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)). Rejecting where adjusted p < alpha controls the family-wise
    error rate at alpha. (``scipy.stats.false_discovery_control`` is Benjamini-Hochberg, a
    different error rate.)
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank_, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank_) * p))
        adjusted[i] = running
    return adjusted


def holm_family(comparisons: Mapping[K, Comparison]) -> dict[K, Comparison]:
    """The ``comparisons`` (one family) with ``p_adjusted`` (Holm) and ``family_size`` set;
    untestable ones keep ``p_adjusted`` None and do not count towards the family size."""
    keys = list(comparisons)
    adjusted = holm([comparisons[k].p for k in keys])
    size = sum(p is not None for p in adjusted)
    return {
        k: replace(comparisons[k], p_adjusted=adj, family_size=max(size, 1))
        for k, adj in zip(keys, adjusted, strict=True)
    }


@dataclass(frozen=True)
class BestFamily:
    """Every configuration against the best, one Holm family.

    ``best``: the best configuration by mean (``rank``); ``comparisons``: {other config:
    Comparison of other - best}; ``tied``: the best and every configuration tested against it
    whose Holm-adjusted p is >= ``alpha`` -- the set not distinguishable from the best;
    ``untestable``: the configurations with no test (one replicate), which are neither tied
    with the best nor distinguished from it: one run per configuration cannot tell; ``alpha``.
    """

    best: Hashable
    comparisons: dict[Hashable, Comparison]
    tied: frozenset
    untestable: frozenset
    alpha: float


def versus_best(
    table: Mapping[K, Samples], mode: str, alpha: float = ALPHA, confidence: float = CONFIDENCE
) -> BestFamily:
    """Compare every configuration of ``table`` (``{config: {pairing id: value}}``) with the
    best one (highest mean for ``mode="max"``, lowest for ``"min"``; ``rank``'s rule), Holm
    adjusted within that family, and the set tied for best at level ``alpha``.

    Raises ValueError when no configuration has a finite value, or for a bad ``mode``.
    """
    groups = {k: describe(v.values()) for k, v in table.items()}
    order = [k for k in rank(groups, mode) if groups[k] is not None]
    if not order:
        raise ValueError("versus_best needs at least one configuration with a finite value")
    best = order[0]
    family = holm_family({k: compare(table[k], table[best], confidence) for k in order[1:]})
    untestable = frozenset(k for k, c in family.items() if not c.testable)
    tied = frozenset(
        [best, *(k for k, c in family.items() if c.testable and c.p_adjusted >= alpha)]
    )
    return BestFamily(best, family, tied, untestable, alpha)


# ----------------------------------------------------------------------------- importance


@dataclass(frozen=True)
class Importance:
    """Share of the metric's total sum of squares explained by one term, and its F-test.

    ``keys``: one key (its main effect) or two (their interaction); ``share`` in [0, 1]
    (descriptive: the one-way sum of squares of a key, the interaction's over the cell means);
    ``p``: the term's F-test against the seed noise (``key_importance``), None when untestable
    (no configuration has two replicates, so there is no seed noise to test against);
    ``f``, ``df``, ``df_resid``: that test's F statistic and degrees of freedom (None with no
    test); ``balanced``: every cell of the term has the same number of values.
    """

    keys: tuple[str, ...]
    share: float
    p: float | None
    balanced: bool
    f: float | None = None
    df: int | None = None
    df_resid: int | None = None


@dataclass(frozen=True)
class KeyImportance:
    """``main``: {key: Importance}; ``interactions``: {(key_a, key_b): Importance} for each pair
    of keys that is crossed (every combination of their observed values measured);
    ``residual``: share of the sum of squares within configurations (all ``keys`` fixed), i.e.
    seed noise; ``df_resid``: its degrees of freedom (values minus configurations; 0 with one
    replicate each: nothing can be tested); ``n``: values used."""

    main: dict[str, Importance]
    interactions: dict[tuple[str, str], Importance]
    residual: float
    n: int
    df_resid: int = 0


def _between_ss(y: np.ndarray, labels: list[Hashable]) -> tuple[float, bool, list[np.ndarray]]:
    """Sum over cells of n_cell (mean_cell - grand mean)^2, whether the cells are balanced, and
    the cells' values."""
    cells: dict[Hashable, list[float]] = {}
    for value, label in zip(y, labels, strict=True):
        cells.setdefault(label, []).append(value)
    grand = float(np.mean(y))
    groups = [np.array(v) for v in cells.values()]
    ss = float(sum(len(g) * (float(np.mean(g)) - grand) ** 2 for g in groups))
    return ss, len({len(g) for g in groups}) == 1, groups


def _dummies(labels: Sequence[Hashable]) -> np.ndarray:
    """Treatment coding of a factor: (n, levels - 1) indicator columns, first level dropped."""
    levels = list(dict.fromkeys(labels))
    return np.array([[float(label == level) for level in levels[1:]] for label in labels]).reshape(
        len(labels), max(len(levels) - 1, 0)
    )


def _residual_ss(y: np.ndarray, blocks: Sequence[np.ndarray]) -> tuple[float, int]:
    """Residual sum of squares and rank of the least-squares fit of ``y`` on an intercept and
    the columns of ``blocks``."""
    design = np.column_stack([np.ones(len(y)), *blocks])
    coef, _, rank_, _ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(residual @ residual), int(rank_)


def _f_test(
    ss: float, df: int, ss_resid: float, df_resid: int
) -> tuple[float | None, float | None]:
    """F = (ss / df) / (ss_resid / df_resid) and its upper-tail p (``scipy.stats.f``); None
    without degrees of freedom or noise."""
    if df <= 0 or df_resid <= 0 or ss_resid <= 0:
        return None, None
    f = (max(ss, 0.0) / df) / (ss_resid / df_resid)
    return float(f), float(scipy_stats.f.sf(f, df, df_resid))


def key_importance(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str,
    statuses: Collection[str] | None = COMPARABLE_STATUSES,
) -> KeyImportance:
    """Importance of each swept key: ANOVA sums of squares over the results table, and each
    term's F-test against the seed noise.

    ``rows``: row dicts with the ``keys``, ``metric`` and ``status`` (rows not in ``statuses``
    or with a non-finite metric are left out).

    Shares (descriptive): main effect of key A: SS_A / SS_total with SS_A = sum over A's values
    of n_a (mean_a - grand mean)^2; interaction of crossed keys A, B: (SS_AB - SS_A - SS_B) /
    SS_total, SS_AB over the A x B cell means (in a balanced design the two-way ANOVA
    interaction sum of squares exactly; unbalanced: clipped at 0, ``balanced`` False).

    Tests: the error term is the seed noise, the sum of squares within configurations (every
    key fixed) with N - (number of configurations) degrees of freedom. Main effect of A:
    SS(A | the other keys' main effects), the drop in residual sum of squares when A joins the
    additive model of the other keys; interaction of A and B: SS(A:B | every main effect). Both
    are least-squares fits (treatment coding); with two keys these are the type II tests of
    ``statsmodels.formula.api.ols("y ~ C(A) * C(B)")`` / ``anova_lm(typ=2)``, and in a balanced
    design the textbook two-way ANOVA (Montgomery, Design and Analysis of Experiments, ch. 5).
    With one replicate per configuration there is no seed noise: no p (configurations are not
    replicates of each other). Raises ValueError with no usable row.
    """
    used = [
        r
        for r in rows
        if (statuses is None or r.get("status") in statuses)
        and r.get(metric) is not None
        and math.isfinite(float(r[metric]))
    ]
    if not used:
        raise ValueError(f"key_importance: no row with a finite {metric!r}")
    y = np.array([float(r[metric]) for r in used])
    total = float(np.sum((y - np.mean(y)) ** 2))

    def share(ss: float) -> float:
        return min(max(ss / total, 0.0), 1.0) if total > 0 else 0.0

    levels = {k: [_hashable(r.get(k)) for r in used] for k in keys}
    configs = [tuple(levels[k][i] for k in keys) for i in range(len(y))]
    within = total - _between_ss(y, configs)[0] if keys else total
    df_resid = len(y) - len(set(configs))
    ss_resid = max(within, 0.0)
    blocks = {k: _dummies(levels[k]) for k in keys}
    rss_mains, rank_mains = _residual_ss(y, list(blocks.values()))
    main: dict[str, Importance] = {}
    ss_main: dict[str, float] = {}
    for key in keys:
        ss, balanced, _ = _between_ss(y, levels[key])
        ss_main[key] = ss
        rss_without, rank_without = _residual_ss(y, [b for k, b in blocks.items() if k != key])
        df = rank_mains - rank_without
        f, p = _f_test(rss_without - rss_mains, df, ss_resid, df_resid)
        main[key] = Importance((key,), share(ss), p, balanced, f, df or None, df_resid)
    interactions: dict[tuple[str, str], Importance] = {}
    for i, ka in enumerate(keys):
        for kb in keys[i + 1 :]:
            cells = list(zip(levels[ka], levels[kb], strict=True))
            crossed = len(set(cells)) == len(set(levels[ka])) * len(set(levels[kb]))
            if not crossed or len(set(levels[ka])) < 2 or len(set(levels[kb])) < 2:
                continue
            ss_ab, balanced, _ = _between_ss(y, cells)
            ss = ss_ab - ss_main[ka] - ss_main[kb]
            product_ = np.column_stack(
                [
                    blocks[ka][:, u] * blocks[kb][:, v]
                    for u, v in product(range(blocks[ka].shape[1]), range(blocks[kb].shape[1]))
                ]
            )
            rss_with, rank_with = _residual_ss(y, [*blocks.values(), product_])
            df = rank_with - rank_mains
            f, p = _f_test(rss_mains - rss_with, df, ss_resid, df_resid)
            interactions[(ka, kb)] = Importance(
                (ka, kb), share(ss), p, balanced, f, df or None, df_resid
            )
    residual = share(within) if keys else 1.0
    return KeyImportance(main, interactions, residual, len(y), max(df_resid, 0))


@dataclass(frozen=True)
class Interaction:
    """Does the effect of one key depend on another? A 2 x 2 crossed pair, paired by seed.

    ``key``: the key whose effect is measured, from ``levels[0]`` to ``levels[1]``; ``by``: the
    other key, at ``by_levels[0]`` and ``by_levels[1]``; ``effects``: that effect (mean over
    seeds, metric units) at each of ``by_levels``; ``comparison``: ``compare`` of the per-seed
    effect at ``by_levels[1]`` against the one at ``by_levels[0]``, i.e. the difference of
    differences (y11 - y01) - (y10 - y00) with its paired t interval and p (zero: no
    interaction).
    """

    key: str
    levels: tuple[Hashable, Hashable]
    by: str
    by_levels: tuple[Hashable, Hashable]
    effects: tuple[float, float]
    comparison: Comparison


def difference_of_differences(
    table: Mapping[tuple[Hashable, Hashable], Samples],
    key: str,
    levels: tuple[Hashable, Hashable],
    by: str,
    by_levels: tuple[Hashable, Hashable],
    confidence: float = CONFIDENCE,
) -> Interaction:
    """The interaction of a crossed 2 x 2 pair of keys as a paired difference of differences.

    ``table``: ``{(value of key, value of by): {pairing id: value}}`` (``samples_by_config``
    with ``[key, by]``). Per seed s, the effect of ``key`` at each level of ``by`` is
    y[levels[1], b][s] - y[levels[0], b][s]; the interaction is the effect at ``by_levels[1]``
    minus the one at ``by_levels[0]``, compared over the seeds that have all four cells
    (``compare``: paired t, n - 1 degrees of freedom). It equals the two-way ANOVA interaction
    contrast, and with balanced complete seeds its paired t^2 is the F of the randomized-block
    interaction. Raises KeyError naming a missing cell.
    """
    for cell in product(levels, by_levels):
        if cell not in table:
            raise KeyError(f"difference_of_differences: no results for {key}, {by} = {cell}")

    def effect(b: Hashable) -> dict[Hashable, float]:
        high, low = table[(levels[1], b)], table[(levels[0], b)]
        return {s: high[s] - low[s] for s in high if s in low}

    at0, at1 = effect(by_levels[0]), effect(by_levels[1])

    def mean_effect(b: Hashable) -> float:
        high, low = table[(levels[1], b)], table[(levels[0], b)]
        return float(np.mean(list(high.values())) - np.mean(list(low.values())))

    if not at0 or not at1:  # no seed shared within a level of by: the unpaired cell means
        at0 = {0: mean_effect(by_levels[0])}
        at1 = {0: mean_effect(by_levels[1])}
    comparison = compare(at1, at0, confidence)
    effects = (mean_effect(by_levels[0]), mean_effect(by_levels[1]))
    return Interaction(key, levels, by, by_levels, effects, comparison)


# ----------------------------------------------------------------------------- rank agreement


@dataclass(frozen=True)
class RankAgreement:
    """How two metrics order the same configurations (e.g. the kNN ranking and the probe).

    ``spearman`` / ``kendall``: rank correlations (``scipy.stats.spearmanr`` / ``kendalltau``,
    tau-b) with their p; None for fewer than 3 configurations or a constant metric. ``flips``:
    pairs (a, b) that the first metric orders a above b and the second b above a, the pairs
    holding the first metric's best first; ``best``: each metric's best configuration; ``n``:
    configurations with both values.
    """

    n: int
    spearman: float | None
    spearman_p: float | None
    kendall: float | None
    kendall_p: float | None
    flips: list[tuple[Hashable, Hashable]]
    best: tuple[Hashable, Hashable] | None


def rank_agreement(
    first: Mapping[K, float], second: Mapping[K, float], mode: str = "max"
) -> RankAgreement:
    """Agreement of the orders of ``first`` and ``second`` (``{configuration: mean}``, both in
    the direction of ``mode``) over the configurations both have a finite value for. Raises
    ValueError for a bad ``mode``."""
    sign = improvement_sign(mode)
    common = [
        k
        for k in first
        if k in second and math.isfinite(float(first[k])) and math.isfinite(float(second[k]))
    ]
    a = np.array([float(first[k]) for k in common])
    b = np.array([float(second[k]) for k in common])

    def finite_or_none(value: Any) -> float | None:
        value = float(value)
        return value if math.isfinite(value) else None

    rho = rho_p = tau = tau_p = None
    if len(common) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        spearman = scipy_stats.spearmanr(a, b)
        kendall = scipy_stats.kendalltau(a, b)
        rho, rho_p = finite_or_none(spearman.statistic), finite_or_none(spearman.pvalue)
        tau, tau_p = finite_or_none(kendall.statistic), finite_or_none(kendall.pvalue)
    order = sorted(range(len(common)), key=lambda i: -sign * a[i])
    flips = [
        (common[i], common[j])
        for x, i in enumerate(order)
        for j in order[x + 1 :]
        if a[i] != a[j] and sign * (b[j] - b[i]) > 0
    ]
    best = None
    if common:
        best = (
            common[order[0]],
            common[max(range(len(common)), key=lambda i: sign * b[i])],
        )
    return RankAgreement(len(common), rho, rho_p, tau, tau_p, flips, best)


# ----------------------------------------------------------------------------- synergy


@dataclass(frozen=True)
class Synergy:
    """Does a composition beat what its ops give alone?

    ``synergy`` = score(pair) - score(better single op) in the improving direction of the
    metric (positive: the composition is better), with its interval; ``better_single`` the
    single op with the better mean; ``comparison``: ``compare(pair, better_single)`` (raw
    difference pair - single, its test and p)."""

    pair: Hashable
    better_single: Hashable
    synergy: float
    ci_low: float | None
    ci_high: float | None
    comparison: Comparison


def synergy(
    table: Mapping[K, Samples],
    pair: K,
    singles: tuple[K, K],
    mode: str,
    confidence: float = CONFIDENCE,
) -> Synergy:
    """Synergy of the composition ``pair`` (a then b) over its single ops ``singles`` (a, b):
    score(a, b) - max(mean score(a), mean score(b)) for ``mode="max"`` (min for ``"min"``,
    sign flipped so positive always means the composition helps), paired by seed
    (``compare``) against the single op with the better mean. Choosing that op by its mean
    makes the test conservative for "the composition beats both".

    ``table``: ``{config: {pairing id: value}}``. Raises KeyError naming a missing
    configuration, ValueError for a bad ``mode``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    for key in (pair, *singles):
        if key not in table:
            raise KeyError(f"synergy: no results for {key!r}; have {sorted(map(str, table))}")
    stats_ = {k: describe(table[k].values()) for k in singles}
    better = rank(stats_, mode)[0]
    comparison = compare(table[pair], table[better], confidence)
    sign = 1.0 if mode == "max" else -1.0
    low, high = comparison.ci_low, comparison.ci_high
    if low is not None and sign < 0:
        low, high = -high, -low
    return Synergy(pair, better, sign * comparison.diff, low, high, comparison)


# ----------------------------------------------------------------------------- power, verdicts


def t_test_power(effect_size: float, n: int, alpha: float = ALPHA, paired: bool = True) -> float:
    """Power of a two-sided t-test at level ``alpha`` for a true standardised effect
    ``effect_size``: paired (one-sample on the differences, n pairs, df n - 1, noncentrality
    d sqrt(n)) or two equal groups of n (df 2n - 2, noncentrality d sqrt(n / 2)); from the
    noncentral t (``scipy.stats.nct``). Raises ValueError for n < 2."""
    if n < 2:
        raise ValueError(f"a t-test needs n >= 2, got {n}")
    df, nc = (
        (n - 1, effect_size * math.sqrt(n))
        if paired
        else (2 * n - 2, effect_size * math.sqrt(n / 2))
    )
    crit = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    return float(scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc))


def seeds_needed(
    effect_size: float,
    alpha: float = ALPHA,
    power: float = POWER,
    paired: bool = True,
    max_n: int = 10_000,
) -> int | None:
    """Smallest n (pairs, or seeds per configuration when unpaired) at which a two-sided t-test
    at ``alpha`` reaches ``power`` for the effect ``effect_size`` (d_z paired, d unpaired),
    by stepping n up (``t_test_power``); None when the effect is 0, not finite, or needs more
    than ``max_n``."""
    d = abs(float(effect_size))
    if not math.isfinite(d) or d == 0.0:
        return None
    # The normal approximation ((z_a/2 + z_b) / d)^2 is a lower bound of the t-test's n:
    # start just below it instead of at 2 so huge n stays cheap.
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    start = max(2, int((z / d) ** 2 * (1 if paired else 2)) - 1)
    for n in range(start, max_n + 1):
        if t_test_power(d, n, alpha, paired) >= power:
            return n
    return None


@dataclass(frozen=True)
class Verdict:
    """A claim checked against a comparison. ``label``: ``"holds"``, ``"contradicted"``,
    ``"undecided"`` or ``"untestable"``; ``add_seeds``: for an undecided one, the seeds to add
    per configuration for ``POWER`` at the observed effect (None when it cannot be sized);
    ``str(verdict)`` the phrase a report prints."""

    label: str
    add_seeds: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.label == "undecided":
            if self.add_seeds is not None:
                plural = "s" if self.add_seeds != 1 else ""
                return f"undecided (add {self.add_seeds} seed{plural})"
            return f"undecided ({self.reason})" if self.reason else "undecided"
        if self.label == "untestable":
            return f"untestable ({self.reason})"
        return self.label


def verdict(
    comparison: Comparison, claim: str = "greater", alpha: float = ALPHA, power: float = POWER
) -> Verdict:
    """Whether ``comparison`` (A - B) supports the claim "A is greater than B"
    (``claim="greater"``) or "less" at level ``alpha``, using its Holm-adjusted p when it is in
    a family (``Comparison.p_reported``).

    holds: p < alpha in the claimed direction; contradicted: p < alpha the other way;
    untestable: no test (one replicate: no seed noise to judge a difference against);
    undecided otherwise, with the seeds to add: ``seeds_needed`` for the observed effect size
    at alpha / family size (Bonferroni, Holm's strictest step, so the count suffices whatever
    the rest of the family does) minus the current n. Raises ValueError for another claim.
    """
    if claim not in ("greater", "less"):
        raise ValueError(f"claim must be 'greater' or 'less', got {claim!r}")
    p = comparison.p_reported
    if p is None:
        return Verdict("untestable", None, "one replicate" if comparison.n <= 1 else "no test")
    if p < alpha:
        if comparison.diff == 0.0:
            return Verdict("undecided", None, "no difference")
        agrees = (comparison.diff > 0) == (claim == "greater")
        return Verdict("holds" if agrees else "contradicted")
    d = comparison.effect_size
    if d is None or d == 0.0:
        return Verdict("undecided", None, "no observed effect to size more seeds for")
    needed = seeds_needed(d, alpha / comparison.family_size, power, comparison.paired)
    if needed is None:
        return Verdict("undecided", None, "the observed effect needs over 10000 seeds")
    return Verdict("undecided", max(needed - comparison.n, 1))
