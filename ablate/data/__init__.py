"""Datasets: decode a source once into uint8 arrays, split it, shard it, cache it.

One module per concept:

- ``sources/``: the registry ``SOURCES`` of ``data.name`` and one module per source family
  (``synthetic``, ``torchvision_sets``, ``image_folder``, ``parquet``), plus ``plugin``, the
  contract of a user's own source named ``module.path:factory``;
- ``arrays``: ``ImageArrays`` (one split) and ``Dataset``; ``errors``: ``DataError``;
- ``decode``: encoded image bytes or files -> one (N, H, W, 3) uint8 array, and resizing;
- ``load``: ``load_dataset`` (resolve, read through the cache, normalisation statistics) and
  ``check_sources`` (preflight's check, decoding nothing);
- ``cache``: the decoded-array cache; ``stats``: per-channel mean and std;
- ``splits``: the class-balanced validation hold-out, labelled subset and worker shards;
- ``facts``: what is known without decoding (class counts, split sizes, steps, batch check);
- ``export``: Parquet export (``python -m entrypoints.export_dataset``).

This package re-exports the names the rest of ``ablate``, the entrypoints, benchmarks and tests
use (``from ablate.data import load_dataset``). ``ablate.config`` validates ``data.name``
against ``SOURCES``, so no module here imports ``ablate.config`` when it is imported (only for
type checking, or inside a function); ``DataConfig`` and ``ConfigurationError`` are re-exported
on first use.
"""

from __future__ import annotations

from typing import Any

from ablate.data.arrays import SPLITS, Dataset, ImageArrays
from ablate.data.cache import cache_key
from ablate.data.decode import decode_images
from ablate.data.errors import DataError
from ablate.data.export import check_export_target, encode_png, export_parquet
from ablate.data.facts import (
    KNOWN_TRAIN_CLASSES,
    KNOWN_TRAIN_SIZES,
    check_batch,
    sizes_from_counts,
    split_sizes,
    steps_per_epoch,
    train_class_counts,
    train_set_size,
)
from ablate.data.load import check_sources, load_dataset
from ablate.data.sources import SOURCES, Source
from ablate.data.sources.image_folder import IMAGE_EXTENSIONS
from ablate.data.sources.synthetic import SYNTHETIC_SHAPES, synthetic_images
from ablate.data.splits import labelled_subset, shard_indices, train_val_split
from ablate.data.stats import STD_FLOOR, channel_stats, floored_std

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_TRAIN_CLASSES",
    "KNOWN_TRAIN_SIZES",
    "SOURCES",
    "SPLITS",
    "STD_FLOOR",
    "SYNTHETIC_SHAPES",
    "ConfigurationError",
    "DataConfig",
    "DataError",
    "Dataset",
    "ImageArrays",
    "Source",
    "cache_key",
    "channel_stats",
    "check_batch",
    "check_export_target",
    "check_sources",
    "decode_images",
    "encode_png",
    "export_parquet",
    "floored_std",
    "labelled_subset",
    "load_dataset",
    "shard_indices",
    "sizes_from_counts",
    "split_sizes",
    "steps_per_epoch",
    "synthetic_images",
    "train_class_counts",
    "train_set_size",
    "train_val_split",
]


def __getattr__(name: str) -> Any:
    """``ablate.data.DataConfig`` / ``ConfigurationError``, imported from ``ablate.config`` on
    first use (see the module docstring)."""
    if name in ("DataConfig", "ConfigurationError"):
        import ablate.config

        return getattr(ablate.config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
