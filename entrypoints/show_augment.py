"""Show what an augmentation composition does: a PNG grid of original images and two views.

    python -m entrypoints.show_augment --data synthetic --ops crop,color --out grid.png
    python -m entrypoints.show_augment --data parquet --train-path train.parquet \\
        --ops simclr --mode asymmetric --count 8 --seed 0 --out grid.png

Rows: the first ``--count`` training images, view 1, view 2 (before normalisation). ``--ops``
and ``--base`` take op names joined by commas, or a preset (``simclr``, ``simclr_cifar``,
``none``); every other augmentation parameter keeps its ``AugmentConfig`` default. Prints the
path written. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from ablate.augment import build_pipeline, save_view_grid
from ablate.config import AugmentConfig, DataConfig
from ablate.data import DataError, load_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.show_augment", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", choices=["synthetic", "parquet"], default="synthetic")
    parser.add_argument("--train-path", help="parquet: file, directory or glob of training rows")
    parser.add_argument("--test-path", help="parquet: test rows (default: the training path)")
    parser.add_argument("--ops", default="simclr", help="e.g. crop,color or a preset name")
    parser.add_argument("--base", default="", help="ops that both views get, e.g. crop")
    parser.add_argument("--mode", choices=["symmetric", "asymmetric"], default="symmetric")
    parser.add_argument("--count", type=int, default=8, help="images to show")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    return parser.parse_args(argv)


def names(text: str) -> list[str] | str:
    """``"crop,color"`` -> ``["crop", "color"]``; a single name stays a string (presets)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    return parts[0] if len(parts) == 1 else parts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        augment_cfg = AugmentConfig(
            ops=names(args.ops), base=names(args.base), mode=args.mode, normalize=False
        )
        if args.data == "parquet":
            data_cfg = DataConfig(
                name="parquet",
                train_path=args.train_path,
                test_path=args.test_path or args.train_path,
                limit_train=args.count,
                limit_test=1,
            )
        else:
            data_cfg = DataConfig(name="synthetic", num_train=max(8, args.count), num_test=8)
        dataset = load_dataset(data_cfg)
    except (ValidationError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pixels = torch.from_numpy(dataset.train.images[: args.count]).permute(0, 3, 1, 2).contiguous()
    views = build_pipeline(augment_cfg, dataset.mean, dataset.std)
    first, second = views(pixels, torch.Generator().manual_seed(args.seed))
    second_ops = augment_cfg.base + (augment_cfg.ops if args.mode == "symmetric" else [])
    path = save_view_grid(
        [pixels.float() / 255, first, second],
        args.out,
        labels=[
            "original",
            "view 1: " + ("+".join(augment_cfg.base + augment_cfg.ops) or "identity"),
            "view 2: " + ("+".join(second_ops) or "identity"),
        ],
        title=f"{args.mode}, seed {args.seed}",
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
