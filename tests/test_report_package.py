"""The report package: pure of Ray and MLflow, one ranking shared with the sweep's
``summary.json``, and a user's own figures and findings named ``module.path:factory``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ablate.registry import PluginImportError, UnknownComponentError
from ablate.report import (
    FIGURES,
    FINDINGS,
    SweepResults,
    build_report,
    choose_figures,
    rank_configurations,
    summary_markdown,
    validate_plugins,
)
from ablate.vocabulary import format_value


def test_report_builds_from_a_results_table_without_ray_mlflow_or_tracking(tmp_path):
    """The package imports neither Ray nor MLflow, not even through ablate.data or tracking,
    and builds a whole report in a process that has neither loaded."""
    code = textwrap.dedent(
        f"""
        import sys
        import ablate.report
        from ablate.report import SweepResults, build_report

        rows = [
            {{"run_id": f"r{{i}}", "run_name": f"r{{i}}", "status": "completed",
              "status_detail": "", "seed": i % 2, "model.head": head,
              "val/knn_top1": 0.5 + 0.1 * i}}
            for i, head in enumerate(["linear", "linear", "nonlinear", "nonlinear"])
        ]
        results = SweepResults("e", "p", rows, ["model.head"], {{"r0": [(1, 0.4), (2, 0.5)]}})
        report = build_report(results, {str(tmp_path / "out")!r})
        assert report.summary_path.is_file() and report.figures
        loaded = sorted(
            m for m in sys.modules
            if m.split(".")[0] in ("ray", "mlflow")
            or m.startswith(("ablate.tracking", "ablate.data", "ablate.sweep"))
        )
        print(loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- one ranking


def _trials() -> list[dict]:
    """(augment.ops, model.head, seed, status, val/knn_top1) of a sweep where ties, missing
    values and the mode decide the order."""
    return [
        # crop | linear and color | linear tie exactly (their sums differ in float order).
        (["crop"], "linear", 0, "completed", 0.1),
        (["crop"], "linear", 1, "completed", 0.2),
        (["crop"], "linear", 2, "completed", 0.3),
        (["color"], "linear", 0, "completed", 0.3),
        (["color"], "linear", 1, "completed", 0.2),
        (["color"], "linear", 2, "completed", 0.1),
        (["crop", "color"], "nonlinear", 0, "completed", 0.9),
        (["crop", "color"], "nonlinear", 1, "stopped", 0.05),  # early score: not compared
        (["crop", "color"], "linear", 0, "completed", None),  # reported nothing
        (["crop", "color"], "linear", 1, "failed", None),
        (["cutout"], "none", 0, "stopped", 0.01),  # nothing completed, whatever its score
        (["color"], "nonlinear", 0, "completed", 0.4),
        (["color"], "nonlinear", 1, "completed", 0.6),
    ]


def _records() -> list[dict]:
    """The trials as ``sweep.trial_records`` hands them to ``summarize`` (op lists as lists)."""
    return [
        {
            "trial_id": f"t{i}",
            "varying": {"augment.ops": ops, "model.head": head},
            "replicate": seed,
            "status": status,
            "epoch": 3 if status == "completed" else 1,
            "overhead_seconds": 1.0,
            "metrics": {} if knn is None else {"val/knn_top1": knn},
        }
        for i, (ops, head, seed, status, knn) in enumerate(_trials())
    ]


def _rows() -> list[dict]:
    """The same trials as ``tracking.run_row`` reads them back (op lists as ``crop+color``),
    in another order than the records."""
    rows = [
        {
            "trial_id": f"t{i}",
            "run_id": f"r{i}",
            "run_name": f"t{i}",
            "replicate": seed,
            "seed": seed,
            "status": status,
            "status_detail": "",
            "augment.ops": format_value(ops),
            "model.head": head,
            "val/knn_top1": knn,
        }
        for i, (ops, head, seed, status, knn) in enumerate(_trials())
    ]
    return rows[::-1]


def _markdown_order(text: str) -> list[tuple[str, str]]:
    """(augment.ops, model.head) of each row of summary.md's ranking, in order."""
    best = text.split("## Best configurations")[1].split("\n## ")[0]
    cells = [line.split(" | ") for line in best.splitlines() if line.startswith("| ")]
    ranked = [c for c in cells if c[0].lstrip("| ").isdigit()]
    assert [int(c[0].lstrip("| ")) for c in ranked] == list(range(1, len(ranked) + 1))
    return [(c[1], c[2]) for c in ranked]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_summary_json_and_summary_md_rank_alike(mode):
    """summarize (summary.json) and summary_markdown (summary.md) share rank_configurations:
    the same order whatever the order of trials, with exact ties, configurations without a
    completed value (last) and both modes."""
    from ablate.spec import parse_sweep
    from ablate.sweep import summarize

    plan = parse_sweep(
        "name: t\n"
        f"scheduler: {{mode: {mode}}}\n"
        "space: {augment.ops: {grid: [[crop], [color]]}, model.head: {grid: [linear]}}",
        source="t.yaml",
    )
    assert plan.mode == mode and plan.metric == "val/knn_top1"
    json_order = [
        (format_value(r["varying"]["augment.ops"]), r["varying"]["model.head"])
        for r in summarize(plan, _records())
    ]
    results = SweepResults("e", "p", _rows(), ["augment.ops", "model.head"])
    md_order = _markdown_order(summary_markdown(results, [], [], plan.metric, mode))
    assert md_order == json_order
    measured = [
        ("crop+color", "nonlinear"),  # 0.9
        ("color", "nonlinear"),  # 0.5
        ("color", "linear"),  # 0.2, tied: by value, "color" < "crop"
        ("crop", "linear"),  # 0.2
    ]
    if mode == "min":
        measured = [*measured[2:], measured[1], measured[0]]
    assert json_order == [*measured, ("crop+color", "linear"), ("cutout", "none")]


def test_rank_configurations_ignores_row_order_and_list_spelling():
    rows = [dict(r) for r in _rows()]
    by_text = rank_configurations(rows, ["augment.ops", "model.head"], "val/knn_top1", "min")
    as_lists = [{**r, "augment.ops": r["augment.ops"].split("+")} for r in rows[::-1]]
    by_list = rank_configurations(as_lists, ["augment.ops", "model.head"], "val/knn_top1", "min")
    assert [format_value(c.values[0]) for c in by_text] == [
        format_value(c.values[0]) for c in by_list
    ]
    first = by_text[0]
    assert first.stats.n == 3 and first.stats.mean == pytest.approx(0.2)
    assert by_text[-1].stats is None and [rows[i]["trial_id"] for i in by_text[-1].members] == [
        "t10"
    ]
    with pytest.raises(ValueError, match="mode"):
        rank_configurations(rows, ["model.head"], "val/knn_top1", "best")


# ----------------------------------------------------------------------------- plugins

PLUGIN = '''
"""A user's report figure and finding, outside the package."""
from matplotlib.figure import Figure

from ablate.report import FigureKind, Finding, plot_generic


def trials_per_status(results, metric):
    """Bars: how many trials ended in each status."""
    counts = {}
    for row in results.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    figure = Figure()
    figure.add_subplot().bar(list(counts), list(counts.values()))
    return figure


def with_pyplot(results, metric):
    """Drawn with pyplot, as many users do: pyplot keeps the figure until it is closed."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([row[metric] for row in results.rows if metric in row])
    plt.figure()  # one more pyplot figure, left open and not returned
    return figure


def nothing(results, metric):
    return None


def head_lines(keys, rows, metric, covered):
    return [("head_lines", ("model.head",))] if "model.head" in keys else []


#: Covers model.head, so the generic plot of the keys leaves it alone.
head_kind = FigureKind(
    head_lines,
    lambda results, keys, stem, metric: plot_generic(results.rows, list(keys), stem, metric),
)


def linear_beats_none(rows, varying_keys, metric, mode):
    """linear beats none (a claim of my own)."""
    return Finding("linear beats none", "my notes", "holds", "by eye", "holds")


def not_a_finding(rows, varying_keys, metric, mode):
    return "holds"


NOT_CALLABLE = 3
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_report_plugins.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_report_plugins"
    sys.modules.pop("my_report_plugins", None)


def test_a_users_figures_and_findings_join_the_report(tmp_path, plugin_module):
    rows = [
        {"run_id": f"r{i}", "run_name": f"r{i}", "status": status, "status_detail": ""}
        | {"seed": i % 2, "model.head": head, "optim.base_lr": lr, "val/knn_top1": 0.1 * i}
        for i, (head, lr, status) in enumerate(
            [
                ("linear", 0.1, "completed"),
                ("none", 0.1, "completed"),
                ("linear", 0.2, "completed"),
                ("none", 0.2, "failed"),
            ]
        )
    ]
    results = SweepResults("e", "p", rows, ["model.head", "optim.base_lr"])
    figures = [
        f"{plugin_module}:trials_per_status",
        f"{plugin_module}:nothing",
        f"{plugin_module}:with_pyplot",
    ]
    findings = [f"{plugin_module}:linear_beats_none", "head_order"]  # a built-in runs once
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    report = build_report(results, tmp_path / "out", figures=figures, findings=findings)
    names = {p.name for p in report.figures}
    assert {"my_report_plugins_trials_per_status.png", "projection_head.png"} <= names
    assert "my_report_plugins_with_pyplot.png" in names
    # What a user's figure opened with pyplot is closed: the driver would keep each report's.
    assert plt.get_fignums() == open_before
    assert not any("nothing" in name for name in names)
    assert [f.claim for f in report.findings][-1] == "linear beats none"
    assert len(report.findings) == len(FINDINGS) + 1
    text = report.summary_path.read_text()
    assert "| linear beats none | my notes | **holds** |" in text
    assert "![my_report_plugins_trials_per_status]" in text
    # A FigureKind plugin covers its keys: the generic plot is then of the others only.
    chosen = choose_figures(
        ["model.head", "optim.base_lr"], rows, extra=[f"{plugin_module}:head_kind"]
    )
    assert [name for name, _ in chosen] == [
        "projection_head",
        "head_lines",
        "by_model.head_x_optim.base_lr",
        "learning_curves",
    ]
    sources = [r | {"data.name": name} for r, name in zip(rows, "abab", strict=True)]
    chosen = choose_figures(
        ["model.head", "optim.base_lr", "data.name"], sources, extra=[f"{plugin_module}:head_kind"]
    )
    assert [name for name, _ in chosen if name.startswith("by_")] == [
        "by_optim.base_lr",
        "by_data.name",
    ]


def test_report_plugin_names_are_checked_before_anything_is_written(tmp_path, plugin_module):
    with pytest.raises(UnknownComponentError, match="did you mean 'learning_curves'"):
        validate_plugins(figures=["learning_curve"])
    with pytest.raises(UnknownComponentError, match=r"report finding.*head_order"):
        validate_plugins(findings=["head_ordre"])
    with pytest.raises(PluginImportError, match="no_such_module"):
        validate_plugins(findings=["no_such_module:check"])
    with pytest.raises(TypeError, match="NOT_CALLABLE"):
        validate_plugins(figures=[f"{plugin_module}:NOT_CALLABLE"])
    results = SweepResults("e", "p", [], [])
    with pytest.raises(UnknownComponentError):
        build_report(results, tmp_path / "out", findings=["crop_colour"])
    assert not (tmp_path / "out").exists()
    # One that imports but returns no Finding is found only when run: left out and named.
    built = build_report(results, tmp_path / "out2", findings=[f"{plugin_module}:not_a_finding"])
    assert len(built.failed) == 1 and "not_a_finding returned str" in built.failed[0]
    assert "not_a_finding returned str" in built.summary_path.read_text()
    assert "batch_size" in FINDINGS.describe() and "learning_curves" in FIGURES.describe()
