"""The ``synthetic`` source: seeded shapes on plain backgrounds (class = shape), no files.

Used by tests, examples and benchmarks: every image is a function of ``data.seed``, so two runs
(and two machines) see identical pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ablate.data.arrays import SPLITS, ImageArrays
from ablate.data.decode import resize_all
from ablate.data.errors import DataError
from ablate.data.sources.source import Source, Splits, limit_for

if TYPE_CHECKING:
    from ablate.config import DataConfig

#: Synthetic class names, in label order (``num_classes`` takes a prefix).
SYNTHETIC_SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "bar_horizontal",
    "bar_vertical",
    "diamond",
)
#: ``data.*`` keys that shape the synthetic arrays, beyond those every source's cache key holds.
CACHE_FIELDS: tuple[str, ...] = ("num_train", "num_test", "num_classes", "synthetic_size", "seed")


def resolve(cfg: DataConfig) -> Source:
    """Seeded shapes, rendered by ``read()`` (no files): ``data.num_train``/``data.num_test``
    images of ``data.synthetic_size`` px in ``data.num_classes`` classes, seed ``data.seed``."""

    def read() -> Splits:
        splits = []
        for stream, (split, n) in enumerate(
            zip(SPLITS, (cfg.num_train, cfg.num_test), strict=True)
        ):
            limit = limit_for(cfg, split)
            arrays = synthetic_images(
                n, cfg.synthetic_size, cfg.num_classes, cfg.seed, stream, rows=limit
            )
            if cfg.image_size is not None and cfg.image_size != cfg.synthetic_size:
                arrays = ImageArrays(resize_all(arrays.images, cfg.image_size), arrays.labels)
            splits.append(arrays)
        return splits[0], splits[1], list(SYNTHETIC_SHAPES[: cfg.num_classes])

    return Source([], read)


def class_counts(cfg: DataConfig) -> list[int]:
    """Training images per class (after ``limit_train``): the exact labels, none rendered."""
    rng = np.random.default_rng([cfg.seed, 0])  # stream 0: the train split
    labels = synthetic_labels(rng, cfg.num_train, cfg.num_classes)[: cfg.limit_train]
    return np.unique(labels, return_counts=True)[1].tolist()


# Object scale in half-sides: shapes span about 35-75% of the image side.
_SYNTHETIC_SCALE = (0.45, 0.8)
# Centre and full width of the images' hue range: as wide as the hue shifts of colour
# distortion of strength 0.5 (up to ±0.2 s), so that colour distortion scrambles it.
_SYNTHETIC_HUE, _SYNTHETIC_HUE_SPREAD = 0.6, 0.2
_SYNTHETIC_NOISE = 0.03  # std of the i.i.d. pixel noise, [0, 1] scale
_SYNTHETIC_SUPERSAMPLE = 4  # anti-aliasing: samples per pixel along each axis


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """(N,) hue/saturation/value in [0, 1] -> (N, 3) RGB in [0, 1]."""
    pure = np.clip(np.abs((hue[:, None] * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0, 1)
    return val[:, None] * (1.0 - sat[:, None] + sat[:, None] * pure)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of shape ``shape`` in object coordinates (u right, v down; unit = scale)."""
    au, av = np.abs(u), np.abs(v)
    radius = np.sqrt(u * u + v * v)
    name = SYNTHETIC_SHAPES[shape]
    if name == "circle":
        return radius <= 0.85
    if name == "square":
        return np.maximum(au, av) <= 0.75
    if name == "triangle":  # apex up
        return (v <= 0.7) & (au <= 0.9 * (v + 0.9) / 1.6)
    if name == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "ring":
        return (radius >= 0.5) & (radius <= 0.95)
    if name == "bar_horizontal":
        return (au <= 0.95) & (av <= 0.3)
    if name == "bar_vertical":
        return (au <= 0.3) & (av <= 0.95)
    return au + av <= 1.0  # diamond


def synthetic_images(
    n: int,
    size: int,
    num_classes: int,
    seed: int,
    stream: int = 0,
    rows: int | None = None,
) -> ImageArrays:
    """Seeded shapes on plain backgrounds: class = shape; colour, position and scale are
    per-image nuisances (so colour distortion and cropping matter, as in SimCLR §3).

    Every nuisance lies within what SimCLR's augmentations undo: the colours vary in
    brightness, saturation and (by at most ±``_SYNTHETIC_HUE_SPREAD / 2``) hue, which colour
    distortion of strength 0.5 covers, and the shape's position and size (35-75% of the side)
    vary within what random crops change. Nothing else identifies an image: the background is
    flat and the pixel noise i.i.d. (contrastive learning latches on to any feature that
    survives the augmentations, hiding the class; Chen et al., 2021, "Intriguing properties of
    contrastive losses"). The shape is brighter than the background, so it survives grayscale,
    and anti-aliased, so it is legible at 16 px.

    ``stream`` separates splits drawn from one seed; ``rows`` renders only the first rows
    (identical to the first rows of the full set). Returns (n, size, size, 3) uint8.
    """
    if not 2 <= num_classes <= len(SYNTHETIC_SHAPES):
        raise DataError(
            f"synthetic: num_classes must be 2..{len(SYNTHETIC_SHAPES)}, got {num_classes}"
        )
    rng = np.random.default_rng([seed, stream])
    labels = synthetic_labels(rng, n, num_classes)
    # Object units: 1 = half the image side; shapes span about [-0.95, 0.95] x scale.
    scale = rng.uniform(*_SYNTHETIC_SCALE, size=n)
    reach = np.maximum(0.92 - 0.95 * scale, 0.0)  # keeps the shape inside the image
    center = rng.uniform(-1.0, 1.0, size=(n, 2)) * reach[:, None]
    hue = _SYNTHETIC_HUE + _SYNTHETIC_HUE_SPREAD * rng.uniform(-0.5, 0.5, size=n)
    fg = _hsv_to_rgb(hue, rng.uniform(0.5, 0.9, size=n), rng.uniform(0.7, 1.0, size=n))
    bg = _hsv_to_rgb(hue, rng.uniform(0.0, 0.3, size=n), rng.uniform(0.1, 0.3, size=n))
    f32 = np.float32
    fg, bg, center, scale = fg.astype(f32), bg.astype(f32), center.astype(f32), scale.astype(f32)

    rows = n if rows is None else min(rows, n)
    ss = _SYNTHETIC_SUPERSAMPLE
    fine = size * ss
    grid = ((np.arange(fine, dtype=f32) + 0.5) / fine * 2.0 - 1.0).astype(f32)
    out = np.empty((rows, size, size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 22) // (fine * fine))  # depends on size only: keeps the prefix property
    for index, start in enumerate(range(0, rows, chunk)):
        sl = slice(start, min(start + chunk, rows))
        m = sl.stop - sl.start
        s = scale[sl, None, None]
        u = (grid[None, None, :] - center[sl, 0, None, None]) / s
        v = (grid[None, :, None] - center[sl, 1, None, None]) / s
        mask = np.zeros((m, fine, fine), dtype=bool)
        for shape in range(num_classes):
            pick = labels[sl] == shape
            if pick.any():
                mask[pick] = _shape_mask(shape, u[pick], v[pick])
        cover = mask.reshape(m, size, ss, size, ss).mean(axis=(2, 4), dtype=f32)[..., None]
        image = bg[sl, None, None, :] + cover * (fg[sl, None, None, :] - bg[sl, None, None, :])
        noise = np.random.default_rng([seed, stream, 1, index]).standard_normal(image.shape, f32)
        image += f32(_SYNTHETIC_NOISE) * noise
        out[sl] = np.clip(np.rint(image * f32(255.0)), 0, 255).astype(np.uint8)
    return ImageArrays(out, labels[:rows].copy())


def synthetic_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """The classes of ``n`` synthetic images: balanced, shuffled (the first draw of ``rng``)."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)
