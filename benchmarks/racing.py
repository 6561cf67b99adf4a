"""Racing against a fixed number of seeds: trials spent and the verdicts each reaches.

The quickstart (synthetic shapes, no download) at tiny settings runs twice on one local Ray:
``replicates: {min: MIN, max: MAX}`` (``ablate.rounds``: after each round one more seed goes
only to the configurations whose paired comparison with the best is still undecided) and
``replicates: MAX`` (every configuration gets every seed). Both are judged by the same rule,
the report's (``ablate.rounds.race_state``: ``stats.versus_best``, paired t by seed, Holm):
the best configuration, those decided worse, those left undecided. The racing sweep's trials
are a subset of the fixed sweep's (replicate r runs seed + r in both), so the comparison is
of the same seeds.

    python benchmarks/racing.py [--min 2] [--max 4] [--epochs 8] [--num-train 1024]
        [--heads linear]

The quickstart's three augmentations (crop, colour, crop + colour) with the linear head, 8
epochs of 1024 16-px shapes: crop alone falls far behind, colour and crop + colour stay close.

The last line is one JSON object: {"benchmark": "racing", "racing": {...}, "fixed": {...},
"same_verdicts": bool}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny(args: argparse.Namespace, storage: str) -> list[str]:
    return [
        f"data.num_train={args.num_train}",
        "data.num_test=128",
        "data.synthetic_size=16",
        f"train.epochs={args.epochs}",
        "train.batch_size=64",
        "eval.knn_k=10",
        f"eval.eval_every={args.epochs}",
        "eval.probe.max_iter=20",
        "tracking.enabled=false",
        "algorithm.max_concurrent_trials=2",
        f"storage.path={storage}",
        f"space.model.head={{grid: [{args.heads}]}}",
    ]


def verdicts(plan, records) -> dict[str, str]:
    """Configuration label -> best / worse / undecided, by ``rounds.race_state``."""
    from ablate import rounds
    from ablate.trialrecord import planned_key
    from ablate.vocabulary import format_value

    trials = [plan.trial(r["varying"], r["replicate"]) for r in records]
    state = rounds.race_state(plan, trials, records)
    out = {}
    for varying in plan.configurations():
        key = planned_key(varying, 0)
        label = ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in varying.items())
        out[label] = "best" if key == state.best else "worse" if key in state.worse else "undecided"
    return out


def run(name: str, replicates: str, args: argparse.Namespace, storage: str) -> dict:
    from ablate.spec import load_sweep
    from ablate.sweep import run_sweep

    plan = load_sweep(
        REPO / "search_spaces" / "quickstart.yaml",
        [*tiny(args, storage), f"name={name}", f"replicates={replicates}"],
    )
    started = time.time()
    done = run_sweep(plan)
    seeds: dict[str, int] = {}
    for record in done.trials:
        label = json.dumps(record["varying"], sort_keys=True)
        seeds[label] = seeds.get(label, 0) + 1
    return {
        "replicates": replicates,
        "trials": len(done.trials),
        "completed": sum(r["status"] == "completed" for r in done.trials),
        "seeds_per_configuration": sorted(seeds.values()),
        "wall_seconds": round(time.time() - started, 1),
        "verdicts": verdicts(plan, done.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min", type=int, default=2)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=1024)
    parser.add_argument(
        "--heads", default="linear", help="model.head values swept, comma-separated"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from ablate.sweep import start_local_ray

    start_local_ray(num_cpus=2)
    try:
        with tempfile.TemporaryDirectory(prefix="racing_") as storage:
            racing = run("racing", f"{{min: {args.min}, max: {args.max}}}", args, storage)
            fixed = run("fixed", str(args.max), args, storage)
    finally:
        ray.shutdown()
    for name, result in (("racing", racing), ("fixed", fixed)):
        print(
            f"{name:>6} (replicates {result['replicates']}): {result['trials']} trials "
            f"({result['completed']} completed), seeds per configuration "
            f"{result['seeds_per_configuration']}, {result['wall_seconds']} s"
        )
        for label, verdict in result["verdicts"].items():
            print(f"         {label}: {verdict}")
    same = racing["verdicts"] == fixed["verdicts"]
    print(
        f"racing spent {racing['trials']} of the fixed sweep's {fixed['trials']} trials; "
        f"verdicts {'the same' if same else 'differ'}"
    )
    print(
        json.dumps({"benchmark": "racing", "racing": racing, "fixed": fixed, "same_verdicts": same})
    )


if __name__ == "__main__":
    main()
