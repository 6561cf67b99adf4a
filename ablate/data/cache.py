"""The decoded-array cache: one folder of ``.npy`` files per source content and config.

``load_dataset(cfg, cache_dir)`` keeps a source's decoded arrays under ``cache_dir/<key>/``
(``cache_key``: the data-relevant config fields plus the source files' sizes and mtimes, or
contents for small sources), so a sweep decodes once and every later trial memory-maps them
(read-only, zero-copy). Entries are written atomically: concurrent trials see a complete entry
or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.arrays import ImageArrays
from ablate.data.sources import source_entry

if TYPE_CHECKING:
    from ablate.config import DataConfig

# Bump when the decoded arrays of a source would change (invalidates every cache entry).
_CACHE_FORMAT = 2
# Files up to this size are content-hashed for the cache key (when a source has few files);
# larger ones are keyed by size + mtime, which is cheap for multi-GB sources.
_CONTENT_HASH_MAX_BYTES = 1 << 20
_CONTENT_HASH_MAX_FILES = 1000
_UNSAFE = re.compile(r"[^\w.-]")


def cache_key(cfg: DataConfig, files: Sequence[Path]) -> str:
    """Hash of the fields that shape the decoded arrays plus the source files' identity.

    Returns ``<data.name>-<20 hex digits>``, the entry's folder name (a user source's
    ``module.path:factory`` with ``:`` and other characters unsafe in a file name as ``_``).
    """
    fields = {
        "format": _CACHE_FORMAT,
        **cfg.model_dump(
            mode="json",
            include={
                "name",
                "image_column",
                "label_column",
                "split_column",
                "image_size",
                "limit_train",
                "limit_test",
            },
        ),
    }
    extra = source_entry(cfg.name).meta.get("cache_fields", ())
    if extra:
        fields.update(cfg.model_dump(mode="json", include=set(extra)))
    for key in ("root", "train_path", "test_path"):
        value = getattr(cfg, key)
        fields[key] = str(Path(value).expanduser().resolve()) if value is not None else None
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    content = len(files) <= _CONTENT_HASH_MAX_FILES
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0".encode())
        if content and stat.st_size <= _CONTENT_HASH_MAX_BYTES:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return f"{_UNSAFE.sub('_', cfg.name)}-{digest.hexdigest()[:20]}"


_CACHE_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def write_cache(
    entry: Path,
    train: ImageArrays,
    test: ImageArrays,
    class_names: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    cfg: DataConfig,
) -> None:
    """Write into a private temporary folder, then rename it into place (atomic on POSIX):
    concurrent trials either see a complete entry or none; the loser of a race discards its copy.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        arrays = dict(
            zip(_CACHE_ARRAYS, (train.images, train.labels, test.images, test.labels), strict=True)
        )
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        meta = {
            "class_names": class_names,
            "mean": list(mean),
            "std": list(std),
            "config": cfg.model_dump(mode="json"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_cache(
    entry: Path,
) -> tuple[
    ImageArrays, ImageArrays, list[str], tuple[float, float, float], tuple[float, float, float]
]:
    """``(train, test, class_names, mean, std)`` of the entry ``write_cache`` wrote; the arrays
    are read-only memory maps."""
    meta = json.loads((entry / "meta.json").read_text())
    arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in _CACHE_ARRAYS}
    return (
        ImageArrays(arrays["train_images"], arrays["train_labels"]),
        ImageArrays(arrays["test_images"], arrays["test_labels"]),
        list(meta["class_names"]),
        tuple(meta["mean"]),
        tuple(meta["std"]),
    )
