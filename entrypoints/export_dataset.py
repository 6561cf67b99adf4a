"""Export a dataset as Parquet shards that the ``parquet`` source reads back pixel-identically.

    python -m entrypoints.export_dataset --source cifar10 --root DIR --out OUT
    python -m entrypoints.export_dataset --source image_folder --root DIR --image-size 64 --out OUT
    python -m entrypoints.export_dataset --source synthetic --num-train 10000 --out OUT

Writes OUT/train/part-00000.parquet, OUT/test/part-00000.parquet, ... (image: PNG bytes,
label: int64, schema metadata class_names); train with ``data.name=parquet``,
``data.train_path=OUT/train``, ``data.test_path=OUT/test``. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ablate.config import DataConfig
from ablate.data import SOURCES, DataError, check_export_target, export_parquet, load_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m entrypoints.export_dataset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--source", required=True, choices=SOURCES.names(), help="data.name to export"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--root", help="cifar10/cifar100/stl10/image_folder: data.root")
    parser.add_argument("--no-download", action="store_true", help="never download")
    parser.add_argument("--train-path", help="parquet: data.train_path")
    parser.add_argument("--test-path", help="parquet: data.test_path")
    parser.add_argument("--split-column", help="parquet: data.split_column")
    parser.add_argument("--image-size", type=int, help="resize every image to this side")
    parser.add_argument("--limit-train", type=int, help="keep the first N train rows")
    parser.add_argument("--limit-test", type=int, help="keep the first N test rows")
    parser.add_argument("--num-train", type=int, help="synthetic: training images")
    parser.add_argument("--num-test", type=int, help="synthetic: test images")
    parser.add_argument("--num-classes", type=int, help="synthetic: classes (2..8)")
    parser.add_argument("--synthetic-size", type=int, help="synthetic: image side")
    parser.add_argument("--seed", type=int, help="synthetic: seed")
    parser.add_argument("--rows-per-group", type=int, default=4096, help="Parquet row group")
    parser.add_argument("--shard-rows", type=int, default=50_000, help="rows per file")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT/train, OUT/test")
    return parser.parse_args(argv)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig the command line describes (unset options keep their defaults)."""
    fields: dict[str, Any] = {
        "name": args.source,
        "root": args.root,
        "train_path": args.train_path,
        "test_path": args.test_path,
        "split_column": args.split_column,
        "image_size": args.image_size,
        "limit_train": args.limit_train,
        "limit_test": args.limit_test,
        "num_train": args.num_train,
        "num_test": args.num_test,
        "num_classes": args.num_classes,
        "synthetic_size": args.synthetic_size,
        "seed": args.seed,
    }
    if args.no_download:
        fields["download"] = False
    return DataConfig(**{k: v for k, v in fields.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = data_config(args)
        check_export_target(args.out, args.overwrite)  # before the (slow) decode
        dataset = load_dataset(cfg)
        written = export_parquet(
            dataset,
            args.out,
            rows_per_group=args.rows_per_group,
            shard_rows=args.shard_rows,
            overwrite=args.overwrite,
        )
    except (DataError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, files in written.items():
        rows = len(getattr(dataset, split))
        print(f"{split}: {rows} rows in {len(files)} file(s) under {args.out / split}")
    print(
        f"use: data.name=parquet data.train_path={args.out / 'train'} "
        f"data.test_path={args.out / 'test'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
