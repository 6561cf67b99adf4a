"""Ablation reports: runs read back from a real MLflow SQLite store (``tracking``), and the
tables, figures, findings and summary built from a results table (``report``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib.colors import to_hex
from matplotlib.legend import Legend
from mlflow import MlflowClient
from scipy import stats

from ablate.config import resolve, set_dotted
from ablate.report import (
    NOT_COVERED,
    SweepResults,
    augmentation_matrix,
    build_report,
    check_batch_size,
    check_composition,
    check_crop_color,
    check_findings,
    check_head_order,
    choose_figures,
    configuration_keys,
    configuration_label,
    format_comparison,
    learning_curves_figure,
    plot_generic,
    plot_temperature,
    replicate_std,
    stopped_while_improving,
    summary_markdown,
    write_results_table,
)
from ablate.tracking import (
    VIEW_KEY,
    SweepTracker,
    default_tracking_uri,
    load_results,
    publish_report,
    sweep_page,
)
from ablate.vocabulary import trial_outcome
from entrypoints.report import main as report_main

EPOCHS = 3
# Final val/knn_top1 of each augmentation (before a +0.01 per replicate offset).
AUG_SCORES = {
    ("crop",): 0.40,
    ("color",): 0.30,
    ("cutout",): 0.20,
    ("crop", "color"): 0.80,
    ("color", "crop"): 0.70,
    ("crop", "cutout"): 0.50,
}


def log_trial(
    tracker: SweepTracker,
    trial_id: str,
    varying: dict,
    replicate: int,
    final: float,
    *,
    stop_at: int | None = None,
    error: str | None = None,
) -> None:
    """One trial through the tracker, as the Tune callback would log it."""
    config: dict = {"train": {"epochs": EPOCHS, "seed": replicate}}
    for key, value in varying.items():
        set_dotted(config, key, value)
    tracker.start_trial(trial_id, resolve(config), varying, replicate)
    last = stop_at or EPOCHS
    result: dict = {}
    for epoch in range(1, last + 1):
        knn = final - 0.1 * (EPOCHS - epoch)
        result = {
            "epoch": epoch,
            "train/loss": 4.0 - epoch,
            "train/contrastive_top1": 0.3 * epoch,
            "val/knn_top1": knn,
            "wall_seconds": 10.0 * epoch,
            "status": "running",
        }
        if epoch == EPOCHS:
            result.update(
                {
                    "status": "completed",
                    "val/probe_top1": final + 0.05,
                    "val/probe_top5": 0.99,
                    "test/probe_top1": final + 0.04,
                    "test/probe_top5": 0.98,
                    "test/knn_top1": final - 0.01,
                }
            )
        tracker.log_epoch(trial_id, result)
    outcome = trial_outcome(result, EPOCHS, errored=error is not None)
    tracker.finish_trial(
        trial_id,
        outcome.status,
        detail=outcome.detail,
        error=error,
        resources={"num_workers": 1, "cpus_per_worker": 2.0, "gpus_per_worker": 0.0},
    )


@pytest.fixture(scope="module")
def aug_sweep(tmp_path_factory):
    """A Figure 5 style sweep: 6 op lists x 2 replicates, one stopped and one failed trial."""
    uri = default_tracking_uri(tmp_path_factory.mktemp("aug"))
    tracker = SweepTracker(uri, "aug-sweep", execution="e1", spec_text="name: aug-sweep\n")
    tracker.start()
    for (ops, score), replicate in ((item, r) for item in AUG_SCORES.items() for r in (0, 1)):
        varying = {"augment.ops": list(ops)}
        log_trial(
            tracker, f"{'+'.join(ops)}-{replicate}", varying, replicate, score + 0.01 * replicate
        )
    log_trial(tracker, "stopped", {"augment.ops": ["cutout", "color"]}, 0, 0.95, stop_at=1)
    log_trial(tracker, "failed", {"augment.ops": ["color", "cutout"]}, 0, 0.9, stop_at=1, error="X")
    tracker.close("FINISHED")
    return uri, tracker.parent_run_id


@pytest.fixture(scope="module")
def aug_report(aug_sweep, tmp_path_factory):
    uri, _ = aug_sweep
    return publish_report(uri, "aug-sweep", out_dir=tmp_path_factory.mktemp("aug_report"))


def test_results_table_has_one_row_per_trial(aug_report, aug_sweep):
    table = pq.read_table(aug_report.results_path)
    assert table.num_rows == 2 * len(AUG_SCORES) + 2
    for column in (
        "trial_id",
        "run_id",
        "run_name",
        "replicate",
        "seed",
        "status",
        "augment.ops",
        "val/knn_top1",
        "val/probe_top1",
        "test/probe_top1",
        "test/probe_top5",
        "compute/epochs_run",
        "compute/wall_seconds",
        "compute/cpu_seconds",
    ):
        assert column in table.column_names, column
    rows = {row["trial_id"]: row for row in table.to_pylist()}
    row = rows["crop+color-1"]
    assert row["augment.ops"] == "crop+color" and row["replicate"] == 1 and row["seed"] == 1
    assert row["status"] == "completed"
    assert row["val/knn_top1"] == pytest.approx(0.81)
    assert row["test/probe_top1"] == pytest.approx(0.85)
    assert row["compute/wall_seconds"] == 30.0 and row["compute/cpu_seconds"] == 60.0
    assert rows["stopped"]["status"] == "stopped" and rows["stopped"]["compute/epochs_run"] == 1
    assert rows["stopped"]["test/probe_top1"] is None
    assert rows["failed"]["status"] == "failed"
    assert table.schema.metadata[b"parent_run_id"].decode() == aug_sweep[1]
    history = pq.read_table(aug_report.history_path).to_pylist()
    stopped_run = rows["stopped"]["run_id"]
    assert [h["epoch"] for h in history if h["run_id"] == stopped_run] == [1]
    assert len(history) == 2 * len(AUG_SCORES) * EPOCHS + 2


def test_figures_are_written_as_png_and_svg(aug_report):
    names = {path.name for path in aug_report.figures}
    for stem in ("augmentation_matrix", "learning_curves"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    for path in aug_report.figures:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in data[:2000]


def test_summary_and_artifacts(aug_report, aug_sweep):
    text = aug_report.summary_path.read_text()
    assert "| 1 | crop+color | 2 | 0.8050 ± 0.0071 |" in text  # best config, 2 replicates
    assert "| crop+color is the best pair of augmentations | Figure 5 | **holds** |" in text
    assert "crop+color − crop: +0.3500 [95% CI +0.3500, +0.3500]" in text  # both orders pooled
    assert text.count(NOT_COVERED) == 2  # the head and batch-size findings
    assert "Tied for best at the 5% level" in text and "{`crop+color`}" in text
    assert "`crop+color | seed=0`" in text  # the trials a finding used (no \\| outside tables)
    assert "stopped by the scheduler (ASHA) at epoch 1 of 3" in text
    assert "![augmentation_matrix](figures/augmentation_matrix.png)" in text
    client = MlflowClient(aug_sweep[0])
    logged = {a.path for a in client.list_artifacts(aug_sweep[1], "report")}
    assert {"report/results.parquet", "report/summary.md", "report/figures"} <= logged
    assert "report/comparisons.parquet" in logged
    figures = {a.path for a in client.list_artifacts(aug_sweep[1], "report/figures")}
    assert "report/figures/augmentation_matrix.svg" in figures
    assert {"report/figures/comparisons_forest.png", "report/figures/importance.svg"} <= figures
    metrics = client.get_run(aug_sweep[1]).data.metrics
    importance = aug_report.confidence.importance
    assert metrics["importance/augment.ops"] == pytest.approx(importance.main["augment.ops"].share)
    assert metrics["importance/augment.ops"] > 0.9  # the only swept key; seeds add 0.01
    assert metrics["importance/seed_noise"] == pytest.approx(importance.residual)


def test_cli_writes_the_report(aug_sweep, tmp_path, capsys):
    uri, parent = aug_sweep
    code = report_main(
        [
            *("--experiment", "aug-sweep", "--tracking-uri", uri, "--run", parent),
            *("--out", str(tmp_path), "--no-log"),
        ]
    )
    assert code == 0
    assert (tmp_path / "results.parquet").stat().st_size > 0
    assert (tmp_path / "figures" / "augmentation_matrix.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "[holds] crop+color is the best pair" in out
    # Each verdict comes with what it rests on: the difference and its confidence interval.
    assert "      crop+color − crop: +0.3500 [95% CI +0.3500, +0.3500]" in out
    assert report_main(["--experiment", "missing", "--tracking-uri", uri, "--no-log"]) == 2


def test_head_and_batch_sweep_figures_and_findings(tmp_path):
    uri = default_tracking_uri(tmp_path / "store")
    tracker = SweepTracker(uri, "head-batch", execution="e1")
    base = {"nonlinear": 0.6, "linear": 0.5, "none": 0.4}
    for head, batch in ((h, b) for h in base for b in (64, 256)):
        score = base[head] + (0.05 if batch == 256 else 0.0)
        varying = {"model.head": head, "train.batch_size": batch}
        log_trial(tracker, f"{head}-{batch}", varying, 0, score)
    tracker.close("FINISHED")
    report = publish_report(uri, "head-batch", out_dir=tmp_path / "report", log_to_mlflow=False)
    names = {path.name for path in report.figures}
    assert {"projection_head.png", "projection_head.svg", "batch_size_epochs.svg"} <= names
    assert not any(name.startswith("augmentation") for name in names)
    verdicts = {finding.source: finding.verdict for finding in report.findings}
    one = "untestable (one replicate)"  # one seed per configuration: no claim can be tested
    assert verdicts == {"Figure 5": NOT_COVERED, "Figure 8": one, "Figure 9": one}
    assert "no claim can be tested" in report.summary_path.read_text()


# ----------------------------------------------------------------------------- hand-made tables


def row(status: str = "completed", score: float | None = None, **varying) -> dict:
    return {"status": status, "val/knn_top1": score, "epochs_planned": 100, **varying}


def test_augmentation_matrix_cells_and_row_means():
    rows = [
        row(score=0.3, **{"augment.ops": "crop"}),
        row(score=0.5, **{"augment.ops": ["crop"]}),  # list or "+" string: the same op
        row(score=0.2, **{"augment.ops": "color"}),
        row(score=0.8, **{"augment.ops": "crop+color"}),
        row(score=0.6, **{"augment.ops": "color+crop"}),
        row(score=0.5, **{"augment.ops": "crop+cutout"}),
        row("stopped", 0.99, **{"augment.ops": "crop+color"}),  # not comparable: left out
        row(score=0.9, **{"augment.ops": "crop+color+blur"}),  # three ops: not a cell
    ]
    matrix = augmentation_matrix(rows)
    assert matrix.ops == ["crop", "cutout", "color"]  # Figure 5's order
    expected = np.array(
        [[0.4, 0.5, 0.8], [np.nan, np.nan, np.nan], [0.6, np.nan, 0.2]],
    )
    np.testing.assert_allclose(matrix.mean, expected)
    np.testing.assert_array_equal(matrix.count, [[2, 1, 1], [0, 0, 0], [1, 0, 1]])
    assert matrix.std[0, 0] == pytest.approx(math.sqrt(0.02))
    np.testing.assert_allclose(matrix.row_mean, [(0.4 + 0.5 + 0.8) / 3, np.nan, 0.4])
    assert matrix.cell("crop", "color") == pytest.approx(0.8)
    assert matrix.cell("color") == pytest.approx(0.2)


def reps(scores: dict, key: str = "augment.ops", noise=(0.0, 0.004, -0.004), **fixed) -> list:
    """Rows of ``key``'s values, one per seed: ``scores`` {value: mean} plus seed noise that
    differs between configurations (replicate r of every configuration shares seed r)."""
    out = []
    for index, (value, mean) in enumerate(scores.items()):
        for seed, shift in enumerate(noise):
            name = f"{'+'.join(value) if isinstance(value, tuple) else value} | seed={seed}"
            wobble = 0.002 * ((index + seed) % 3 - 1)  # seed-by-configuration noise
            out.append(
                row(score=mean + shift + wobble, **{key: value}, **fixed)
                | {"seed": seed, "replicate": seed, "run_name": name, "run_id": name}
                | {"status_detail": ""}
            )
    return out


def test_composition_recognised_by_meaning_with_flip_riding_on_crop():
    """The issue's CIFAR-10 sweep: [crop, flip], [color], [crop, flip, color] measured exactly
    "composition matters" (41.7 vs 31.8 / 32.6): it holds, not 'not covered'."""
    rows = reps({("crop", "flip"): 0.318, ("color",): 0.326, ("crop", "flip", "color"): 0.417})
    finding = check_composition(rows)
    assert finding.verdict == "holds" and finding.label == "holds", finding
    assert set(finding.comparisons) == {"crop+color − crop", "crop+color − color"}
    for c in finding.comparisons.values():
        assert c.test == "paired t" and c.n == 3 and c.family_size == 2
        assert c.ci_low > 0.05 and c.p_adjusted < 0.05
    assert "flip rides with crop (as in the paper)" in finding.evidence
    assert "crop+color 0.4170" in finding.evidence
    assert "crop+flip+color | seed=0" in finding.trials and len(finding.trials) == 9
    # One pair only: "best pair" stays not covered; composition is no longer missed.
    assert check_crop_color(rows).verdict == NOT_COVERED


def test_riders_are_stated_and_a_confounding_rider_is_not_matched():
    shared = reps(
        {("crop", "blur"): 0.30, ("color", "blur"): 0.32, ("crop", "color", "blur"): 0.40}
    )
    finding = check_composition(shared)
    assert finding.label == "holds"
    assert "blur rides along in every configuration compared" in finding.evidence
    # blur only in the composition: crop+color+blur is not the paper's crop+color.
    confounded = reps({("crop",): 0.30, ("color",): 0.32, ("crop", "color", "blur"): 0.40})
    assert check_composition(confounded).verdict == NOT_COVERED


def test_composition_verdicts_contradicted_undecided_untestable():
    worse = reps({("crop",): 0.30, ("color",): 0.50, ("crop", "color"): 0.40})
    assert check_composition(worse).verdict == "contradicted"  # colour alone beats the pair
    # 3 seeds, a gap of 0.002 against seed noise of about 0.004: more seeds would settle it.
    close = reps({("crop",): 0.30, ("color",): 0.398, ("crop", "color"): 0.40})
    undecided = check_composition(close)
    assert undecided.label == "undecided" and "add " in undecided.verdict, undecided.verdict
    single = [r for r in worse if r["seed"] == 0]
    one = check_composition(single)
    assert one.verdict == "untestable (one replicate)"
    assert "no CI: 1 seed" in format_comparison(*next(iter(one.comparisons.items())))
    results = SweepResults("e", "p", single, ["augment.ops"])
    text = summary_markdown(results, [one], [], "val/knn_top1")
    assert "One replicate per configuration: no claim can be tested." in text
    # Missing: a pair of other ops, or augment.ops not swept.
    other = reps({("crop", "color"): 0.9, ("blur",): 0.5})
    assert check_composition(other).verdict == NOT_COVERED
    assert check_composition(worse, varying_keys=["model.head"]).verdict == NOT_COVERED


def test_composition_difference_and_ci_match_scipy():
    rows = reps({("crop",): 0.30, ("color",): 0.33, ("crop", "color"): 0.40})
    c = check_composition(rows).comparisons["crop+color − color"]
    pair = [r["val/knn_top1"] for r in rows if r["augment.ops"] == ("crop", "color")]
    color = [r["val/knn_top1"] for r in rows if r["augment.ops"] == ("color",)]
    expected = stats.ttest_rel(pair, color)
    ci = expected.confidence_interval(0.95)
    assert c.diff == pytest.approx(np.mean(pair) - np.mean(color))
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    other = stats.ttest_rel(
        pair, [r["val/knn_top1"] for r in rows if r["augment.ops"] == ("crop",)]
    ).pvalue
    ps = sorted([expected.pvalue, other])
    holm = {ps[0]: min(1, 2 * ps[0]), ps[1]: max(min(1, 2 * ps[0]), ps[1])}
    assert c.p_adjusted == pytest.approx(holm[expected.pvalue])


def test_composition_pools_other_keys_per_seed():
    by_head = [
        r
        for head, shift in (("linear", 0.0), ("nonlinear", 0.05))
        for r in reps(
            {("crop",): 0.3 + shift, ("color",): 0.35, ("crop", "color"): 0.45 + shift},
            **{"model.head": head},
        )
    ]
    finding = check_composition(by_head, ["augment.ops", "model.head"])
    assert finding.label == "holds"
    assert all(c.n == 3 for c in finding.comparisons.values())  # 3 seeds, heads averaged
    assert "0.4750 ± 0.0035 (± std over 3 seeds; each seed a mean over model.head)" in (
        finding.evidence
    )  # the ± is over seeds, and the mean says what else it averages
    assert "taking each value of model.head separately, the means order as claimed in 2 of 2" in (
        finding.evidence
    )


def test_crop_color_best_pair_verdicts():
    rows = reps({("crop", "color"): 0.50, ("color", "crop"): 0.48, ("crop", "blur"): 0.40})
    finding = check_crop_color(rows)
    assert finding.label == "holds", finding
    assert list(finding.comparisons) == ["blur+crop − crop+color"]
    assert "crop+color 0.4900" in finding.evidence  # both orders pooled
    beaten = [*rows, *reps({("crop", "cutout"): 0.60})]
    finding = check_crop_color(beaten)
    assert finding.label == "contradicted" and "crop+color − crop+cutout" in finding.comparisons
    close = [*rows, *reps({("crop", "cutout"): 0.491}, noise=(0.0, 0.004, -0.003))]
    assert check_crop_color(close).label == "undecided"
    single = [r for r in rows if r["seed"] == 0]
    assert check_crop_color(single).label == "untestable"
    pair_and_single = reps({("crop", "color"): 0.8, ("crop",): 0.5})
    assert check_crop_color(pair_and_single).verdict == NOT_COVERED


def test_head_order_finding():
    keys = ["model.head", "model.out_dim"]
    scores = {"nonlinear": 0.7, "linear": 0.6, "none": 0.5}
    yes = [r for d in (32, 128) for r in reps(scores, "model.head", **{"model.out_dim": d})]
    finding = check_head_order(yes, keys)
    assert finding.label == "holds" and "order as claimed in 2 of 2" in finding.evidence
    assert list(finding.comparisons) == ["nonlinear − linear", "linear − none"]
    no = [r if r["model.head"] != "none" else {**r, "val/knn_top1": 0.65} for r in yes]
    assert check_head_order(no, keys).label == "contradicted"  # none beats linear
    only_one = [r for r in yes if r["model.head"] == "nonlinear"]
    assert check_head_order(only_one, keys).verdict == NOT_COVERED
    lower = check_head_order(yes, keys, mode="min")  # a metric where lower is better
    assert lower.label == "contradicted"


def test_replicate_std():
    keys = ["model.head"]
    rows = [
        row(score=s, **{"model.head": h})
        for h, scores in (("nonlinear", (0.60, 0.70)), ("linear", (0.58, 0.62)))
        for s in scores
    ]
    assert replicate_std(rows, keys) == pytest.approx(math.sqrt((0.005 + 0.0008) / 2))
    assert replicate_std([rows[0], rows[2]], keys) is None


def test_batch_size_finding():
    keys = ["train.batch_size", "train.epochs"]
    yes = [
        r
        for e in (100, 200)
        for r in reps(
            {b: 0.4 + 0.01 * b / 64 + 0.01 * e / 100 for b in (64, 128, 256)},
            "train.batch_size",
            **{"train.epochs": e},
        )
    ]
    finding = check_batch_size(yes, keys)
    assert finding.label == "holds" and finding.evidence.count("[monotone") == 2
    assert set(finding.comparisons) == {
        "bs=256 − bs=64 at 100 epochs",
        "bs=256 − bs=64 at 200 epochs",
    }
    flipped = [
        {**r, "val/knn_top1": 1.0 - r["val/knn_top1"]} if r["train.epochs"] == 200 else r
        for r in yes
    ]
    assert check_batch_size(flipped, keys).label == "contradicted"
    assert check_batch_size(yes, ["train.epochs"]).verdict == NOT_COVERED
    # epochs fixed by the spec: one budget, taken from the planned epochs
    fixed = reps({64: 0.1, 256: 0.2}, "train.batch_size")
    assert check_batch_size(fixed, ["train.batch_size"]).label == "holds"
    labels = [f.label for f in check_findings(fixed, ["train.batch_size"])]
    assert labels == ["not covered", "not covered", "not covered", "holds"]


def test_tied_set_comparisons_importance_and_synergy(tmp_path):
    """Two configurations within seed noise of each other are tied for best as a set; a clearly
    worse one is not; the swept key carries the variance; crop+color's synergy holds."""
    rows = reps({("crop",): 0.30, ("color",): 0.399, ("crop", "color"): 0.40})
    report = build_report(SweepResults("e", "p", rows, ["augment.ops"]), tmp_path)
    conf = report.confidence
    assert conf.best.best == "crop+color" and conf.best.tied == {"crop+color", "color"}
    table = pq.read_table(report.comparisons_path)
    assert report.comparisons_path == tmp_path / "comparisons.parquet"
    for column in ("configuration", "diff", "ci_low", "ci_high", "p", "p_adjusted",
                   "p_permutation", "effect_size", "n_pairs", "test", "verdict"):  # fmt: skip
        assert column in table.column_names, column
    by_config = {r["configuration"]: r for r in table.to_pylist()}
    assert by_config["crop+color"]["test"] == "best"
    assert by_config["crop"]["verdict"] == "holds" and not by_config["crop"]["tied_with_best"]
    assert by_config["color"]["tied_with_best"] and by_config["color"]["verdict"] != "holds"
    assert by_config["crop"]["diff"] == pytest.approx(-0.10, abs=0.005)
    assert conf.importance.main["augment.ops"].share > 0.95
    text = report.summary_path.read_text()
    assert "Tied for best at the 5% level" in text and "{`crop+color`, `color`}" in text
    assert "## Which keys matter" in text and "| augment.ops | 0.9" in text
    assert "| crop+color | color |" in text  # synergy over the better single op
    names = {p.name for p in report.figures}
    assert {"comparisons_forest.png", "comparisons_forest.svg", "importance.svg"} <= names


def test_a_key_swept_over_one_value_names_no_configuration(tmp_path):
    """model.head listed in the space with one value: labels, tables and importance show only
    the key that varies (a one-value key explains nothing and only lengthens every label)."""
    rows = reps({("crop",): 0.30, ("crop", "color"): 0.40}, **{"model.head": "linear"})
    assert configuration_keys(["augment.ops", "model.head"], rows) == ["augment.ops"]
    assert configuration_keys(["augment.ops", "model.head"]) == ["augment.ops", "model.head"]
    report = build_report(SweepResults("e", "p", rows, ["augment.ops", "model.head"]), tmp_path)
    assert set(report.confidence.importance.main) == {"augment.ops"}
    assert report.confidence.best.best == "crop+color"
    assert "model.head=linear" not in report.summary_path.read_text()


def test_report_survives_one_replicate_no_keys_and_no_metric(tmp_path):
    ids = {"status_detail": "", "run_name": "a", "run_id": "a"}
    completed = row(score=0.5) | {"seed": 0, "replicate": 0} | ids
    failed = row("failed") | {"seed": 1, "replicate": 1} | ids
    for name, rows, keys in (
        ("nothing-varies", [completed, {**completed, "seed": 1, "val/knn_top1": 0.6}], []),
        ("all-failed", [failed], ["augment.ops"]),
        ("no-metric", [{**completed, "val/knn_top1": None}], ["model.head"]),
    ):
        report = build_report(SweepResults("e", "p", rows, keys), tmp_path / name)
        assert report.summary_path.is_file() and report.comparisons_path.is_file()
        assert "## Tied for best" not in report.summary_path.read_text()
        assert not any(p.stem == "comparisons_forest" for p in report.figures)
    assert pq.read_table(tmp_path / "nothing-varies" / "comparisons.parquet").num_rows == 1


def test_choose_figures_from_varying_keys():
    aug = [row(score=0.5, **{"augment.ops": ops}) for ops in ("crop+color", "crop")]
    assert [name for name, _ in choose_figures(["augment.ops"], aug)] == [
        "augmentation_matrix",
        "learning_curves",
    ]
    # A key swept with one value compares nothing: no figure of it (the quickstart with
    # `space.model.head={grid: [linear]}` once drew one bar, "linear", over "all").
    one_head = [r | {"model.head": "linear"} for r in aug]
    assert [n for n, _ in choose_figures(["augment.ops", "model.head"], one_head)] == [
        "augmentation_matrix",
        "learning_curves",
    ]
    assert [name for name, _ in choose_figures(["model.head", "optim.base_lr"], [])] == [
        "projection_head",
        "by_model.head_x_optim.base_lr",
        "learning_curves",
    ]
    names = [n for n, _ in choose_figures(["loss.temperature", "optim.base_lr", "data.name"], [])]
    assert names == ["temperature", "by_optim.base_lr", "by_data.name", "learning_curves"]


def test_generic_and_temperature_plots(tmp_path):
    rows = [
        row(
            score=0.1 * i + 0.01 * r,
            **{"optim.base_lr": lr, "optim.name": name, "loss.temperature": t},
        )
        | {"train/contrastive_top1": 0.5}
        for i, (lr, name, t) in enumerate(
            (lr, name, t)
            for lr in (0.01, 0.1, 1.0)
            for name in ("sgd", "lars", "adamw")
            for t in (0.1, 0.5)
        )
        for r in (0, 1)
    ]
    outputs = [
        plot_generic(rows, ["optim.base_lr"], tmp_path / "line", "val/knn_top1"),
        plot_generic(rows, ["optim.name"], tmp_path / "bars", "val/knn_top1"),
        plot_generic(rows, ["optim.base_lr", "optim.name"], tmp_path / "heat", "val/knn_top1"),
        plot_generic(
            rows, ["optim.name", "loss.temperature"], tmp_path / "grouped", "val/knn_top1"
        ),
        plot_temperature(rows, tmp_path / "temperature", "val/knn_top1"),
    ]
    for paths in outputs:
        assert [p.suffix for p in paths] == [".png", ".svg"]
        assert all(p.stat().st_size > 1000 for p in paths)


def test_results_table_widens_mixed_numbers(tmp_path):
    rows = [{"optim.base_lr": 1, "x": "a"}, {"optim.base_lr": 0.5, "x": 3}, {"optim.base_lr": None}]
    table = write_results_table(rows, tmp_path / "t.parquet", {"k": "v"})
    assert str(table.schema.field("optim.base_lr").type) == "double"
    assert pq.read_table(tmp_path / "t.parquet").column("x").to_pylist() == ["a", "3", None]


def test_stopped_trials_still_improving_are_flagged():
    def trial(name: str, status: str) -> dict:
        return {"run_id": name, "run_name": name, "status": status, "status_detail": ""}

    rows = [
        trial("leader", "completed"),
        trial("climbing", "stopped"),  # rose from 0.35 to 0.47 when stopped at epoch 4
        trial("falling", "stopped"),
        trial("one_point", "stopped"),  # a single evaluation: no trend
    ]
    histories = {
        "leader": [(2, 0.77), (4, 0.85), (6, 0.88)],
        "climbing": [(2, 0.35), (4, 0.47)],
        "falling": [(2, 0.40), (4, 0.30)],
        "one_point": [(2, 0.50)],
    }
    results = SweepResults("e", "p", rows, ["augment.ops"], histories)

    found = stopped_while_improving(results, "val/knn_top1")
    assert [(row["run_name"], epoch) for row, epoch, _, _ in found] == [("climbing", 4)]
    _, _, gain, leader = found[0]
    assert gain == pytest.approx(0.12) and leader == pytest.approx(0.85)
    text = summary_markdown(results, [], [], "val/knn_top1")
    assert "Trials stopped early: 3. Still improving at their last evaluation" in text
    assert "(`val/knn_top1` rose): 1. Stopped at their first evaluation" in text
    assert "before any trend showed: 1." in text and "raise `scheduler.grace_period`" in text
    assert "| climbing | 4 | 0.4700 | +0.1200 | 0.8500 |" in text
    # Nothing stopped: no early-stopping section at all.
    completed = SweepResults("e", "p", rows[:1], ["augment.ops"], histories)
    assert "## Early stopping" not in summary_markdown(completed, [], [], "val/knn_top1")
    # A metric to minimise: improving is falling, the leader is the lowest completed value.
    lower = stopped_while_improving(results, "train/loss", "min")
    assert [(row["run_name"], epoch) for row, epoch, _, _ in lower] == [("falling", 4)]
    assert lower[0][2] == pytest.approx(0.10) and lower[0][3] == pytest.approx(0.85)
    text = summary_markdown(results, [], [], "train/loss", mode="min")
    assert "(`train/loss` fell): 1." in text
    assert "| falling | 4 | 0.3000 | +0.1000 | 0.8500 |" in text
    with pytest.raises(ValueError, match="mode"):
        stopped_while_improving(results, "val/knn_top1", "maximum")


def test_summary_is_ranked_by_the_sweeps_metric_and_mode(tmp_path):
    """summary.md ranks as summary.json does: by the sweep's metric, not always val/knn_top1."""

    def trial(name: str, head: str, knn: float, online: float) -> dict:
        return {
            **{"run_id": name, "run_name": name, "status": "completed", "status_detail": ""},
            **{"model.head": head, "val/knn_top1": knn, "val/online_top1": online},
        }

    rows = [
        trial("a0", "nonlinear", 0.80, 0.50),  # the kNN winner
        trial("a1", "nonlinear", 0.82, 0.52),
        trial("b0", "linear", 0.60, 0.70),  # the online-probe winner
        trial("b1", "linear", 0.62, 0.72),
    ]
    results = SweepResults("e", "p", rows, ["model.head"])

    def first_ranked(**ranking) -> str:
        report = build_report(results, tmp_path / str(ranking), **ranking)
        lines = report.summary_path.read_text().splitlines()
        return next(line for line in lines if line.startswith("| 1 |"))

    assert first_ranked(metric="val/online_top1") == "| 1 | linear | 2 | 0.7100 ± 0.0141 |"
    assert first_ranked(metric="val/knn_top1").startswith("| 1 | nonlinear | 2 | 0.8100 ± ")
    assert first_ranked(metric="val/online_top1", mode="min").startswith("| 1 | nonlinear |")


def test_report_is_pure_of_mlflow_and_tracking():
    """report builds from a results table; the MLflow layout is tracking's alone."""
    code = (
        "import sys, ablate.report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'ray')\n"
        "             or m == 'ablate.tracking'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def log_curve_sweep(uri: str, eval_every: int = 2, num_classes: int = 4) -> None:
    """3 configurations x 2 seeds of 6 epochs, the kNN monitor measured every ``eval_every``
    epochs and carried in between (as ``train`` reports it); one trial stopped at epoch 3."""
    tracker = SweepTracker(uri, "curves", execution="e1")
    configs = [(["crop"], "linear"), (["color"], "linear"), (["crop", "color"], "nonlinear")]
    with tracker:
        for c, (ops, head) in enumerate(configs):
            for seed in (0, 1):
                varying = {"augment.ops": ops, "model.head": head}
                config: dict = {
                    "train": {"epochs": 6, "seed": seed},
                    "eval": {"eval_every": eval_every},
                    "data": {"num_classes": num_classes},
                }
                for key, value in varying.items():
                    set_dotted(config, key, value)
                trial = f"{c}-{seed}"
                tracker.start_trial(trial, resolve(config), varying, seed)
                last = 3 if (c, seed) == (0, 1) else 6
                knn, result = 0.0, {}
                for epoch in range(1, last + 1):
                    if epoch % eval_every == 0 or epoch == 6:
                        knn = 0.2 + 0.1 * c + 0.02 * epoch + 0.01 * seed  # measured
                    result = {"epoch": epoch, "val/knn_top1": knn, "train/loss": 5.0 - epoch}
                    if epoch == 6:
                        result.update(
                            {"status": "completed", "val/probe_top1": knn, "val/probe_top5": 0.99}
                        )
                    tracker.log_epoch(trial, result)
                outcome = trial_outcome(result, 6)
                tracker.finish_trial(trial, outcome.status, detail=outcome.detail)


def test_learning_curves_one_colour_per_configuration_and_measured_epochs_only(tmp_path):
    uri = default_tracking_uri(tmp_path)
    log_curve_sweep(uri, eval_every=2)
    results = load_results(MlflowClient(uri), "curves")
    # The reader keeps the epochs the monitor was measured at (every 2nd and the last).
    by_name = {row["run_name"]: results.histories[row["run_id"]] for row in results.rows}
    assert [e for e, _ in by_name["crop | head=linear | seed=0"]] == [2, 4, 6]
    assert [e for e, _ in by_name["crop | head=linear | seed=1"]] == [2]  # stopped at 3
    fig = learning_curves_figure(
        results.rows, results.histories, results.varying_keys, "val/knn_top1"
    )
    (ax,) = fig.axes
    drawn = [line for line in ax.get_lines() if len(line.get_xdata()) > 0]
    assert {int(x) for line in drawn for x in line.get_xdata()} <= {2, 4, 6}  # no carried epoch
    legends = [a for a in ax.get_children() if isinstance(a, Legend)]
    titles = {legend.get_title().get_text(): legend for legend in legends}
    keys = configuration_keys(results.varying_keys)
    labels = [t.get_text() for t in titles["configuration"].get_texts()]
    expected = {configuration_label([row[k] for k in keys], keys) for row in results.rows}
    assert len(labels) == 3 and set(labels) == expected
    assert "augment.ops=crop+color, model.head=nonlinear" in labels  # the tables' words
    colours = [to_hex(h.get_color()) for h in titles["configuration"].legend_handles]
    assert len(set(colours)) == 3
    # Each trial's curve has its configuration's colour; both seeds share it.
    for row in results.rows:
        label = configuration_label([row[k] for k in keys], keys)
        colour = colours[labels.index(label)]
        (ys,) = [v for _, v in results.histories[row["run_id"]][:1]]
        assert any(
            to_hex(line.get_color()) == colour and math.isclose(line.get_ydata()[0], ys)
            for line in drawn
        )
    outcomes = [t.get_text() for t in titles["outcome"].get_texts()]
    assert outcomes == ["completed", "stopped"]
    report = build_report(results, tmp_path / "report")
    assert (tmp_path / "report" / "figures" / "learning_curves.png").exists()
    assert report.figures


def test_top5_columns_only_where_k_is_below_the_number_of_classes(tmp_path):
    for classes, shown in ((4, False), (8, True)):
        uri = default_tracking_uri(tmp_path / str(classes))
        log_curve_sweep(uri, num_classes=classes)
        results = load_results(MlflowClient(uri), "curves")
        assert results.num_classes == classes  # from the runs' data params
        text = summary_markdown(results, [], [], "val/knn_top1")
        best = text.split("## Best configurations")[1].split("\n## ")[0]
        assert "`val/probe_top1`" in best
        assert ("`val/probe_top5`" in best) is shown, best
    ten = SweepResults("x", "p", results.rows, results.varying_keys, {}, num_classes=10)
    assert "`val/probe_top5`" in summary_markdown(ten, [], [], "val/knn_top1")


def test_experiment_opens_as_model_training_on_the_trials_view(tmp_path):
    uri = default_tracking_uri(tmp_path)
    log_curve_sweep(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("curves")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    state = json.loads(view["state"])
    assert state["searchFilter"] == "tags.`ablate.role` = 'trial'"
    assert state["orderByKey"] == "metrics.`val/knn_top1`" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`val/knn_top1`"
    # The varying keys of the trials became columns as they appeared.
    assert {"params.`augment.ops`", "params.`model.head`"} <= set(state["selectedColumns"])
    # The filter of the view selects exactly the trial runs.
    trials = client.search_runs([experiment.experiment_id], state["searchFilter"])
    assert len(trials) == 6
    page = sweep_page(uri, "curves")
    assert page == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        f"?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    )
