"""Per-trial start-up: the sweep's own overhead line for this tree vs a baseline revision.

Runs the quickstart sweep (6 trials, 2 at a time on 2 CPUs) with ``--set train.epochs=1``, so
that start-up dominates, through ``python -m entrypoints.sweep`` exactly as a user does, and
reads ``summary.json``: ``overhead_seconds`` (each trial's start -> its first training step,
the figure the sweep's summary prints) and ``wall_seconds`` (the whole Tuner run). With
``--baseline REV`` the same sweep runs from a ``git worktree`` of that revision, the two sides
alternating (baseline, this tree, baseline, ...) so that both see the same machine.

    python benchmarks/startup.py [--baseline 901dad1] [--runs 2] [--epochs 1]

Each run prints a JSON line; the last line is one JSON object: {"benchmark": "startup",
"overhead_mean_s": ..., "baseline_overhead_mean_s": ..., "overhead_ratio": this / baseline,
"wall_ratio": ...}. Tracking is off (MLflow is not what is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(tree: Path, storage: Path, name: str, epochs: int) -> dict[str, float]:
    """One quickstart sweep run from ``tree``; its overhead and wall seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),  # Ray's workers import this tree's ablate, not the installed
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    command = [
        sys.executable,
        "-m",
        "entrypoints.sweep",
        "search_spaces/quickstart.yaml",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        f"name={name}",
        "--set",
        "tracking.enabled=false",
        "--storage-path",
        str(storage),
    ]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    summary = json.loads((storage / name / "summary.json").read_text())
    return {
        "overhead_mean_s": summary["overhead_seconds"]["mean"],
        "overhead_max_s": summary["overhead_seconds"]["max"],
        "wall_s": summary["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to compare with (a worktree of it)")
    parser.add_argument("--runs", type=int, default=2, help="sweeps per side")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ablate_startup_") as tmp:
        root = Path(tmp)
        sides = {"this": REPO}
        if args.baseline:
            baseline = root / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            sides = {"baseline": baseline, "this": REPO}
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        try:
            for run in range(args.runs):
                for side, tree in sides.items():
                    result = run_sweep(tree, root / "runs", f"{side}_{run}", args.epochs)
                    results[side].append(result)
                    print(json.dumps({"side": side, "run": run, **result}), flush=True)
        finally:
            if args.baseline:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(root / "baseline")],
                    cwd=REPO,
                    capture_output=True,
                )

    def mean(side: str, key: str) -> float:
        return statistics.fmean(r[key] for r in results[side])

    final: dict[str, object] = {
        "benchmark": "startup",
        "runs": args.runs,
        "epochs": args.epochs,
        "overhead_mean_s": round(mean("this", "overhead_mean_s"), 2),
        "wall_s": round(mean("this", "wall_s"), 1),
    }
    if args.baseline:
        final.update(
            baseline=args.baseline,
            baseline_overhead_mean_s=round(mean("baseline", "overhead_mean_s"), 2),
            baseline_wall_s=round(mean("baseline", "wall_s"), 1),
            overhead_ratio=round(
                mean("this", "overhead_mean_s") / mean("baseline", "overhead_mean_s"), 3
            ),
            wall_ratio=round(mean("this", "wall_s") / mean("baseline", "wall_s"), 3),
        )
    print(json.dumps(final))


if __name__ == "__main__":
    main()
