"""Run an ablation sweep from a search-space YAML.

    python -m entrypoints.sweep search_spaces/quickstart.yaml [--set KEY=VALUE ...]
        [--dry-run] [--resume] [--address ADDR] [--storage-path PATH] [--verbose]

On a cluster: ``ray job submit --working-dir . -- python -m entrypoints.sweep SPEC.yaml``
(``$RAY_ADDRESS`` is set there, so the sweep joins that cluster). Exit status 2: the spec, an
override or the cluster's resources cannot work; nothing was started. 1: the sweep ran but a
trial failed (raised). ``--dry-run`` prints the trial table and the estimated compute without
importing Ray. The console shows one live view of the trials (plain lines when not a terminal
or in a Ray job); Ray's own output goes to ``<storage>/<name>/logs/sweep.log``, named at the end
(``--verbose``: on the console, with Tune's status table).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ablate import preflight
from ablate.spec import SpecError, load_sweep


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
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's and Ray Train's output and Tune's status table instead of the "
        "compact view (they otherwise go to <storage>/<name>/logs/sweep.log)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.storage_path:
        overrides.append(f"storage.path={args.storage_path}")
    try:
        plan = load_sweep(args.spec, overrides)
        if args.dry_run:
            from ablate.dryrun import describe_plan

            print(describe_plan(plan))
            return 0
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            # A local Ray: keep every port on loopback (read when Ray is first imported, which
            # the tracking check does).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        checked = preflight.check(plan, args.resume)
        from ablate.sweep import run_sweep  # imports Ray: only when something will run

        done = run_sweep(
            plan, resume=args.resume, address=args.address, checked=checked, verbose=args.verbose
        )
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if done.report_path is not None:
        print(f"report: {done.report_path}")
    if done.tracking_uri is not None:
        print(f"browse: mlflow ui --backend-store-uri {done.tracking_uri}")
        from ablate.tracking import sweep_page

        page = sweep_page(done.tracking_uri, plan.spec.tracking.experiment or plan.name)
        if page is not None:
            print(f"  the trials, best first: {page}")
    if done.failed:
        print(f"{done.failed} trial(s) failed; see the summary above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
