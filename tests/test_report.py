"""Ablation reports: runs read back from a real MLflow SQLite store (``tracking``), and the
tables, figures, findings and summary built from a results table (``report``)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

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
    plot_generic,
    plot_temperature,
    replicate_std,
    stopped_while_improving,
    summary_markdown,
    write_results_table,
)
from ablate.tracking import SweepTracker, default_tracking_uri, publish_report
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
    assert "| crop+color is the best pair of augmentations | Figure 5 | **yes** |" in text
    assert text.count(NOT_COVERED) == 2  # the head and batch-size findings
    assert "stopped by the scheduler (ASHA) at epoch 1 of 3" in text
    assert "![augmentation_matrix](figures/augmentation_matrix.png)" in text
    client = MlflowClient(aug_sweep[0])
    logged = {a.path for a in client.list_artifacts(aug_sweep[1], "report")}
    assert {"report/results.parquet", "report/summary.md", "report/figures"} <= logged
    figures = {a.path for a in client.list_artifacts(aug_sweep[1], "report/figures")}
    assert "report/figures/augmentation_matrix.svg" in figures


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
    assert "[yes] crop+color is the best pair" in capsys.readouterr().out
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
    assert verdicts == {"Figure 5": NOT_COVERED, "Figure 8": "yes", "Figure 9": "yes"}


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


def test_crop_color_finding():
    yes = [
        row(score=s, **{"augment.ops": ops})
        for ops, s in [("crop+color", 0.8), ("color+crop", 0.7), ("crop+blur", 0.6)]
    ]
    assert check_crop_color(yes).verdict == "yes"
    assert "crop+color 0.7500" in check_crop_color(yes).evidence  # both orders pooled
    no = [*yes, row(score=0.9, **{"augment.ops": "crop+cutout"})]
    finding = check_crop_color(no)
    assert finding.verdict == "no" and "best other pair crop+cutout 0.9000" in finding.evidence
    single = [
        row(score=0.8, **{"augment.ops": "crop+color"}),
        row(score=0.5, **{"augment.ops": "crop"}),
    ]
    assert check_crop_color(single).verdict == NOT_COVERED


def test_composition_finding():
    ops_scores = [("crop+color", 0.9), ("color+crop", 0.8), ("crop", 0.3), ("color", 0.84)]
    yes = [row(score=s, **{"augment.ops": ops}) for ops, s in ops_scores]
    finding = check_composition(yes)
    assert finding.verdict == "yes", finding
    assert "crop+color 0.8500" in finding.evidence  # both orders pooled
    assert "crop alone 0.3000" in finding.evidence and "color alone 0.8400" in finding.evidence
    no = [*yes, row(score=0.88, **{"augment.ops": "color"})]  # color alone now 0.86: not beaten
    assert check_composition(no).verdict == "no"
    # A pair of other ops, or crop+color with no single op to compare with: not covered.
    other = [
        row(score=0.9, **{"augment.ops": "crop+color"}),
        row(score=0.5, **{"augment.ops": "blur"}),
    ]
    assert check_composition(other).verdict == NOT_COVERED
    assert check_composition(yes, varying_keys=["model.head"]).verdict == NOT_COVERED
    # Checked at each value of the other varying keys too.
    by_head = [
        row(score=s, **{"augment.ops": ops, "model.head": head})
        for head, scores in (("linear", (0.9, 0.3, 0.8)), ("nonlinear", (0.7, 0.3, 0.8)))
        for ops, s in zip(("crop+color", "crop", "color"), scores, strict=True)
    ]
    finding = check_composition(by_head, ["augment.ops", "model.head"])
    assert "holds in 1 of 2 settings of model.head" in finding.evidence, finding.evidence


def test_head_order_finding():
    keys = ["model.head", "model.out_dim"]
    yes = [
        row(score=s, **{"model.head": h, "model.out_dim": d})
        for h, s in (("nonlinear", 0.7), ("linear", 0.6), ("none", 0.5))
        for d in (32, 128)
    ]
    finding = check_head_order(yes, keys)
    assert finding.verdict == "yes" and "holds in 2 of 2 settings" in finding.evidence
    no = [r if r["model.head"] != "none" else {**r, "val/knn_top1": 0.65} for r in yes]
    assert check_head_order(no, keys).verdict == "no"  # none beats linear
    only_one = [r for r in yes if r["model.head"] == "nonlinear"]
    assert check_head_order(only_one, keys).verdict == NOT_COVERED


def test_replicate_noise_is_reported():
    keys = ["model.head"]
    rows = [
        row(score=s, **{"model.head": h})
        for h, scores in (("nonlinear", (0.60, 0.70)), ("linear", (0.58, 0.62)))
        for s in scores
    ]
    assert replicate_std(rows, keys) == pytest.approx(math.sqrt((0.005 + 0.0008) / 2))
    finding = check_head_order(rows, keys)
    assert finding.verdict == "yes"  # 0.65 > 0.60 ...
    assert "within one replicate std" in finding.evidence  # ... but a gap of 0.05 < 0.054
    apart = [
        {**r, "val/knn_top1": r["val/knn_top1"] - 0.2} if r["model.head"] == "linear" else r
        for r in rows
    ]
    assert "within one" not in check_head_order(apart, keys).evidence
    single = [rows[0], rows[2]]
    assert "no replicates" in check_head_order(single, keys).evidence


def test_batch_size_finding():
    keys = ["train.batch_size", "train.epochs"]
    yes = [
        row(score=0.4 + 0.001 * b / 64 + 0.01 * e, **{"train.batch_size": b, "train.epochs": e})
        for b in (64, 128, 256)
        for e in (100, 200)
    ]
    finding = check_batch_size(yes, keys)
    assert finding.verdict == "yes" and finding.evidence.count("[monotone") == 2
    flipped = [
        {**r, "val/knn_top1": 1.0 - r["val/knn_top1"]} if r["train.epochs"] == 200 else r
        for r in yes
    ]
    assert check_batch_size(flipped, keys).verdict == "no"
    assert check_batch_size(yes, ["train.epochs"]).verdict == NOT_COVERED
    # epochs fixed by the spec: one budget, taken from the planned epochs
    fixed = [row(score=0.1 * i, **{"train.batch_size": b}) for i, b in enumerate((64, 256))]
    assert check_batch_size(fixed, ["train.batch_size"]).verdict == "yes"
    verdicts = [f.verdict for f in check_findings(fixed, ["train.batch_size"])]
    assert verdicts == [NOT_COVERED, NOT_COVERED, NOT_COVERED, "yes"]


def test_choose_figures_from_varying_keys():
    aug = [row(score=0.5, **{"augment.ops": "crop+color"})]
    assert [name for name, _ in choose_figures(["augment.ops"], aug)] == [
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
