"""Statistics with known truth: simulated results tables where the true difference, the noise and
the design are set by the test, and values computed independently with scipy."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ablate import stats


def _table(rng, means, seeds, common_sd=0.0, noise_sd=0.01):
    """{config: {seed: value}}: each seed adds one shared offset (same data split and
    augmentation stream for every configuration) plus independent noise."""
    common = rng.normal(0.0, common_sd, len(seeds)) if common_sd else np.zeros(len(seeds))
    return {
        name: {s: mean + common[i] + rng.normal(0.0, noise_sd) for i, s in enumerate(seeds)}
        for name, mean in means.items()
    }


# ----------------------------------------------------------------------------- comparisons


def test_true_difference_of_five_hundredths_over_five_seeds_is_significant():
    rng = np.random.default_rng(1)
    table = _table(rng, {"a": 0.55, "b": 0.50}, range(5), common_sd=0.02, noise_sd=0.01)
    c = stats.compare(table["a"], table["b"])
    assert c.test == "paired t" and c.n == 5
    assert c.p < 0.05
    assert c.ci_low < 0.05 < c.ci_high and c.ci_low > 0
    assert c.effect_size > 2
    # With 5 pairs the exact sign-flip test cannot go below 2 / 2^5: why t is the reported p.
    assert c.p_permutation == pytest.approx(2 / 2**5)
    assert str(stats.verdict(c, "greater")) == "holds"
    assert str(stats.verdict(c, "less")) == "contradicted"


def test_no_true_difference_keeps_the_nominal_rate_of_significant_results():
    rng = np.random.default_rng(2)
    tables = 2000
    t_hits = perm_hits = 0
    for _ in range(tables):
        table = _table(rng, {"a": 0.5, "b": 0.5}, range(6), common_sd=0.05, noise_sd=0.01)
        c = stats.compare(table["a"], table["b"])
        t_hits += c.p < 0.05
        perm_hits += c.p_permutation < 0.05
    # Binomial(2000, 0.05): sd 0.0049; allow 3 sd either side.
    error = 3 * math.sqrt(0.05 * 0.95 / tables)
    assert abs(t_hits / tables - 0.05) < error
    # The exact permutation test is valid (at most nominal), discrete at n = 6 (min p 1/32).
    assert perm_hits / tables < 0.05 + error


def test_pairing_by_seed_finds_what_an_unpaired_test_misses():
    rng = np.random.default_rng(3)
    # Seeds differ a lot from one another (sd 0.1) while the configurations differ by 0.02.
    table = _table(rng, {"a": 0.52, "b": 0.50}, range(5), common_sd=0.1, noise_sd=0.005)
    paired = stats.compare(table["a"], table["b"])
    # The same values under seed ids that do not match: the Welch fallback, flagged.
    renamed = {s + 100: v for s, v in table["b"].items()}
    unpaired = stats.compare(table["a"], renamed)
    assert paired.paired and paired.p < 0.05
    assert unpaired.test == "Welch t" and not unpaired.paired
    assert unpaired.p > 0.05
    assert unpaired.p == pytest.approx(
        scipy_stats.ttest_ind(
            list(table["a"].values()), list(table["b"].values()), equal_var=False
        ).pvalue
    )


def test_intervals_p_and_effect_size_match_independent_computations():
    rng = np.random.default_rng(4)
    a = {s: v for s, v in enumerate(rng.normal(0.6, 0.03, 7))}
    b = {s: v for s, v in enumerate(rng.normal(0.58, 0.03, 7))}
    c = stats.compare(a, b)
    d = np.array([a[s] - b[s] for s in range(7)])
    low, high = scipy_stats.t.interval(0.95, 6, loc=d.mean(), scale=scipy_stats.sem(d))
    assert (c.ci_low, c.ci_high) == pytest.approx((low, high))
    assert c.p == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    # Exact sign-flip p by brute-force enumeration of all 2^7 sign patterns.
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=7)))
    null = np.abs((flips * d).mean(axis=1))
    assert c.p_permutation == pytest.approx(np.mean(null >= abs(d.mean()) - 1e-12))
    # Hedges-corrected d_z against the usual approximation J = 1 - 3 / (4 df - 1).
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1) * (1 - 3 / 23), rel=0.01)

    # Welch interval against scipy's own (independent of the module's Satterthwaite code).
    x = {s: v for s, v in enumerate(rng.normal(0.6, 0.02, 4))}
    y = {s + 50: v for s, v in enumerate(rng.normal(0.5, 0.05, 6))}
    w = stats.compare(x, y)
    ci = scipy_stats.ttest_ind(list(x.values()), list(y.values()), equal_var=False)
    ci = ci.confidence_interval(0.95)
    assert (w.ci_low, w.ci_high) == pytest.approx((ci.low, ci.high))


def _holm_by_rejection(pvalues):
    """Holm adjusted p computed from the procedure itself: the smallest level alpha at which
    the step-down test (reject p_(k) while p_(k) <= alpha / (m - k + 1)) rejects each
    hypothesis, searched over every level where a decision can change."""
    present = [p for p in pvalues if p is not None]
    m = len(present)
    order = sorted(present)
    levels = sorted({min(1.0, p * (m - k)) for k, p in enumerate(order)} | {1.0})
    out = []
    for p in pvalues:
        if p is None:
            out.append(None)
            continue
        for alpha in levels:
            rejected = set()
            for k, q in enumerate(order):
                if q > alpha / (m - k) + 1e-15:
                    break
                rejected.add(k)
            if order.index(p) in rejected:
                out.append(alpha)
                break
        else:
            out.append(1.0)
    return out


def test_holm_matches_the_step_down_procedure_and_a_textbook_example():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = [*rng.uniform(0, 0.2, 6), None]
        rng.shuffle(p)
        got = stats.holm(p)
        want = _holm_by_rejection(p)
        assert [g is None for g in got] == [w is None for w in want]
        assert [g for g in got if g is not None] == pytest.approx(
            [w for w in want if w is not None]
        )


def test_versus_best_gives_the_tied_set_with_holm_adjustment():
    rng = np.random.default_rng(6)
    means = {"best": 0.60, "close": 0.599, "far": 0.50, "worse": 0.45}
    table = _table(rng, means, range(4), common_sd=0.03, noise_sd=0.01)
    table["single"] = {0: 0.3}  # one replicate: untestable, so neither tied nor below
    family = stats.versus_best(table, "max")
    assert family.best == "best"
    assert family.tied == {"best", "close"}
    assert family.untestable == {"single"}
    raw = [family.comparisons[k].p for k in ("close", "far", "worse")]
    adjusted = [family.comparisons[k].p_adjusted for k in ("close", "far", "worse")]
    assert adjusted == pytest.approx(stats.holm(raw))
    assert all(family.comparisons[k].family_size == 3 for k in ("close", "far", "worse"))
    assert family.comparisons["far"].diff < 0
    # Minimising the same table: the worst becomes the best.
    assert stats.versus_best(table, "min").best == "single"


def test_one_replicate_is_untestable_and_says_so():
    c = stats.compare({0: 0.7}, {0: 0.5})
    assert c.diff == pytest.approx(0.2)
    assert c.p is None and c.ci_low is None and not c.testable
    v = stats.verdict(c, "greater")
    assert v.label == "untestable" and str(v) == "untestable (one replicate)"


def test_undecided_comparison_names_the_seeds_to_add():
    # Differences 0.01, -0.01, 0.02: a small effect that three seeds cannot settle.
    c = stats.compare({0: 0.51, 1: 0.49, 2: 0.52}, {0: 0.50, 1: 0.50, 2: 0.50})
    assert c.p >= 0.05
    v = stats.verdict(c, "greater")
    needed = stats.seeds_needed(c.effect_size)
    assert v.label == "undecided" and v.add_seeds == needed - 3 > 0
    assert str(v) == f"undecided (add {needed - 3} seeds)"
    # In a Holm family of 4 it is sized at alpha / 4 (Holm's strictest step): more seeds.
    in_family = stats.verdict(dataclasses.replace(c, p_adjusted=1.0, family_size=4), "greater")
    assert in_family.add_seeds == stats.seeds_needed(c.effect_size, alpha=0.05 / 4) - 3
    assert in_family.add_seeds > v.add_seeds


def test_two_seeds_still_size_the_seeds_to_add():
    # Hedges' J(1) is 0: applied at two seeds it would erase the effect and leave nothing to
    # size; two seeds keep the uncorrected d_z.
    c = stats.compare({0: 0.50, 1: 0.52}, {0: 0.48, 1: 0.49})
    assert c.n == 2 and c.effect_size == pytest.approx(0.025 / np.std([0.02, 0.03], ddof=1))
    v = stats.verdict(c, "greater")
    assert v.label == "undecided" and v.add_seeds == stats.seeds_needed(c.effect_size) - 2 > 0


def test_samples_by_config_filters_pairs_and_averages_shared_seeds():
    rows = [
        {"ops": "crop", "seed": 0, "status": "completed", "m": 0.5},
        {"ops": "crop", "seed": 0, "status": "completed", "m": 0.7},  # same seed: averaged
        {"ops": "crop", "seed": 1, "status": "stopped", "m": 0.9},  # not comparable
        {"ops": "color", "seed": 1, "status": "completed", "m": float("nan")},
        {"ops": "color", "seed": 2, "status": "completed", "m": 0.4},
    ]
    assert stats.samples_by_config(rows, ["ops"], "m") == {
        ("crop",): {0: pytest.approx(0.6)},
        ("color",): {2: 0.4},
    }
    with pytest.raises(KeyError, match="row 0 has no 'seed'"):
        stats.samples_by_config([{"ops": "crop", "status": "completed", "m": 1.0}], ["ops"], "m")


# ----------------------------------------------------------------------------- importance


def _design(rng, effect, levels_a, levels_b, replicates=3, noise=0.01):
    return [
        {"A": a, "B": b, "status": "completed", "m": effect(a, b) + rng.normal(0, noise)}
        for a in levels_a
        for b in levels_b
        for _ in range(replicates)
    ]


def test_importance_gives_the_only_effective_key_nearly_all_the_variance():
    rng = np.random.default_rng(8)
    rows = _design(rng, lambda a, b: 0.1 * a, [0, 1, 2], ["x", "y", "z"])
    imp = stats.key_importance(rows, ["A", "B"], "m")
    assert imp.main["A"].share > 0.95 and imp.main["A"].p < 1e-6
    assert imp.main["B"].share < 0.02
    assert imp.interactions[("A", "B")].share < 0.02
    assert imp.main["A"].balanced and imp.interactions[("A", "B")].balanced
    total = imp.main["A"].share + imp.main["B"].share + imp.interactions[("A", "B")].share
    assert total + imp.residual == pytest.approx(1.0)  # balanced: the ANOVA decomposition


def test_xor_design_shows_in_the_interaction_not_the_main_effects():
    rng = np.random.default_rng(9)
    rows = _design(rng, lambda a, b: 0.1 * (a ^ b), [0, 1], [0, 1])
    imp = stats.key_importance(rows, ["A", "B"], "m")
    assert imp.interactions[("A", "B")].share > 0.9
    assert imp.main["A"].share < 0.05 and imp.main["B"].share < 0.05


def test_unbalanced_or_uncrossed_designs_are_flagged():
    rng = np.random.default_rng(10)
    rows = _design(rng, lambda a, b: 0.1 * (a ^ b), [0, 1], [0, 1])
    imp = stats.key_importance(rows[1:], ["A", "B"], "m")  # one cell loses a replicate
    assert not imp.interactions[("A", "B")].balanced
    assert 0.0 <= imp.interactions[("A", "B")].share <= 1.0
    uncrossed = [r for r in rows if not (r["A"] == 1 and r["B"] == 1)]
    assert stats.key_importance(uncrossed, ["A", "B"], "m").interactions == {}


# ----------------------------------------------------------------------------- synergy


def test_synergy_sign_follows_whether_the_composition_beats_its_ops():
    rng = np.random.default_rng(11)
    means = {"crop": 0.40, "color": 0.33, "crop+color": 0.48, "crop+flip": 0.38}
    table = _table(rng, means, range(4), common_sd=0.02, noise_sd=0.005)
    s = stats.synergy(table, "crop+color", ("crop", "color"), "max")
    assert s.better_single == "crop"
    assert s.synergy == pytest.approx(0.08, abs=0.02) and s.ci_low > 0
    assert s.comparison.p < 0.05
    table["flip"] = {k: v - 0.05 for k, v in table["crop"].items()}
    worse = stats.synergy(table, "crop+flip", ("crop", "flip"), "max")
    assert worse.synergy < 0 and worse.ci_high < 0
    # A loss (lower is better): the same numbers negated keep the sign of the synergy.
    loss = {k: {s_: -v for s_, v in vals.items()} for k, vals in table.items()}
    flipped = stats.synergy(loss, "crop+color", ("crop", "color"), "min")
    assert flipped.synergy == pytest.approx(s.synergy)
    assert (flipped.ci_low, flipped.ci_high) == pytest.approx((s.ci_low, s.ci_high))


# ----------------------------------------------------------------------------- power


def test_seeds_needed_falls_with_effect_and_matches_simulated_power():
    needed = [stats.seeds_needed(d) for d in (0.5, 0.8, 1.2, 2.0)]
    assert needed == sorted(needed, reverse=True) and needed[0] > needed[-1]
    assert stats.seeds_needed(0.0) is None
    d = 1.0
    n = stats.seeds_needed(d)
    rng = np.random.default_rng(12)

    def simulated_power(n_pairs):
        diffs = rng.normal(d, 1.0, size=(4000, n_pairs))
        return np.mean(scipy_stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05)

    assert simulated_power(n) == pytest.approx(stats.t_test_power(d, n), abs=0.03)
    assert simulated_power(n) >= 0.8 - 0.03
    assert simulated_power(n - 1) < 0.8 + 0.03
    assert stats.t_test_power(d, n - 1) < 0.8 <= stats.t_test_power(d, n)
