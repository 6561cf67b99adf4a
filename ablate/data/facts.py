"""Dataset facts known without decoding: training images per class, the pretraining /
validation sizes, the steps of an epoch, and whether a batch fits.

Preflight and ``--dry-run`` use them before anything is decoded; a source whose counts are not
known that way (a URI, a user's source) gives None, and the sweep checks its batches once it
has loaded the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ablate.data.sources import source_entry
from ablate.data.sources.torchvision_sets import KNOWN_TRAIN_CLASSES
from ablate.data.splits import val_count

if TYPE_CHECKING:
    from ablate.config import DataConfig

#: Training-set sizes of the torchvision datasets (before the validation split).
KNOWN_TRAIN_SIZES: dict[str, int] = {k: n * c for k, (n, c) in KNOWN_TRAIN_CLASSES.items()}


def train_class_counts(cfg: DataConfig) -> list[int] | None:
    """Training images per class (after ``limit_train``), known without decoding, else None.

    Synthetic: the exact labels; torchvision datasets: their published counts (with
    ``limit_train``: the first N rows, taken as balanced); local Parquet: the label column
    (the ``train`` rows of ``split_column``); local image folders: their files, counted. URIs
    and user sources: None. Raises ``DataError`` (key ``data.name``) for an unknown source.
    """
    counts = source_entry(cfg.name).meta.get("class_counts")
    return None if counts is None else counts(cfg)


def train_set_size(cfg: DataConfig) -> int | None:
    """Training images before the validation split, when knowable without decoding."""
    counts = train_class_counts(cfg)
    return None if counts is None else sum(counts)


def split_sizes(cfg: DataConfig) -> tuple[int, int] | None:
    """(pretraining, validation) images of the training set, exactly as ``train_val_split``
    divides it (per class), when the class counts are known without decoding; else None."""
    counts = train_class_counts(cfg)
    return None if counts is None else sizes_from_counts(counts, cfg.val_fraction)


def sizes_from_counts(counts: Sequence[int], val_fraction: float) -> tuple[int, int]:
    """(pretraining, validation) images of a training set with ``counts`` images per class,
    as ``train_val_split`` divides it."""
    val = sum(val_count(int(n), val_fraction) for n in counts)
    return int(sum(counts)) - val, val


def steps_per_epoch(
    pretrain_size: int, batch_size: int, world_size: int, cap: int | None = None
) -> int:
    """Optimiser steps of one epoch: each of ``world_size`` workers takes ``pretrain_size //
    world_size`` rows (``shard_indices``) in local batches of ``batch_size // world_size``,
    dropping the last partial batch; at most ``cap`` (``train.steps_per_epoch``)."""
    steps = (pretrain_size // world_size) // max(batch_size // world_size, 1)
    return min(steps, cap) if cap else steps


def check_batch(sizes: tuple[int, int], batch_size: int, world_size: int) -> None:
    """Raise ``ConfigurationError`` (key ``train.batch_size``) when one epoch of the trial
    would have no step: ``steps_per_epoch`` is 0 because the global batch exceeds what the
    ``world_size`` shards of the pretraining set hold. ``sizes``: ``split_sizes``'s
    (pretraining, validation) images."""
    from ablate.config import ConfigurationError  # on use: ablate.config imports this package

    pretrain, val = sizes
    if steps_per_epoch(pretrain, batch_size, world_size) >= 1:
        return
    largest = world_size * (pretrain // world_size)
    shards = f" in {world_size} shards of {pretrain // world_size}" if world_size > 1 else ""
    raise ConfigurationError(
        f"train.batch_size: {batch_size} is larger than the pretraining set: {pretrain} images"
        f"{shards} ({pretrain + val} training images less {val} held out for validation by "
        f"data.val_fraction), so an epoch would have no step; use train.batch_size <= "
        f"{largest} or more training images"
    )
