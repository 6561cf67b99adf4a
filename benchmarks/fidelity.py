"""Fidelity: how well one recipe trains, beside the number its source published.

Trains a named recipe (``ablate.recipes``) without Ray, with the trial loop's own parts
(``ablate.train.build_worker``, ``run_epoch``, ``final_evaluation``), and every ``--eval-every``
epochs prints test kNN top-1 (weighted, k and t of the recipe, bank = the pretraining set),
the online probe's test top-1 and the offline L-BFGS probe's test top-1, with the recipe's
published number and protocol beside them. The last line is one JSON object:
{"benchmark": "fidelity", "recipe": ..., "final": {...}, "best_knn_top1": ..., ...}.

    python benchmarks/fidelity.py --recipe lightly_cifar10 --epochs 200          # a GPU
    python benchmarks/fidelity.py --recipe lightly_cifar10 --epochs 15 --width 16 \\
        --images 10000 --batch 256 --eval-every 5                                  # 2 CPUs

Data (``--data``): a directory holding CIFAR-10 as ``train.parquet`` / ``test.parquet``
(default ``../shared/data/cifar10`` when present), ``cifar10`` for torchvision's CIFAR-10
under ``--root`` (downloaded when missing), or ``synthetic`` (32-px shapes, no files).
``--set KEY=VALUE`` overrides any trial-config key on top of the recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ablate.config import TrialConfig, set_dotted
from ablate.recipes import RECIPE_NAMES, get_recipe, merge
from ablate.train import build_worker, final_evaluation, run_epoch

SHARED_CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def data_section(args: argparse.Namespace) -> dict[str, Any]:
    """The ``data`` section for ``--data`` (a Parquet directory, cifar10 or synthetic)."""
    limits = {"limit_train": args.images, "limit_test": args.test_images, "seed": args.seed}
    if args.data == "synthetic":
        return {
            "name": "synthetic",
            "num_train": args.images or 2048,
            "num_test": args.test_images or 512,
            "synthetic_size": 32,
            "num_classes": 4,
            "seed": args.seed,
        }
    if args.data == "cifar10":
        return {"name": "cifar10", "root": args.root, "download": True, **limits}
    directory = Path(args.data)
    return {
        "name": "parquet",
        "train_path": str(directory / "train.parquet"),
        "test_path": str(directory / "test.parquet"),
        **limits,
    }


def trial_config(args: argparse.Namespace) -> TrialConfig:
    """Recipe overrides <- the budget flags <- ``--set``, validated."""
    recipe = get_recipe(args.recipe)
    budget: dict[str, Any] = {"data": data_section(args), "train": {"seed": args.seed}}
    if args.epochs is not None:
        budget["train"]["epochs"] = args.epochs
    if args.batch is not None:
        budget["train"]["batch_size"] = args.batch
    if args.width is not None:
        budget["model"] = {"width": args.width}
    config = merge(recipe.overrides, budget)
    config.setdefault("eval", {})["eval_every"] = args.eval_every
    for text in args.set:
        key, _, value = text.partition("=")
        set_dotted(config, key.strip(), yaml.safe_load(value))
    return TrialConfig.model_validate(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="lightly_cifar10", choices=RECIPE_NAMES)
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--width", type=int, help="ResNet base width (default: the recipe's)")
    parser.add_argument("--images", type=int, help="first N training images (default: all)")
    parser.add_argument("--test-images", type=int, help="first N test images (default: all)")
    parser.add_argument("--batch", type=int, help="global batch (default: the recipe's)")
    parser.add_argument("--eval-every", type=int, default=10, help="epochs between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        default=str(SHARED_CIFAR) if (SHARED_CIFAR / "train.parquet").exists() else "cifar10",
        help="Parquet directory, cifar10 (torchvision under --root) or synthetic",
    )
    parser.add_argument("--root", default="./data", help="torchvision data root (--data cifar10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    recipe = get_recipe(args.recipe)
    config = trial_config(args)
    start = time.time()
    worker = build_worker(config, runtime={}, device=device)
    published = (
        f"{recipe.published_top1:.1%} at {recipe.published_epochs} epochs"
        if recipe.published_top1 is not None
        else "none for this backbone"
    )
    print(f"recipe {recipe.name}: {recipe.title}\n  source: {recipe.source}")
    print(f"  published: {recipe.published}\n  protocol: {recipe.protocol} ({recipe.metric})")
    print(
        f"device {device}, {args.threads} threads; {config.model.arch} width "
        f"{config.model.width}, batch {config.train.batch_size}, {config.train.epochs} epochs, "
        f"{len(worker.data.pretrain_idx)} pretraining / {len(worker.data.test_labels)} test "
        f"images, {worker.steps_per_epoch} steps/epoch; setup {time.time() - start:.1f} s"
    )
    print(
        f"{'epoch':>5}  {'loss':>7}  {'kNN':>6}  {'online':>6}  {'probe':>6}  "
        f"{'s/epoch':>7}  published ({recipe.metric})"
    )
    generator = torch.Generator(device=device)
    evaluations: list[dict[str, Any]] = []
    train_seconds, diverged = 0.0, ""
    for epoch in range(1, config.train.epochs + 1):
        result = run_epoch(worker, generator, epoch)
        train_seconds += result.seconds
        if result.diverged:
            diverged = result.diverged
            print(f"diverged: {diverged}")
            break
        if epoch % args.eval_every and epoch != config.train.epochs:
            continue
        metrics = final_evaluation(worker)
        row = {
            "epoch": epoch,
            "train_loss": result.loss_sum / result.steps,
            "knn_top1": metrics["test/knn_top1"],
            "online_top1": metrics.get("test/online_top1"),
            "probe_top1": metrics["test/probe_top1"],
            "epoch_seconds": result.seconds,
        }
        evaluations.append(row)
        online = "-" if row["online_top1"] is None else f"{row['online_top1']:.2%}"
        print(
            f"{epoch:>5}  {row['train_loss']:>7.4f}  {row['knn_top1']:>6.2%}  {online:>6}  "
            f"{row['probe_top1']:>6.2%}  {result.seconds:>7.1f}  {published}",
            flush=True,
        )
    final = evaluations[-1] if evaluations else {}
    summary = {
        "benchmark": "fidelity",
        "recipe": recipe.name,
        "device": str(device),
        "data": config.data.name,
        "pretrain_images": len(worker.data.pretrain_idx),
        "test_images": len(worker.data.test_labels),
        "width": config.model.width,
        "batch_size": config.train.batch_size,
        "epochs": config.train.epochs,
        "seed": config.train.seed,
        "overrides": args.set,
        "final": final,
        "best_knn_top1": max((e["knn_top1"] for e in evaluations), default=None),
        "evaluations": evaluations,
        "published_top1": recipe.published_top1,
        "published_epochs": recipe.published_epochs,
        "published_metric": recipe.metric,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - start, 1),
        "diverged": diverged,
    }
    print(json.dumps(summary))
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main())
