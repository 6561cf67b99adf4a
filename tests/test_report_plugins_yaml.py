"""A sweep's own report figures and findings named in its YAML (``report:``): checked when the spec
is read and at preflight (exit 2 at ``report.figures[i]``), recorded on the parent MLflow run and
drawn again by ``entrypoints.report``; the example plugins (``examples/my_figure.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_report import log_trial

from ablate import preflight
from ablate.spec import SpecError, parse_sweep
from ablate.tracking import (
    ReportComponentError,
    SweepTracker,
    default_tracking_uri,
    publish_report,
    report_components,
)
from entrypoints.report import main as report_main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_report.yaml"
FIGURE = "examples.my_figure:seed_spread"
FINDING = "examples.my_figure:best_beats_median"
CLAIM = "the best configuration beats the median configuration"
FIGURE_FILE = "examples_my_figure_seed_spread.png"


def example_plan(*overrides: str):
    return parse_sweep(EXAMPLE.read_text(), source=str(EXAMPLE), overrides=list(overrides))


# ----------------------------------------------------------------------------- the spec


def test_the_example_names_its_figure_and_finding_and_passes_preflights_check():
    plan = example_plan()
    assert plan.spec.report.figures == [FIGURE]
    assert plan.spec.report.findings == [FINDING]
    preflight.check_report(plan)  # imports both and checks their kind
    assert "report" not in json.loads(plan.plan_json())  # plan.json (--resume) is unchanged


def test_a_spec_without_a_report_section_names_nothing():
    plan = example_plan("report={}")
    assert plan.spec.report.figures == [] and plan.spec.report.findings == []


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        ("report.figures=[tempreature]", "report.figures[0]", "did you mean 'temperature'?"),
        (
            f"report.findings=[{FINDING}, crop_colour]",
            "report.findings[1]",
            "did you mean 'crop_color'?",
        ),
        (f"report.figures=[{FIGURE}, {FIGURE}]", "report.figures[1]", "is listed twice"),
        ("report.figurs=[temperature]", "report.figurs", "did you mean 'figures'?"),
        ("tracking.enabled=false", "report.figures", "no report is written"),
    ],
)
def test_unknown_report_names_are_spec_errors_at_their_key(override, key, text):
    with pytest.raises(SpecError) as error:
        example_plan(override)
    assert error.value.key == key and text in error.value.message, str(error.value)


@pytest.mark.parametrize(
    ("override", "key", "text"),
    [
        (
            "report.figures=[examples.my_figure:seed_sprad]",
            "report.figures[0]",
            f"did you mean {FIGURE}?",
        ),
        (
            f"report.findings=[{FINDING}, examples.no_such_module:check]",
            "report.findings[1]",
            "cannot import module 'examples.no_such_module'",
        ),
        ("report.findings=[examples.my_figure:SOURCE]", "report.findings[0]", "is not callable"),
    ],
)
def test_a_plugin_that_does_not_import_or_fit_fails_preflight_at_its_key(override, key, text):
    plan = example_plan(override)  # spelled module.path:factory: imported at preflight only
    with pytest.raises(SpecError) as error:
        preflight.check_report(plan)
    assert error.value.key == key and text in error.value.message, str(error.value)


def test_an_unimportable_report_plugin_exits_2_before_ray_starts(tmp_path):
    code = (
        "import sys\n"
        "from entrypoints.sweep import main\n"
        f"rc = main([{str(EXAMPLE)!r}, '--set', 'report.figures=[examples.my_figur:seed_spread]', "
        f"'--storage-path', {str(tmp_path)!r}])\n"
        "print(rc, 'ray' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.stdout.split() == ["2", "False"], done.stderr[-3000:]
    assert "report.figures[0]" in done.stderr
    assert "cannot import module 'examples.my_figur'" in done.stderr
    assert not list(tmp_path.iterdir())  # no sweep directory, no lock, no store


# ----------------------------------------------------------------------------- MLflow round trip

#: val/knn_top1 of each temperature; seed 1 adds 0.02 to every one (paired: the seed cancels).
SCORES = {0.1: 0.70, 0.5: 0.60, 1.0: 0.40}
SPEC_TEXT = f"name: temps\nreport:\n  figures: [{FIGURE}]\n  findings: [{FINDING}]\n"


def log_temperature_sweep(uri: str, experiment: str, spec_text: str | None = SPEC_TEXT) -> str:
    tracker = SweepTracker(uri, experiment, execution="e1", spec_text=spec_text)
    tracker.start()
    for temperature, score in SCORES.items():
        for replicate in (0, 1):
            varying = {"loss.temperature": temperature}
            trial_id = f"t{temperature}-{replicate}"
            log_trial(tracker, trial_id, varying, replicate, score + 0.02 * replicate)
    tracker.close("FINISHED")
    return tracker.parent_run_id


@pytest.mark.timeout(240)
def test_publish_records_the_names_and_the_cli_rebuilds_with_them(tmp_path, capsys):
    uri = default_tracking_uri(tmp_path / "store")
    parent = log_temperature_sweep(uri, "temps")
    client = MlflowClient(uri)
    # Before any report: the names come from the spec the parent run logged.
    assert report_components(client, parent) == ([FIGURE], [FINDING])

    built = publish_report(
        uri, "temps", out_dir=tmp_path / "first", figures=[FIGURE], findings=[FINDING]
    )
    assert (tmp_path / "first" / "figures" / FIGURE_FILE).stat().st_size > 0
    assert (tmp_path / "first" / "figures" / FIGURE_FILE.replace(".png", ".svg")).is_file()
    mine = [f for f in built.findings if f.claim == CLAIM]
    assert len(mine) == 1 and mine[0].verdict == "holds", mine  # 0.1 beats 0.5 on both seeds
    assert mine[0].comparisons["0.1 − 0.5"].diff == pytest.approx(0.10)
    assert CLAIM in built.summary_path.read_text()
    tags = client.get_run(parent).data.tags
    assert json.loads(tags["ablate.report.figures"]) == [FIGURE]
    assert json.loads(tags["ablate.report.findings"]) == [FINDING]

    # The recorded names win over the spec: a rebuild with another finding records both.
    code = report_main(
        [
            *("--experiment", "temps", "--tracking-uri", uri, "--out", str(tmp_path / "again")),
            *("--finding", "crop_color", "--figure", FIGURE),
        ]
    )
    assert code == 0
    assert (tmp_path / "again" / "figures" / FIGURE_FILE).stat().st_size > 0
    assert f"[holds] {CLAIM} (examples/my_figure.py)" in capsys.readouterr().out
    assert report_components(client, parent) == ([FIGURE], [FINDING, "crop_color"])


@pytest.mark.timeout(240)
def test_the_cli_exits_2_on_a_bad_name_given_or_recorded(tmp_path, capsys):
    uri = default_tracking_uri(tmp_path / "store")
    parent = log_temperature_sweep(uri, "temps", spec_text="name: temps\n")
    assert report_components(MlflowClient(uri), parent) == ([], [])
    out = tmp_path / "report"
    base = ["--experiment", "temps", "--tracking-uri", uri, "--out", str(out)]
    assert report_main([*base, "--figure", "examples.my_figure:seed_sprad"]) == 2
    err = capsys.readouterr().err
    assert "report figure 'examples.my_figure:seed_sprad' (given)" in err
    assert f"did you mean {FIGURE}?" in err
    assert report_main([*base, "--finding", "crop_colour"]) == 2
    assert "did you mean 'crop_color'?" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    # A name recorded by the sweep that no longer imports (e.g. run from another directory).
    MlflowClient(uri).set_tag(parent, "ablate.report.findings", '["gone_module:check"]')
    assert report_main(base) == 2
    err = capsys.readouterr().err
    assert f"recorded on parent run {parent}" in err and "cannot import module 'gone_module'" in err
    with pytest.raises(ReportComponentError):
        publish_report(uri, "temps", recorded=True, log_to_mlflow=False, out_dir=out)


def test_the_example_finding_is_not_covered_below_three_configurations():
    from examples.my_figure import best_beats_median

    rows = [
        {"status": "completed", "val/knn_top1": 0.5 + 0.1 * t, "loss.temperature": t, "seed": s}
        for t in (0.1, 0.5)
        for s in (0, 1)
    ]
    finding = best_beats_median(rows, ["loss.temperature"], "val/knn_top1", "max")
    assert finding.label == "not covered" and finding.claim == CLAIM


BROKEN = """
def figure(results, metric):
    raise ValueError("no temperature axis in this sweep")


def finding(rows, varying_keys, metric, mode):
    return {"claim": "not a Finding"}
"""


@pytest.mark.timeout(240)
def test_a_figure_or_finding_that_raises_is_left_out_and_named(tmp_path, monkeypatch, capsys):
    """One broken figure of the user's must not cost the report of a sweep that ran: the rest
    is written, summary.md names what was left out and why, and the rebuild exits 1."""
    (tmp_path / "broken_report.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    uri = default_tracking_uri(tmp_path / "store")
    log_temperature_sweep(uri, "temps", spec_text="name: temps\n")
    out = tmp_path / "report"
    built = publish_report(
        uri,
        "temps",
        out_dir=out,
        figures=["broken_report:figure", FIGURE],
        findings=["broken_report:finding", FINDING],
        log_to_mlflow=False,
    )
    assert built.failed == [
        "figure `broken_report:figure` raised ValueError: no temperature axis in this sweep",
        "finding `broken_report:finding` raised TypeError: report finding "
        "broken_report:finding returned dict, not an ablate.report.Finding",
    ]
    assert (out / "figures" / FIGURE_FILE).stat().st_size > 0  # the others are all there
    assert [f.claim for f in built.findings].count(CLAIM) == 1
    summary = built.summary_path.read_text()
    assert "## Not in this report" in summary
    assert "- figure `broken_report:figure` raised ValueError" in summary
    base = ["--experiment", "temps", "--tracking-uri", uri, "--out", str(tmp_path / "again")]
    assert report_main([*base, "--figure", "broken_report:figure", "--no-log"]) == 1
    assert "error: figure `broken_report:figure` raised ValueError" in capsys.readouterr().err
    assert (tmp_path / "again" / "summary.md").is_file()
