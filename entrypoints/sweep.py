"""Run an ablation sweep from a search-space YAML.

    python -m entrypoints.sweep search_spaces/quickstart.yaml [--set KEY=VALUE ...]
        [--dry-run] [--resume] [--address ADDR] [--storage-path PATH] [--verbose]

On a cluster: ``ray job submit --working-dir . -- python -m entrypoints.sweep SPEC.yaml``
(``$RAY_ADDRESS`` is set there, so the sweep joins that cluster). ``--dry-run`` prints the trial
table, the estimated compute and wall-clock time without importing Ray. ``--resume`` with more
replicates (or grid values) runs only the new trials (``ablate.rounds``). The console shows
one live view of the trials (plain lines when not a terminal or in a Ray job); Ray's own output
goes to ``<storage>/<name>/logs/sweep.log``, named at the end (``--verbose``: on the console,
with Tune's status table).

Ctrl+C once stops the sweep the way Ray Tune does: it saves its state, ends the unfinished
trials' MLflow runs KILLED and prints the summary; ``--resume`` continues it. Ctrl+C again
while it shuts down ends it at once with one line (exit status 130), the runs still marked
KILLED; a third exits without waiting for anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ablate import preflight
from ablate.spec import SpecError, load_sweep

#: Exit statuses, as ``--help`` lists them.
EXIT_STATUSES = {
    0: "every trial ran (completed, stopped early or diverged)",
    1: "the sweep ran but a trial failed (raised); the summary names it",
    2: "the spec, an override or the cluster's resources cannot work, or the sweep's saved "
    "state is damaged or another driver runs it; nothing was started",
    3: "the sweep ended with planned trials missing or interrupted, or a trial could not be "
    "placed for resources.schedule_timeout_s (the message names who holds the cluster); "
    "rerun with --resume",
    74: "storage full or read-only (the MLflow store, results, checkpoints or the report): "
    "the message names the path; free space, then rerun with --resume",
    130: "interrupted by a second Ctrl+C while the sweep shut down; rerun with --resume",
}
EXIT_UNFINISHED = 3
EXIT_STORAGE = 74  # ablate.tracking.StorageError.exit_status (sysexits' EX_IOERR)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process that SIGINT ended


def _epilog() -> str:
    lines = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_STATUSES.items())
    return f"exit status:\n{lines}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.sweep",
        description="Run a SimCLR ablation sweep (Ray Tune + Ray Train) from a YAML spec. "
        "Reference of the YAML: docs/search_space.md.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--dry-run",
        action="store_true",
        help="print the trials and the compute and wall-clock estimates; run nothing",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep of the same name; with more replicates or grid "
        "values (e.g. --set replicates=5), run only the new trials",
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


def _interrupt_quietly() -> None:
    """Make Ctrl+C outside Ray Tune's own handler one ``KeyboardInterrupt``, then an immediate
    exit.

    Ray Tune handles the first Ctrl+C of a run (a graceful stop) and then puts back the handler
    it found, this one: the second Ctrl+C raises ``KeyboardInterrupt``, which unwinds the sweep
    (the tracker ends the runs KILLED, Ray shuts down) into ``main``'s one line; a third,
    while that unwinds, exits at once (status 130) with what is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_now(signum: int, frame: Any) -> None:
        print("interrupted again: exiting now", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, exit_now)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def _storage_failure(error: BaseException, results: str | None) -> Any:
    """The ``ablate.tracking.StorageError`` that ``error`` amounts to (a full or read-only
    disk under the results, checkpoints or MLflow store), else None."""
    if "ablate.tracking" not in sys.modules and "ray" not in sys.modules:
        return None  # nothing has written yet: no storage to fill
    from ablate.tracking import storage_error

    return storage_error(error, results, "results")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.storage_path:
        overrides.append(f"storage.path={args.storage_path}")
    plan = None
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

        _interrupt_quietly()
        done = run_sweep(
            plan, resume=args.resume, address=args.address, checked=checked, verbose=args.verbose
        )
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: the sweep stopped; its unfinished MLflow runs are marked KILLED. "
            "Rerun the same command with --resume to continue it.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as error:
        stalled = sys.modules.get("ablate.sweep")  # only run_sweep raises it, once imported
        if stalled is not None and isinstance(error, stalled.SweepStalledError):
            print(f"error: {error}", file=sys.stderr)
            return EXIT_UNFINISHED
        failure = _storage_failure(error, plan.experiment_dir if plan is not None else None)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_STORAGE
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
    if done.unfinished:
        print(
            f"{done.unfinished} planned trial(s) did not finish; rerun with --resume",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
