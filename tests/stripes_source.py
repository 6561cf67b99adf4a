"""A user's own data source, as a user writes one: ``data.name: stripes_source:stripes``.

Lives outside the package (on ``sys.path`` when tests run) and imports nothing from ``ablate``,
the contract of ``ablate.data.sources.plugin``: a factory of the data config returning
``(train, test, class_names)``. The other factories break that contract one way each, for
``tests/test_sources.py``'s error checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASSES = ["horizontal", "vertical", "diagonal"]
SIDE = 12


def _stripes(n: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 12, 12, 3) uint8 of two-colour stripes; class = stripe direction."""
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    images = np.empty((n, SIDE, SIDE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        period = int(rng.integers(2, 5))
        coordinate = (rows, cols, rows + cols)[label]
        on = (coordinate // period) % 2 == 1
        fg, bg = rng.integers(0, 256, (2, 3))
        images[i] = np.where(on[..., None], fg, bg)
    return images, labels


def stripes(cfg: Any) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list]:
    """Seeded stripes in three directions (``data.num_train``/``data.num_test``, ``data.seed``)."""
    return _stripes(cfg.num_train, cfg.seed, 0), _stripes(cfg.num_test, cfg.seed, 1), CLASSES


# ----------------------------------------------------------------------------- broken sources

not_a_function = 3


def two_arguments(cfg: Any, extra: int) -> None:
    """Takes one argument too many."""


def float_images(cfg: Any) -> tuple:
    train, test, names = stripes(cfg)
    return (train[0] / 255.0, train[1]), test, names


def label_out_of_range(cfg: Any) -> tuple:
    train, (images, labels), names = stripes(cfg)
    labels = labels.copy()
    labels[5] = len(names)
    return train, (images, labels), names


def sizes_differ(cfg: Any) -> tuple:
    train, (images, labels), names = stripes(cfg)
    return train, (images[:, :8, :8], labels), names


def two_values(cfg: Any) -> tuple:
    train, test, _ = stripes(cfg)
    return train, test


def raises(cfg: Any) -> None:
    raise FileNotFoundError(f"no stripes under {cfg.root}")
