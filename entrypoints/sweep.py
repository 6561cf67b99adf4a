"""Run an ablation sweep from a search-space YAML.

    python -m entrypoints.sweep search_spaces/quickstart.yaml [--set KEY=VALUE ...]
        [--dry-run] [--resume] [--address ADDR] [--storage-path PATH]

On a cluster: ``ray job submit --working-dir . -- python -m entrypoints.sweep SPEC.yaml``
(``$RAY_ADDRESS`` is set there, so the sweep joins that cluster). Exit status 2: the spec, an
override or the cluster's resources cannot work; nothing was started. 1: the sweep ran but a
trial failed (raised). ``--dry-run`` prints the trial table and the estimated compute without
importing Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from ablate.spec import (
    SpecError,
    Sweep,
    check_data_sources,
    check_storage_path,
    describe_plan,
    load_sweep,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.sweep",
        description="Run a SimCLR ablation sweep (Ray Tune + Ray Train) from a YAML spec. "
        "Reference of the YAML: docs/search_space.md.",
    )
    parser.add_argument("spec", help="the search-space YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec or base-config key (YAML value), e.g. --set train.epochs=5; "
        "repeatable",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the trials and compute estimate; run nothing"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep of the same name"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else local)"
    )
    parser.add_argument(
        "--storage-path", default=None, help="results root (same as --set storage.path=PATH)"
    )
    return parser.parse_args(argv)


def make_tracker(sweep: Sweep) -> Any:
    """The sweep's MLflow tracker, its store checked before anything starts (``None`` when
    the spec turns tracking off). An unreachable store exits with status 2."""
    if not sweep.spec.tracking.enabled:
        return None
    from ablate import tracking

    uri = tracking.resolve_tracking_uri(sweep.spec.tracking.uri, sweep.storage_path)
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    return tracking.SweepTracker(
        uri,
        sweep.spec.tracking.experiment or sweep.name,
        execution=sweep.name,
        spec_text=sweep.text,
        storage_path=sweep.storage_path,
    )


def write_report(tracker: Any, sweep: Sweep) -> None:
    """Results table, figures and summary of this execution, beside the sweep's results."""
    from ablate.report import build_report

    local = "://" not in sweep.experiment_dir
    report = build_report(
        tracker.tracking_uri,
        tracker.sweep,
        tracker.parent_run_id,
        out_dir=os.path.join(sweep.experiment_dir, "report") if local else None,
    )
    print(f"report: {report.summary_path}")
    print(f"browse: mlflow ui --backend-store-uri {tracker.tracking_uri}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.storage_path:
        overrides.append(f"storage.path={args.storage_path}")
    try:
        sweep = load_sweep(args.spec, overrides)
        if args.dry_run:
            print(describe_plan(sweep))
            return 0
        # Bad storage or missing data files: exit 2 before the tracking store or Ray is touched.
        check_storage_path(sweep)
        check_data_sources(sweep)
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            # A local Ray: keep every port on loopback (read when Ray is first imported, which
            # the tracker's module does).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        tracker = make_tracker(sweep)
        # Imports Ray: only when something will run.
        from ablate.sweep import check_experiment_dir, run_sweep

        # An existing sweep is refused (or a changed plan on --resume) before the tracker
        # reopens that sweep's MLflow runs, which would otherwise be closed as FAILED.
        check_experiment_dir(sweep, args.resume)
        callbacks = []
        if tracker is not None:
            from ablate.tracking import MlflowCallback

            callbacks.append(MlflowCallback(tracker))
        with tracker if tracker is not None else contextlib.nullcontext():
            rows = run_sweep(sweep, resume=args.resume, address=args.address, callbacks=callbacks)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if tracker is not None:
        write_report(tracker, sweep)
    failed = sum(row["failed"] for row in rows)
    if failed:
        print(f"{failed} trial(s) failed; see the summary above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
