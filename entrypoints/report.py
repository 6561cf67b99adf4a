"""Write the report of a sweep from its MLflow runs.

    python -m entrypoints.report --experiment NAME [--run PARENT_RUN_ID]
        [--tracking-uri URI] [--out DIR] [--metric val/knn_top1] [--mode max]
        [--figure NAME ...] [--finding NAME ...] [--no-log]

Rank with the sweep's own ``scheduler.metric`` and ``scheduler.mode`` to get the ranking of its
``summary.json``. The sweep's own figures and findings (its spec's ``report`` section, recorded
on its parent run) are drawn and checked again; ``--figure`` / ``--finding`` add more
(registered names or ``module.path:factory``, importable from the working directory). The
tracking URI defaults to $MLFLOW_TRACKING_URI; a sweep with the default store keeps it at
``sqlite:////<storage_path>/mlflow.db``.

Exit status 1: one of the figures or findings raised while it was drawn or checked (the
report is written without it, and names it); 2: no such experiment or sweep run, or a figure
or finding that is unknown, does not import or does not fit; 74: the output directory, the
MLflow store or its artifact location is full or read-only (the message names it).
"""

from __future__ import annotations

import argparse
import os
import sys

from ablate.vocabulary import DEFAULT_RANKING_METRIC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.report", description=__doc__)
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the sweep's)")
    parser.add_argument("--run", default=None, help="parent run id (default: the latest sweep)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--out", default=None, help="output directory")
    parser.add_argument("--metric", default=DEFAULT_RANKING_METRIC, help="ranking metric")
    parser.add_argument("--mode", default="max", choices=("max", "min"), help="ranking direction")
    parser.add_argument(
        "--figure",
        action="append",
        default=[],
        metavar="NAME",
        help="a figure to draw besides the sweep's own (module.path:factory); repeatable",
    )
    parser.add_argument(
        "--finding",
        action="append",
        default=[],
        metavar="NAME",
        help="a finding to check besides the sweep's own (module.path:factory); repeatable",
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error(
            "no tracking URI: pass --tracking-uri (a sweep's default store is "
            "sqlite:////<storage_path>/mlflow.db) or set MLFLOW_TRACKING_URI"
        )
    # Imported after the arguments are read: ablate.tracking imports MLflow (not Ray).
    from ablate.report import SHOWN_COMPARISONS, format_comparison
    from ablate.tracking import ReportComponentError, StorageError, publish_report

    try:
        report = publish_report(
            args.tracking_uri,
            args.experiment,
            args.run,
            out_dir=args.out,
            metric=args.metric,
            mode=args.mode,
            figures=args.figure,
            findings=args.finding,
            recorded=True,
            log_to_mlflow=not args.no_log,
        )
    except (LookupError, ReportComponentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(f"report of parent run {report.results.parent_run_id}: {report.out_dir}")
    print(f"  {len(report.results.rows)} trials -> {report.results_path}")
    for finding in report.findings:
        print(f"  [{finding.verdict}] {finding.claim} ({finding.source})")
        comparisons = list(finding.comparisons.items())
        for name, comparison in comparisons[:SHOWN_COMPARISONS]:
            print(f"      {format_comparison(name, comparison)}")
        if len(comparisons) > SHOWN_COMPARISONS:
            print(f"      and {len(comparisons) - SHOWN_COMPARISONS} more in summary.md")
    print(f"  summary: {report.summary_path}")
    for line in report.failed:
        print(f"error: {line}; left out of the report", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
