"""Per-channel normalisation statistics of a training set: exact mean and std, std floored."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

#: Smallest std used to normalise a channel computed from the data (one 8-bit grey level).
STD_FLOOR = 1.0 / 255.0
_CHANNEL_NAMES = ("red", "green", "blue")


def channel_stats(
    images: np.ndarray, chunk: int = 4096
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and std of uint8 images (N, H, W, C), on the [0, 1] scale."""
    channels = images.shape[-1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        for c in range(channels):
            counts[c] += np.bincount(block[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    std = np.sqrt(np.maximum(counts @ values**2 / total - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)  # type: ignore[return-value]


def floored_std(
    std: Sequence[float], where: str = "the training images"
) -> tuple[float, float, float]:
    """``max(std, STD_FLOOR)`` per channel, warning for each channel that was raised.

    A channel that is constant in ``where`` (e.g. a blue channel that is always 0) has std 0,
    and normalising ``(x - mean) / std`` would turn it into NaN (or, after colour jitter, into
    huge values). Floored, the channel keeps its mean and is scaled as if it varied by one grey
    level. Set ``data.std`` to choose the scale yourself.
    """
    floored = []
    for channel, value in enumerate(std):
        if value < STD_FLOOR:
            name = _CHANNEL_NAMES[channel] if len(std) == 3 else str(channel)
            warnings.warn(
                f"channel {channel} ({name}) of {where} is constant (std {value:.3g}): "
                f"normalising with std {STD_FLOOR:.4g} (1/255) instead of dividing by "
                f"{value:.3g}; set data.std to choose it",
                stacklevel=2,
            )
        floored.append(max(float(value), STD_FLOOR))
    return tuple(floored)  # type: ignore[return-value]
