"""What a data source resolves to: the files its arrays derive from, and a reader.

Every entry of ``SOURCES`` is a resolver ``resolve(cfg: DataConfig) -> Source``: it checks the
configured paths and lists the source's files (fast, nothing decoded; a torchvision set may be
downloaded), raising ``DataError`` on bad input. ``Source.read()`` then decodes:
``(train, test, class_names)``, two ``ImageArrays`` (images (N, H, W, 3) uint8, labels (N,)
int64 in ``0..len(class_names) - 1``) with ``data.limit_train``/``data.limit_test`` (the first
N rows) and ``data.image_size`` (one square side) applied. ``Source.files`` key the cache
(``ablate.data.cache``): a changed file means decoding again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.arrays import ImageArrays

if TYPE_CHECKING:
    from ablate.config import DataConfig

#: ``read()``'s result: (train, test, class_names).
Splits = tuple[ImageArrays, ImageArrays, list[str]]


@dataclass(frozen=True)
class Source:
    """A resolved source: the files it derives from (for the cache key) and its reader."""

    files: list[Path]
    read: Callable[[], Splits]


def limit_for(cfg: DataConfig, split: str) -> int | None:
    """``data.limit_train`` or ``data.limit_test``: the rows of ``split`` to keep (None: all)."""
    return cfg.limit_train if split == "train" else cfg.limit_test


def apply_limit(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    """The first ``limit`` rows of ``arrays`` (contiguous copies), or ``arrays`` itself."""
    if limit is None or limit >= len(arrays):
        return arrays
    return ImageArrays(
        np.ascontiguousarray(arrays.images[:limit]), np.ascontiguousarray(arrays.labels[:limit])
    )
