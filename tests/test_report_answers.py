"""Issue 23: the report answers the question a sweep asked, plainly and correctly.

The interaction of two crossed keys is tested (two-way ANOVA F-test against the seed noise,
checked against a textbook example and statsmodels' ``anova_lm``; a 2 x 2 pair also by its
difference of differences paired by seed) and drawn; one replicate tests nothing and claims no
tie; seed noise that dominates is said first; the ranking metric is checked against the probe
(Spearman / Kendall, the configurations whose order flips); every ± says what it is over.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

from ablate import stats
from ablate.report import SweepResults, augmentation_matrix, build_report, choose_figures
from ablate.report.figures import _split

# ----------------------------------------------------------------------------- rows


def trial(values: dict, seed: int, knn: float, probe: float | None = None) -> dict:
    name = ", ".join(f"{k}={v}" for k, v in values.items()) + f" | seed={seed}"
    return {
        "run_id": name,
        "run_name": name,
        "trial_id": name,
        "status": "completed",
        "status_detail": "",
        "seed": seed,
        "replicate": seed,
        "epochs_planned": 10,
        "val/knn_top1": knn,
        "val/probe_top1": knn if probe is None else probe,
        **values,
    }


#: Per-seed offsets shared by every configuration (seed r: same split and augmentations),
#: plus a small configuration-by-seed wobble.
SEED_SHIFT = (0.0, 0.01, -0.008)


def crossed(cells: dict[tuple, float], seeds: int = 3, wobble: float = 0.002) -> list[dict]:
    """Rows of loss.temperature x model.head: ``cells`` {(temperature, head): mean}."""
    rows = []
    for index, ((t, head), mean) in enumerate(cells.items()):
        for seed in range(seeds):
            noise = SEED_SHIFT[seed] + wobble * ((index + 2 * seed) % 3 - 1)
            rows.append(trial({"loss.temperature": t, "model.head": head}, seed, mean + noise))
    return rows


INTERACTING = {(0.1, "linear"): 0.50, (0.1, "nonlinear"): 0.60,
               (0.5, "linear"): 0.58, (0.5, "nonlinear"): 0.52}  # fmt: skip
ADDITIVE = {(0.1, "linear"): 0.50, (0.1, "nonlinear"): 0.55,
            (0.5, "linear"): 0.58, (0.5, "nonlinear"): 0.63}  # fmt: skip
KEYS = ["loss.temperature", "model.head"]
QUESTION = "Does the temperature interact with the head?"


def headline(text: str) -> list[str]:
    """The non-empty lines of ``## In short``."""
    part = text.split("## In short", 1)[1].split("\n## ", 1)[0]
    return [line for line in part.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- statistics

#: Montgomery, Design and Analysis of Experiments (5th ed.), Example 5-1: battery life by
#: plate material (1-3) and temperature (15, 70, 125 F), 4 replicates. Its ANOVA table:
#: material F = 7.91, temperature F = 28.97, interaction F = 3.56 (4 and 27 df, P = 0.0186).
BATTERY = {
    1: {15: [130, 155, 74, 180], 70: [34, 40, 80, 75], 125: [20, 70, 82, 58]},
    2: {15: [150, 188, 159, 126], 70: [136, 122, 106, 115], 125: [25, 70, 58, 45]},
    3: {15: [138, 110, 168, 160], 70: [174, 120, 150, 139], 125: [96, 104, 82, 60]},
}


def test_two_way_anova_matches_the_textbook_example():
    rows = [
        {"status": "completed", "life": v, "material": m, "temp": t}
        for m, by_temp in BATTERY.items()
        for t, values in by_temp.items()
        for v in values
    ]
    imp = stats.key_importance(rows, ["material", "temp"], "life")
    inter = imp.interactions[("material", "temp")]
    assert (inter.df, inter.df_resid, imp.df_resid) == (4, 27, 27)
    assert inter.f == pytest.approx(9613.78 / 4 / (18230.75 / 27), rel=1e-5)
    assert round(inter.f, 2) == 3.56 and round(inter.p, 4) == 0.0186
    assert round(imp.main["material"].f, 2) == 7.91
    assert round(imp.main["temp"].f, 2) == 28.97
    # The interaction's SS over the total is its share (balanced: exact).
    assert inter.share == pytest.approx(9613.78 / 77646.97, rel=1e-5)


#: An unbalanced 3 x 2 design (2 to 4 replicates per cell) and what statsmodels 0.14
#: ``anova_lm(ols("m ~ C(A) * C(B)", data).fit(), typ=2)`` gives for it.
UNBALANCED = [
    ("x", 0.1, 0.6122757364155548), ("x", 0.1, -0.7666995093942545),
    ("x", 0.5, 0.12542965401773365), ("x", 0.5, -0.17033088183837894),
    ("x", 0.5, -0.13579478763313374), ("y", 0.1, 1.1353208510730701),
    ("y", 0.1, 0.5940041612558247), ("y", 0.1, 1.1304202867067432),
    ("y", 0.5, 1.7404360771175176), ("y", 0.5, 2.996899854993465),
    ("y", 0.5, 2.0677359839683764), ("y", 0.5, 1.8942107616975215),
    ("z", 0.1, 0.4156137745545949), ("z", 0.1, 0.299586096167315),
    ("z", 0.1, 0.18345483463846363), ("z", 0.5, 0.3827597068296036),
    ("z", 0.5, 0.6445836165520358), ("z", 0.5, 0.42843391802799),
]  # fmt: skip
STATSMODELS_TYPE2 = {  # term: (F, p)
    "A": (26.404735697838028, 4.02955048096697e-05),
    "B": (7.0205522904987685, 0.02119342339491782),
    "A:B": (3.5523798992264672, 0.06140984283270016),
}


def test_two_way_anova_matches_statsmodels_type2_on_an_unbalanced_design():
    rows = [{"status": "completed", "A": a, "B": b, "m": m} for a, b, m in UNBALANCED]
    imp = stats.key_importance(rows, ["A", "B"], "m")
    got = {
        "A": imp.main["A"],
        "B": imp.main["B"],
        "A:B": imp.interactions[("A", "B")],
    }
    expected = dict(STATSMODELS_TYPE2)
    try:  # the live check where statsmodels is installed; the recorded values otherwise
        import pandas as pd
        import statsmodels.formula.api as smf
        from statsmodels.stats.anova import anova_lm

        table = anova_lm(smf.ols("m ~ C(A) * C(B)", pd.DataFrame(rows)).fit(), typ=2)
        for term, name in (("A", "C(A)"), ("B", "C(B)"), ("A:B", "C(A):C(B)")):
            expected[term] = (table.loc[name, "F"], table.loc[name, "PR(>F)"])
    except ImportError:
        pass
    for term, (f, p) in expected.items():
        assert got[term].f == pytest.approx(f, rel=1e-12), term
        assert got[term].p == pytest.approx(p, rel=1e-12), term
    assert imp.df_resid == 12 and not imp.interactions[("A", "B")].balanced


def test_one_replicate_tests_no_term():
    """Configurations are not replicates of each other: with one seed each, no F-test."""
    rows = [r for r in crossed(INTERACTING, seeds=1)]
    imp = stats.key_importance(rows, KEYS, "val/knn_top1")
    assert imp.df_resid == 0
    terms = [*imp.main.values(), *imp.interactions.values()]
    assert all(t.p is None and t.f is None for t in terms)
    assert imp.main["loss.temperature"].share > 0  # the shares stay descriptive


def test_difference_of_differences_is_the_paired_interaction_contrast():
    rows = crossed(INTERACTING)
    table = stats.samples_by_config(rows, KEYS, "val/knn_top1")
    inter = stats.difference_of_differences(
        table, "loss.temperature", (0.1, 0.5), "model.head", ("linear", "nonlinear")
    )
    per_seed = [
        (table[(0.5, "nonlinear")][s] - table[(0.1, "nonlinear")][s])
        - (table[(0.5, "linear")][s] - table[(0.1, "linear")][s])
        for s in range(3)
    ]
    c = inter.comparison
    assert c.paired and c.n == 3
    assert c.diff == pytest.approx(np.mean(per_seed), abs=1e-15)
    expected = scipy_stats.ttest_1samp(per_seed, 0.0)
    assert c.p == pytest.approx(expected.pvalue, rel=1e-12)
    assert c.diff == pytest.approx((0.52 - 0.60) - (0.58 - 0.50), abs=0.01)
    assert inter.effects[0] == pytest.approx(0.08, abs=0.01)  # 0.1 -> 0.5 with linear
    assert inter.effects[1] == pytest.approx(-0.08, abs=0.01)  # ... and with nonlinear


def test_rank_agreement_matches_scipy_and_names_the_flips():
    knn = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    probe = {"a": 0.6, "b": 0.7, "c": 0.8, "d": 0.9}
    ag = stats.rank_agreement(knn, probe)
    values = list(knn.values()), [probe[k] for k in knn]
    assert ag.spearman == pytest.approx(scipy_stats.spearmanr(*values).statistic)
    assert ag.kendall == pytest.approx(scipy_stats.kendalltau(*values).statistic)
    assert ag.spearman == pytest.approx(-1.0) and len(ag.flips) == 6
    assert ag.best == ("a", "d") and ag.flips[0] == ("a", "b")
    same = stats.rank_agreement(knn, {k: v + 0.1 for k, v in knn.items()})
    assert same.flips == [] and same.spearman == pytest.approx(1.0)
    assert stats.rank_agreement(knn, knn, "min").best == ("d", "d")


# ----------------------------------------------------------------------------- the report


def test_crossed_keys_that_interact_are_answered_tested_and_drawn(tmp_path):
    results = SweepResults("t-x-head", "p", crossed(INTERACTING), KEYS, description=QUESTION)
    report = build_report(results, tmp_path)
    text = report.summary_path.read_text()
    lines = headline(text)
    assert text.index("## In short") < text.index("## Best configurations")
    assert lines[0] == f"**Question:** {QUESTION}"
    said = "\n".join(lines)
    assert "**`loss.temperature` and `model.head` interact**" in said
    assert "is +0.0800 at `model.head`=linear and -0.0800 at `model.head`=nonlinear" in said
    assert "(paired by seed, 3 seeds)" in said and "not averaged over it" in said
    table = text.split("## Which keys matter", 1)[1]
    assert "| loss.temperature x model.head |" in table
    inter_row = next(r for r in table.splitlines() if r.startswith("| loss.temperature x"))
    assert "(1, 8)" in inter_row and "—" not in inter_row  # F with its df, and a p
    names = {p.name for p in report.figures}
    assert "interaction_loss_temperature_x_model_head.png" in names
    assert "figure `interaction_loss_temperature_x_model_head`" in said
    # The temperature figure draws one line per head instead of averaging over it.
    assert _split(results.rows, "loss.temperature", KEYS, "val/knn_top1")[0] == "model.head"
    meta = pq.read_schema(report.results_path).metadata
    assert meta[b"description"].decode() == QUESTION


def test_crossed_keys_that_do_not_interact_say_no_evidence_and_average(tmp_path):
    results = SweepResults("t-x-head", "p", crossed(ADDITIVE), KEYS, description=QUESTION)
    report = build_report(results, tmp_path)
    said = "\n".join(headline(report.summary_path.read_text()))
    assert "No evidence that `loss.temperature` and `model.head` interact" in said
    assert "interact**" not in said
    assert "is +0.0800 at `model.head`=linear and +0.0800 at `model.head`=nonlinear" in said
    split, averaged, interacting = _split(results.rows, "loss.temperature", KEYS, "val/knn_top1")
    assert (split, averaged, interacting) == (None, ["model.head"], [])
    term = report.confidence.importance.interactions[tuple(KEYS)]
    assert term.p > 0.05 and term.df == 1


def test_one_replicate_claims_no_tie_and_computes_no_p(tmp_path):
    """The quickstart's shape: one seed per configuration, a main effect far larger than the
    rest: still nothing is tested, nothing called tied, no ANOVA p."""
    ops = {"crop": 0.27, "color": 0.40, "crop+color": 0.97, "crop+blur": 0.50}
    rows = [
        trial({"augment.ops": op, "model.head": head}, 0, mean + (0.02 if head == "linear" else 0))
        for op, mean in ops.items()
        for head in ("linear", "nonlinear")
    ]
    report = build_report(SweepResults("quick", "p", rows, ["augment.ops", "model.head"]), tmp_path)
    text = report.summary_path.read_text()
    lines = headline(text)
    assert lines[1].startswith("**One seed per configuration: nothing here is tested.**")
    assert "Tied for best" not in text and "tied for best" not in text
    assert "## Against the best (not tested)" in text
    assert not any(r["tied_with_best"] for r in report.confidence.comparison_rows()[1:])
    assert report.confidence.best.tied == {report.confidence.best.best}
    keys_table = text.split("## Which keys matter", 1)[1].split("\n## ", 1)[0]
    term_rows = [r for r in keys_table.splitlines() if r.startswith("| augment.ops")]
    assert term_rows and all(r.endswith("| — | — |") for r in term_rows)  # no F, no p
    assert "no term is tested" in keys_table
    assert "--resume --set replicates=3" in "\n".join(lines)
    # crop+color's mean is over two heads with one seed: the evidence says both.
    assert "crop+color 0.9800 (1 seed; mean over model.head)" in text
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert any(" | seed=0`" in b for b in bullets)  # run names, as they are outside tables
    assert not any("\\|" in b for b in bullets)


def test_seed_noise_that_dominates_is_said_first(tmp_path):
    """The issue's sweep: temperature x head x 2 seeds, configurations within noise."""
    noise = {  # (temperature, head): the two seeds' values, differences well within noise
        (0.1, "linear"): (0.50, 0.47),
        (0.1, "nonlinear"): (0.46, 0.53),
        (0.5, "linear"): (0.49, 0.51),
        (0.5, "nonlinear"): (0.53, 0.48),
    }
    rows = [
        trial({"loss.temperature": t, "model.head": h}, seed, value)
        for (t, h), values in noise.items()
        for seed, value in enumerate(values)
    ]
    report = build_report(SweepResults("noisy", "p", rows, KEYS, description=QUESTION), tmp_path)
    conf = report.confidence
    assert conf.importance.residual > 0.9 and conf.noise_dominates
    lines = headline(report.summary_path.read_text())
    assert lines[0] == f"**Question:** {QUESTION}"
    assert lines[1].startswith(
        "**Seed noise dominates: this sweep cannot tell these configurations apart.**"
    )
    assert f"{conf.importance.residual:.0%} of the variance" in lines[1]
    said = "\n".join(lines)
    assert "No evidence that `loss.temperature` and `model.head` interact" in said
    assert "With 2 seeds, the 95% intervals of the differences from the best reach ±" in lines[1]
    assert "is below" not in said  # nothing is called worse than the best
    # Differences far inside the noise: seeds are not the answer there, and it says so.
    settle = said.split("**What would settle what is open:**", 1)[1]
    assert "this sweep cannot separate them" in settle
    # Not dominated: the interacting sweep does not say so.
    clear = build_report(SweepResults("c", "p", crossed(INTERACTING), KEYS), tmp_path / "clear")
    assert not clear.confidence.noise_dominates
    assert "Seed noise dominates" not in clear.summary_path.read_text()


def test_knn_ranking_against_the_probe_flags_a_flip(tmp_path):
    knn = {"a": 0.90, "b": 0.80, "c": 0.70, "d": 0.60}
    probe = {"a": 0.60, "b": 0.70, "c": 0.80, "d": 0.90}
    rows = [
        trial({"optim.name": k}, seed, knn[k] + SEED_SHIFT[seed], probe[k] + SEED_SHIFT[seed])
        for k in knn
        for seed in range(3)
    ]
    report = build_report(SweepResults("flip", "p", rows, ["optim.name"]), tmp_path)
    ag = report.confidence.agreement
    assert report.confidence.second_metric == "val/probe_top1"
    assert ag.best == ("a", "d") and ag.spearman == pytest.approx(-1.0)
    said = "\n".join(headline(report.summary_path.read_text()))
    assert "**`val/knn_top1` and `val/probe_top1` disagree on the order**" in said
    assert "best by `val/probe_top1`: `d` (4th by `val/knn_top1`)" in said
    assert "`a` above `b`" in said
    agree = [trial({"optim.name": k}, s, knn[k] + SEED_SHIFT[s]) for k in knn for s in range(3)]
    same = build_report(SweepResults("same", "p", agree, ["optim.name"]), tmp_path / "same")
    text = same.summary_path.read_text()
    assert "disagree" not in text and "orders the configurations as `val/knn_top1` does" in text


def test_augmentation_matrix_spread_is_over_seeds_not_other_keys():
    """Two heads, two seeds: a cell's ± is the seed noise of the head-averaged values."""
    rows = [
        trial({"augment.ops": "crop+color", "model.head": head}, seed, 0.8 + shift + 0.01 * seed)
        for head, shift in (("linear", -0.05), ("nonlinear", 0.05))
        for seed in range(2)
    ]
    matrix = augmentation_matrix(rows, other_keys=["augment.ops", "model.head"])
    i, j = matrix.ops.index("crop"), matrix.ops.index("color")
    assert matrix.count[i, j] == 2  # seeds, not trials
    assert matrix.std[i, j] == pytest.approx(math.sqrt(0.01**2 / 2))  # not the 0.1 head gap
    assert matrix.averaged == ["model.head"]
    assert not np.isfinite(matrix.mean[j, i])  # color+crop was not run


def test_interaction_figures_are_chosen_for_crossed_keys_only():
    rows = crossed(ADDITIVE)
    names = [name for name, _ in choose_figures(KEYS, rows)]
    assert "interaction_loss.temperature_x_model.head" in names
    uncrossed = [r for r in rows if (r["loss.temperature"], r["model.head"]) != (0.5, "linear")]
    names = [name for name, _ in choose_figures(KEYS, uncrossed)]
    assert not any(name.startswith("interaction_") for name in names)


def test_the_spec_description_reaches_the_report_through_mlflow(tmp_path):
    """The sweep's description reaches ``load_results``: the parent run's MLflow description,
    else (runs of older versions) the description in the spec.yaml it logged."""
    from mlflow import MlflowClient

    from ablate.tracking import SweepTracker, default_tracking_uri, load_results

    uri = default_tracking_uri(tmp_path)
    spec = f"name: asks\ndescription: '{QUESTION}'\n"
    tracker = SweepTracker(uri, "asks", execution="e1", spec_text=spec)
    tracker.start()
    tracker.close()
    plain = SweepTracker(uri, "plain", execution="e1", spec_text="name: plain\n")
    plain.start()
    plain.close()
    # The sweep gives the resolved description (``--set description=...`` included): it is
    # the parent run's MLflow description, and wins over the file's.
    overridden = SweepTracker(
        uri, "set", execution="e1", spec_text=spec, description="Does the head matter?"
    )
    overridden.start()
    overridden.close()
    client = MlflowClient(tracking_uri=uri)
    assert load_results(client, "asks").description == QUESTION
    assert load_results(client, "plain").description == ""
    parent = load_results(client, "set").parent_run_id
    assert client.get_run(parent).data.tags["mlflow.note.content"] == "Does the head matter?"
    assert load_results(client, "set").description == "Does the head matter?"


def test_the_forest_plot_colours_tied_below_and_untested_apart():
    """One replicate: every point hollow and 'not tested', none 'tied'; with seeds, the ones
    Holm separates from the best are 'below', the rest 'tied'."""
    from ablate.report import assess, forest_figure

    def legend(rows: list[dict]) -> list[str]:
        figure = forest_figure(assess(rows, KEYS, "val/knn_top1"))
        return [t.get_text() for t in figure.axes[0].get_legend().get_texts()]

    single = legend(crossed(INTERACTING, seeds=1))
    assert single == ["the best by mean", "not tested (one seed: no interval)"]
    seeded = legend(crossed(INTERACTING))
    assert seeded == ["the best by mean", "below the best (Holm p < 0.05)"]
    rng = np.random.default_rng(0)
    noisy = [
        r | {"val/knn_top1": r["val/knn_top1"] + rng.normal(0, 0.05)} for r in crossed(ADDITIVE)
    ]
    assert "tied with the best (Holm p ≥ 0.05)" in legend(noisy)
