"""Seeded, class-balanced row selections: the validation hold-out, the labelled subset for
fine-tuning, and each worker's shard of an epoch."""

from __future__ import annotations

import numpy as np

# Salts keep the random streams of different purposes independent for one seed.
_SALT_VAL, _SALT_LABELLED, _SALT_SHARD = 101, 202, 303


def train_val_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced hold-out: per class ``round(val_fraction * n_c)`` rows go to validation
    (at least one when the class has two or more rows, never all of them).

    Returns sorted, disjoint (train_idx, val_idx) covering ``range(len(labels))``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, _SALT_VAL])
    val = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        val.append(rng.permutation(rows)[: val_count(len(rows), val_fraction)])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.empty(0, np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx


def val_count(n: int, val_fraction: float) -> int:
    """Validation rows of a class of ``n`` rows (``train_val_split``'s rule)."""
    return min(n - 1, max(1, round(val_fraction * n))) if n > 1 else 0


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Class-balanced labelled subset: per class ``max(1, round(fraction * n_c))`` rows.

    Reproducible for a seed; returns sorted row indices into ``labels``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, _SALT_LABELLED])
    picked = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        picked.append(rng.permutation(rows)[: max(1, round(fraction * len(rows)))])
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.empty(0, np.int64)


def shard_indices(n: int, rank: int, world_size: int, epoch: int, seed: int) -> np.ndarray:
    """This rank's rows for ``epoch``: a permutation of ``range(n)`` seeded by (seed, epoch),
    identical on every rank, taken strided (rank, rank + world_size, ...).

    The last ``n % world_size`` rows of the permutation are dropped so every rank gets
    ``n // world_size`` rows (equal step counts); they change every epoch. Ranks never overlap,
    and the first k rows of all ranks together are the first ``k * world_size`` of the
    permutation, so a global batch is the same whatever the world size.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    order = np.random.default_rng([seed, _SALT_SHARD, epoch]).permutation(n)
    per_rank = n // world_size
    return order[rank : per_rank * world_size : world_size].astype(np.int64)
