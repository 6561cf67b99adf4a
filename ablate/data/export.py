"""Parquet export of a decoded dataset (``python -m entrypoints.export_dataset``): lossless PNG
bytes and int64 labels, readable back as ``data.name: parquet``."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ablate.data.arrays import SPLITS, Dataset, ImageArrays
from ablate.data.decode import num_threads, progress
from ablate.data.errors import DataError


def export_parquet(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    rows_per_group: int = 4096,
    shard_rows: int = 50_000,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Write ``dataset`` as Parquet shards ``out_dir/{train,test}/part-NNNNN.parquet``.

    Columns: ``image`` (PNG bytes: lossless, so reading back gives identical pixels) and
    ``label`` (int64); schema metadata ``class_names`` (JSON list). Readable with
    ``DataConfig(name="parquet", train_path=out_dir/train, test_path=out_dir/test)``.
    Refuses a non-empty ``out_dir`` unless ``overwrite`` (which replaces its train/ and test/).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    check_export_target(out, overwrite)
    if rows_per_group < 1 or shard_rows < 1:
        raise ValueError("rows_per_group and shard_rows must be >= 1")
    metadata = {
        "class_names": json.dumps(dataset.class_names),
        "image_format": "png",
        "source": dataset.name,
    }
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64())], metadata=metadata)
    written: dict[str, list[Path]] = {}
    for split in SPLITS:
        arrays: ImageArrays = getattr(dataset, split)
        split_dir = out / split
        if split_dir.exists():
            shutil.rmtree(split_dir)
        split_dir.mkdir(parents=True)
        written[split] = []
        with progress(len(arrays), f"export {split}") as bar:
            for part, start in enumerate(range(0, len(arrays), shard_rows)):
                stop = min(start + shard_rows, len(arrays))
                images = encode_png(arrays.images[start:stop], on_chunk=bar.update)
                table = pa.table(
                    {
                        "image": pa.array(images, pa.binary()),
                        "label": pa.array(np.asarray(arrays.labels[start:stop]), pa.int64()),
                    },
                    schema=schema,
                )
                path = split_dir / f"part-{part:05d}.parquet"
                pq.write_table(table, path, row_group_size=rows_per_group)
                written[split].append(path)
    return written


def check_export_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty export directory unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {str(out_dir)!r} is a file, expected a directory")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise DataError(
            f"--out {str(out_dir)!r} exists and is not empty; pass --overwrite "
            "(overwrite=True) to replace its train/ and test/ folders"
        )


def encode_png(images: np.ndarray, on_chunk: Callable[[int], Any] | None = None) -> list[bytes]:
    """(N, H, W, C) uint8 -> N PNG files' bytes, on a thread pool (Pillow releases the GIL)."""

    def encode(rows: range) -> list[bytes]:
        encoded = []
        for row in rows:
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(images[row])).save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        if on_chunk is not None:
            on_chunk(len(rows))
        return encoded

    chunks = [range(s, min(s + 512, len(images))) for s in range(0, len(images), 512)]
    with ThreadPoolExecutor(num_threads()) as pool:
        return [b for part in pool.map(encode, chunks) for b in part]
