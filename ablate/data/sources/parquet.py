"""The ``parquet`` source: a file, directory or glob of Parquet files; the image column holds
encoded bytes (JPEG/PNG) or a struct with a ``bytes`` field (the Hugging Face hub layout), the
label column integer class indices; class names come from the schema metadata
(``class_names``, or a Hugging Face ``ClassLabel``), else ``"0"``, ``"1"``, ...."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.arrays import SPLITS, ImageArrays
from ablate.data.decode import decode_images
from ablate.data.errors import DataError
from ablate.data.sources.source import Source, Splits, limit_for

if TYPE_CHECKING:
    from ablate.config import DataConfig


def parquet_files(spec: str, key: str) -> list[Path]:
    """A file, a directory (every ``*.parquet`` below it) or a glob -> sorted file list.

    Raises ``DataError`` starting with ``key`` (e.g. ``data.train_path``) when nothing matches.
    """
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p.resolve() for p in files if p.is_file()]
        if not files:
            raise DataError(f"{key}: no files match the glob {spec!r}")
        return files
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"{key}: directory {str(path)!r} holds no .parquet files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{key}: {spec!r} does not exist (expected a Parquet file, directory or glob)")


def _class_names_from_metadata(
    metadata: dict[bytes, bytes] | None, label_column: str
) -> list[str] | None:
    """``class_names`` (JSON list), else a Hugging Face ``ClassLabel``'s names, else None."""
    if not metadata:
        return None
    if b"class_names" in metadata:
        return [str(n) for n in json.loads(metadata[b"class_names"])]
    if b"huggingface" in metadata:
        try:
            features = json.loads(metadata[b"huggingface"])["info"]["features"]
            names = features[label_column]["names"]
        except (KeyError, TypeError, ValueError):
            return None
        return [str(n) for n in names]
    return None


@dataclass
class _ParquetRows:
    images: list[bytes]
    labels: np.ndarray
    files: list[Path]
    file_index: np.ndarray  # per row: index into ``files``
    file_row: np.ndarray  # per row: row within its file

    def where(self, row: int) -> str:
        """The row as a user finds it: ``row R of FILE``."""
        return f"row {int(self.file_row[row])} of {self.files[int(self.file_index[row])]}"


def resolve(cfg: DataConfig) -> Source:
    """Check ``data.train_path``/``data.test_path`` (or ``data.split_column``): the files, their
    schemas, columns and class names (schema metadata), reading no rows."""
    import pyarrow.parquet as pq

    if cfg.train_path is None:
        raise DataError(
            "data.name='parquet' needs data.train_path (a Parquet file, directory or glob)"
        )
    if cfg.split_column is not None and cfg.test_path is not None:
        raise DataError("data.test_path and data.split_column exclude each other: give one")
    if cfg.split_column is None and cfg.test_path is None:
        raise DataError(
            "data.name='parquet' needs data.test_path, or data.split_column naming a column "
            "whose values 'train'/'test' split data.train_path"
        )
    sources = {"train": parquet_files(cfg.train_path, "data.train_path")}
    if cfg.test_path is not None:
        sources["test"] = parquet_files(cfg.test_path, "data.test_path")
    wanted = [(cfg.image_column, "data.image_column"), (cfg.label_column, "data.label_column")]
    if cfg.split_column is not None:
        wanted.append((cfg.split_column, "data.split_column"))
    class_names: list[str] | None = None
    names_from: Path | None = None
    for files in sources.values():
        for path in files:
            try:
                schema = pq.read_schema(path)
            except Exception as error:  # pyarrow raises ArrowInvalid / OSError for non-Parquet
                raise DataError(f"{path}: not a readable Parquet file ({error})") from error
            absent = [f"{column!r} ({key})" for column, key in wanted if column not in schema.names]
            if absent:
                raise DataError(
                    f"{path}: no column {' or '.join(absent)}; its columns are {schema.names}"
                )
            names = _class_names_from_metadata(schema.metadata, cfg.label_column)
            if names is not None:
                if class_names is not None and names != class_names:
                    raise DataError(
                        f"class_names in the schema metadata differ: {names_from} has "
                        f"{class_names}, {path} has {names}"
                    )
                class_names, names_from = names, path

    def read() -> Splits:
        rows = {}
        for split in SPLITS:
            files = sources.get(split, sources["train"])
            rows[split] = _read_parquet_rows(files, cfg, split, limit_for(cfg, split))
        num_classes = len(class_names) if class_names is not None else None
        for split_rows in rows.values():
            _check_labels(split_rows, num_classes)
        names = class_names
        if names is None:
            top = max(int(r.labels.max()) for r in rows.values())
            names = [str(i) for i in range(top + 1)]
        splits = []
        for split in SPLITS:
            part = rows[split]
            images = decode_images(part.images, cfg.image_size, part.where, f"decode {split}")
            splits.append(ImageArrays(images, part.labels))
        return splits[0], splits[1], names

    return Source([p for files in sources.values() for p in files], read)


def _read_parquet_rows(
    files: list[Path], cfg: DataConfig, split: str, limit: int | None
) -> _ParquetRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [cfg.image_column, cfg.label_column] + (
        [cfg.split_column] if cfg.split_column else []
    )
    images: list[bytes] = []
    labels: list[np.ndarray] = []
    file_index: list[np.ndarray] = []
    file_row: list[np.ndarray] = []
    seen_values: set[str] = set()
    for path in files:
        if limit is not None and len(images) >= limit:
            break
        table = pq.read_table(path, columns=columns)
        rows = np.arange(table.num_rows)
        if cfg.split_column is not None:
            values = np.asarray(table.column(cfg.split_column).to_pylist(), dtype=object)
            seen_values.update(str(v) for v in set(values.tolist()))
            rows = np.flatnonzero(values == split)
            table = table.take(pa.array(rows))
        if limit is not None:
            rows, table = rows[: limit - len(images)], table.slice(0, limit - len(images))
        column = table.column(cfg.image_column).combine_chunks()
        if pa.types.is_struct(column.type):
            if column.type.get_field_index("bytes") < 0:
                raise DataError(
                    f"{path}: image column {cfg.image_column!r} is a struct without a 'bytes' "
                    f"field ({column.type}); expected encoded image bytes"
                )
            column = column.field("bytes")
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise DataError(
                f"{path}: image column {cfg.image_column!r} has type {column.type}; expected "
                "binary (encoded JPEG/PNG bytes) or struct<bytes: binary>"
            )
        label_column = table.column(cfg.label_column).combine_chunks()
        if not pa.types.is_integer(label_column.type):
            raise DataError(
                f"{path}: label column {cfg.label_column!r} has type {label_column.type}; "
                "expected integers (class indices)"
            )
        for kind, col in (("image", column), ("label", label_column)):
            if col.null_count:
                first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"row {int(rows[first])} of {path}: the {kind} is null")
        images.extend(column.to_pylist())
        labels.append(label_column.to_numpy().astype(np.int64))
        file_index.append(np.full(len(rows), len(file_row), dtype=np.int64))
        file_row.append(rows)
    if not images:
        detail = (
            f" (column {cfg.split_column!r} holds {sorted(seen_values)}; expected 'train'/'test')"
            if cfg.split_column is not None
            else ""
        )
        raise DataError(f"no {split} rows in {', '.join(map(str, files))}{detail}")
    return _ParquetRows(
        images,
        np.concatenate(labels),
        files[: len(file_row)],
        np.concatenate(file_index),
        np.concatenate(file_row),
    )


def _check_labels(rows: _ParquetRows, num_classes: int | None) -> None:
    high = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((rows.labels < 0) | (rows.labels >= high))
    if len(bad):
        valid = f"0..{num_classes - 1} (class_names has {num_classes})" if num_classes else ">= 0"
        raise DataError(
            f"{rows.where(bad[0])}: label {int(rows.labels[bad[0]])} is out of range; "
            f"valid: {valid}"
        )


def class_counts(cfg: DataConfig) -> list[int] | None:
    """Training images per class (after ``limit_train``) from the label column of local files
    (the ``train`` rows of ``split_column``); None for a URI or unreadable files."""
    import pyarrow.parquet as pq

    if not cfg.train_path or "://" in cfg.train_path:
        return None
    columns = [cfg.label_column] + ([cfg.split_column] if cfg.split_column else [])
    try:
        files = parquet_files(cfg.train_path, "data.train_path")
        table = pq.ParquetDataset([str(f) for f in files]).read(columns=columns)
    except (DataError, OSError, ValueError, KeyError):
        return None
    labels = table.column(cfg.label_column).to_numpy(zero_copy_only=False)
    if cfg.split_column:
        split = table.column(cfg.split_column).to_numpy(zero_copy_only=False)
        labels = labels[split == "train"]
    labels = labels[: cfg.limit_train]
    return np.unique(labels, return_counts=True)[1].tolist()
