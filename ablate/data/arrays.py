"""The decoded form every source becomes: ``ImageArrays`` splits and the ``Dataset`` of two.

Images are ``(N, H, W, C)`` uint8 and labels ``(N,)`` int64; ``SPLITS`` names the two splits
every source provides, in the order sources return them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, str] = ("train", "test")


@dataclass(frozen=True)
class ImageArrays:
    """One split: ``images`` (N, H, W, C) uint8 and ``labels`` (N,) int64.

    Arrays loaded from the cache are read-only memory maps; index them (``images[rows]``) to
    get writable copies.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, C) uint8, got {self.images.shape} {self.images.dtype}"
            )
        if self.labels.shape != (len(self.images),) or self.labels.dtype != np.int64:
            raise ValueError(
                f"labels must be ({len(self.images)},) int64, got "
                f"{self.labels.shape} {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | slice) -> ImageArrays:
        """The rows ``rows`` (an index array or a slice) as a new split."""
        return ImageArrays(self.images[rows], self.labels[rows])


@dataclass(frozen=True)
class Dataset:
    """A decoded dataset; ``mean``/``std`` are per-channel, on the [0, 1] pixel scale.

    ``mean``/``std`` are ``data.mean``/``data.std`` when set, else computed from the training
    images, with a computed std floored at ``STD_FLOOR`` (see ``floored_std``).
    """

    train: ImageArrays
    test: ImageArrays
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]
