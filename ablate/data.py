"""Datasets: decode a source once into uint8 arrays, split it, shard it, cache it.

Sources (``DataConfig.name``):

- ``cifar10`` / ``cifar100`` / ``stl10``: torchvision's on-disk layout under ``root``
  (STL-10: the labelled ``train`` and ``test`` splits, 96 px).
- ``image_folder``: ``root/{train,test}/<class>/<image>``, any size (``image_size`` resizes);
  symbolic links to folders and files are followed (a dangling link or a loop is an error).
- ``parquet``: a file, directory or glob of Parquet files; the image column holds encoded
  bytes (JPEG/PNG) or a struct with a ``bytes`` field (the Hugging Face hub layout).
- ``synthetic``: seeded shapes on plain backgrounds (class = shape), no files.

Everything becomes ``Dataset(train=ImageArrays, test=ImageArrays, ...)`` with images
``(N, H, W, 3)`` uint8 and labels ``(N,)`` int64. ``load_dataset(cfg, cache_dir)`` keeps the
decoded arrays as ``.npy`` files keyed by the source's content, so a sweep decodes once and
every later trial memory-maps them (read-only, zero-copy).

Bad input raises one ``DataError`` that names the problem, the file/row and what is valid.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps

from ablate.config import ConfigurationError, DataConfig

#: Extensions an image folder may hold (torchvision's ``IMG_EXTENSIONS``).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
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
SPLITS: tuple[str, str] = ("train", "test")

# Bump when the decoded arrays of a source would change (invalidates every cache entry).
_CACHE_FORMAT = 2
# Files up to this size are content-hashed for the cache key (when a source has few files);
# larger ones are keyed by size + mtime, which is cheap for multi-GB sources.
_CONTENT_HASH_MAX_BYTES = 1 << 20
_CONTENT_HASH_MAX_FILES = 1000
_PROGRESS_MIN_IMAGES = 5000


class DataError(ValueError):
    """A dataset cannot be loaded as configured: the message says what, where and what is valid."""

    @property
    def key(self) -> str:
        """The dotted config key the message starts with (``data.root: ...``), else ``data``."""
        head, sep, _ = str(self).partition(": ")
        return head if sep and head.startswith("data.") and " " not in head else "data"


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


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Source:
    """A resolved source: the files it derives from (for the cache key) and its reader."""

    files: list[Path]
    read: Callable[[], tuple[ImageArrays, ImageArrays, list[str]]]


def load_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> Dataset:
    """Decode the source that ``cfg`` names into uint8 arrays (see the module docstring).

    With ``cache_dir``, the decoded arrays are stored once under ``cache_dir/<key>/`` (key: the
    data-relevant config fields plus the source files' sizes and mtimes, or contents for small
    sources) and every load, the first included, returns read-only memory maps of them.
    ``limit_train``/``limit_test`` keep the first N rows. Raises ``DataError`` on bad input.
    """
    source = _resolve_source(cfg)
    if cache_dir is None:
        train, test, class_names = source.read()
        mean, std = channel_stats(train.images)
    else:
        entry = Path(cache_dir) / cache_key(cfg, source.files)
        if not (entry / "meta.json").is_file():
            train, test, class_names = source.read()
            mean, std = channel_stats(train.images)
            _write_cache(entry, train, test, class_names, mean, std, cfg)
        train, test, class_names, mean, std = _read_cache(entry)
    return Dataset(
        train=train,
        test=test,
        class_names=class_names,
        mean=tuple(cfg.mean) if cfg.mean is not None else mean,  # type: ignore[arg-type]
        std=tuple(cfg.std) if cfg.std is not None else floored_std(std),  # type: ignore[arg-type]
        name=cfg.name,
    )


def _resolve_source(cfg: DataConfig) -> _Source:
    """Check paths and list files (fast, no decoding); download torchvision sets if allowed."""
    if cfg.name in _TORCHVISION:
        return _torchvision_source(cfg)
    if cfg.name == "image_folder":
        return _image_folder_source(cfg)
    if cfg.name == "parquet":
        return _parquet_source(cfg)
    return _synthetic_source(cfg)


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


#: Smallest std used to normalise a channel computed from the data (one 8-bit grey level).
STD_FLOOR = 1.0 / 255.0
_CHANNEL_NAMES = ("red", "green", "blue")


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


def _apply_limit(arrays: ImageArrays, limit: int | None) -> ImageArrays:
    if limit is None or limit >= len(arrays):
        return arrays
    return ImageArrays(
        np.ascontiguousarray(arrays.images[:limit]), np.ascontiguousarray(arrays.labels[:limit])
    )


def _limit_for(cfg: DataConfig, split: str) -> int | None:
    return cfg.limit_train if split == "train" else cfg.limit_test


# ----------------------------------------------------------------------------- decoding


class _RowProblem(Exception):
    """Raised inside decode workers; turned into a ``DataError`` naming the row."""

    def __init__(self, row: int, message: str, shape: tuple[int, int] | None = None):
        super().__init__(message)
        self.row = row
        self.message = message
        self.shape = shape


def _num_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    quiet = total < _PROGRESS_MIN_IMAGES or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=quiet, leave=False)


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _torchvision_decoder() -> Callable[[list[bytes]], list[np.ndarray | None]] | None:
    """torchvision's JPEG/PNG decoding (about 3x faster than Pillow on small images), if built.

    Returns ``decode(datas) -> images`` with ``None`` where torchvision cannot decode an item
    (other formats, corrupt data): the caller retries those with Pillow. JPEGs are decoded in
    one batched call, so the GIL is released once per chunk, not once per image. The EXIF
    orientation is applied; 16-bit PNGs are scaled to 8 bits (``value >> 8``).
    """
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    except ImportError:
        return None

    def to_hwc(tensor: torch.Tensor) -> np.ndarray | None:
        if tensor.dtype == torch.uint8:
            return tensor.permute(1, 2, 0).numpy()
        if tensor.dtype == torch.uint16:  # 16-bit PNG: keep the high byte, as Pillow does for RGB
            return (tensor.permute(1, 2, 0).numpy() >> 8).astype(np.uint8)
        return None

    def decode(datas: list[bytes]) -> list[np.ndarray | None]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        out: list[np.ndarray | None] = [None] * len(datas)
        jpegs = [i for i, d in enumerate(datas) if d[:3] == _JPEG_MAGIC]
        if len(jpegs) > 1:
            try:
                decoded = decode_jpeg(
                    [tensors[i] for i in jpegs], mode=ImageReadMode.RGB, apply_exif_orientation=True
                )
                for i, tensor in zip(jpegs, decoded, strict=True):
                    out[i] = to_hwc(tensor)
            except RuntimeError:
                pass  # a corrupt JPEG in the batch: decode one by one below
        for i, data in enumerate(datas):
            if out[i] is None and (data[:3] == _JPEG_MAGIC or data[:8] == _PNG_MAGIC):
                with contextlib.suppress(RuntimeError):  # Pillow retries and words the error
                    out[i] = to_hwc(
                        decode_image(tensors[i], ImageReadMode.RGB, apply_exif_orientation=True)
                    )
        return out

    return decode


# Pillow's single-channel modes of more than 8 bits; ``convert("RGB")`` clips them to 255.
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """Decode with Pillow into (H, W, 3) uint8, the EXIF orientation applied.

    16-bit grayscale (modes ``I;16*``, and ``I`` as older Pillow opens 16-bit PNGs) is scaled
    to 8 bits by ``value >> 8``; Pillow itself scales 16-bit RGB(A) and grayscale+alpha.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_GRAY_MODES:
            gray = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"))


def _resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic), then centre-crop to ``size`` x ``size``."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def decode_images(
    items: Sequence[bytes | Path],
    image_size: int | None,
    where: Callable[[int], str],
    desc: str = "decode",
) -> np.ndarray:
    """Decode encoded images (bytes, or paths of files) into one (N, H, W, 3) uint8 array.

    Runs on a thread pool (Pillow and torch ops decode outside the GIL); JPEG/PNG go through
    torchvision when it is built with image support, the rest through Pillow. Grayscale, alpha
    and palette images become RGB; 16-bit images are scaled to 8 bits (``value >> 8``); a JPEG's
    (or PNG's) EXIF orientation is applied, so an image is used as a viewer shows it. With
    ``image_size`` every image is resized (shorter side) and centre-cropped to that square;
    without it, all images must share the size of the first. ``where(row)`` describes a row for
    error messages (file and row). Raises ``DataError`` naming the row for an empty (0-byte),
    unreadable or undecodable image, or a size that differs without ``image_size``.
    """
    if not items:
        raise DataError(f"{desc}: no images")
    fast = _torchvision_decoder()

    def decode_rows(rows: range, expected: tuple[int, ...] | None) -> list[np.ndarray]:
        datas = []
        for row in rows:
            item = items[row]
            try:
                datas.append(item.read_bytes() if isinstance(item, Path) else item)
            except OSError as error:
                raise _RowProblem(row, f"cannot read ({error})") from error
            if not datas[-1]:  # torch.frombuffer and Pillow fail on it without saying where
                raise _RowProblem(row, "empty image (0 bytes): expected encoded image bytes")
        images = fast(datas) if fast is not None else [None] * len(datas)
        for k, (row, data) in enumerate(zip(rows, datas, strict=True)):
            image = images[k]
            if image is None:
                try:
                    image = _decode_with_pillow(data)
                except Exception as error:  # Pillow raises many types for corrupt data
                    message = f"cannot decode image ({type(error).__name__}: {error})"
                    raise _RowProblem(row, message) from None
            if image_size is not None:
                image = _resize_square(image, image_size)
            if expected is not None and image.shape != expected:
                raise _RowProblem(row, "size differs", shape=image.shape[:2])
            images[k] = image
        return images  # type: ignore[return-value]

    first = _checked(lambda: decode_rows(range(1), None)[0], where)
    out = np.empty((len(items), *first.shape), dtype=np.uint8)
    out[0] = first

    def fill(rows: range) -> int:
        for row, image in zip(rows, decode_rows(rows, first.shape), strict=True):
            out[row] = image
        return len(rows)

    threads = _num_threads()
    chunk = max(32, min(1024, len(items) // (threads * 8) + 1))
    chunks = [range(s, min(s + chunk, len(items))) for s in range(1, len(items), chunk)]
    with _progress(len(items), desc) as bar, ThreadPoolExecutor(threads) as pool:
        bar.update(1)
        futures = [pool.submit(fill, rows) for rows in chunks]
        try:
            for future in futures:  # in row order, so the first bad row is reported
                bar.update(_checked(future.result, where, first.shape[:2]))
        finally:
            for future in futures:
                future.cancel()
    return out


def _checked(
    call: Callable[[], Any], where: Callable[[int], str], first_shape: tuple[int, int] | None = None
) -> Any:
    """Run ``call()``, turning a row problem into a ``DataError`` that names the row."""
    try:
        return call()
    except _RowProblem as problem:
        if problem.shape is not None and first_shape is not None:
            raise DataError(
                "images have different sizes: "
                f"{where(0)} is {first_shape[0]}x{first_shape[1]} (HxW) but "
                f"{where(problem.row)} is {problem.shape[0]}x{problem.shape[1]}; set "
                "data.image_size to resize every image to one square size"
            ) from None
        raise DataError(f"{where(problem.row)}: {problem.message}") from None


# ----------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TorchvisionSet:
    folder: str
    required: tuple[str, ...]
    url: str


_TORCHVISION: dict[str, _TorchvisionSet] = {
    "cifar10": _TorchvisionSet(
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _TorchvisionSet(
        "cifar-100-python",
        ("train", "test", "meta"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "stl10": _TorchvisionSet(
        "stl10_binary",
        ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    ),
}


def _missing_files(root: Path, spec: _TorchvisionSet) -> list[str]:
    return [
        f"{spec.folder}/{name}"
        for name in spec.required
        if not (root / spec.folder / name).is_file()
    ]


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(cfg: DataConfig, root: Path, missing: list[str], why: str) -> str:
    return (
        f"data.name={cfg.name!r}: files missing under data.root={str(root)!r}: "
        f"{', '.join(missing)}. {why} Offline alternatives: copy the files there; or, on a "
        f"machine that has them, run `python -m entrypoints.export_dataset --source {cfg.name} "
        "--root DIR --out OUT` and use data.name='parquet' with data.train_path='OUT/train' and "
        "data.test_path='OUT/test'; or lay the images out as an image folder "
        "(ROOT/train/<class>/<image>, ROOT/test/<class>/<image>) and use "
        "data.name='image_folder' with data.root=ROOT."
    )


def _torchvision_source(cfg: DataConfig) -> _Source:
    spec = _TORCHVISION[cfg.name]
    if cfg.root is None:
        raise DataError(
            f"data.name={cfg.name!r} needs data.root (the directory holding "
            f"{spec.folder}/ or where to download it)"
        )
    root = Path(cfg.root).expanduser().resolve()
    missing = _missing_files(root, spec)
    if missing:
        if not cfg.download:
            raise DataError(
                _offline_message(cfg, root, missing, "Download is off (data.download=false).")
            )
        host = urlparse(spec.url).hostname
        if not _reachable(spec.url):
            raise DataError(
                _offline_message(
                    cfg, root, missing, f"Cannot download: {host} is unreachable (no network?)."
                )
            )
        _download(cfg.name, root)
        missing = _missing_files(root, spec)
        if missing:
            raise DataError(
                _offline_message(cfg, root, missing, "The download did not produce them.")
            )
    files = [root / spec.folder / name for name in spec.required]

    def read() -> tuple[ImageArrays, ImageArrays, list[str]]:
        train, test, class_names = _read_torchvision(cfg.name, root)
        splits = []
        for split, arrays in zip(SPLITS, (train, test), strict=True):
            arrays = _apply_limit(arrays, _limit_for(cfg, split))
            if cfg.image_size is not None and arrays.images.shape[1:3] != (cfg.image_size,) * 2:
                arrays = ImageArrays(_resize_all(arrays.images, cfg.image_size), arrays.labels)
            splits.append(arrays)
        return splits[0], splits[1], class_names

    return _Source(files, read)


def _download(name: str, root: Path) -> None:
    """torchvision's download (verifies the archive's md5, then extracts it under ``root``)."""
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    if name == "stl10":
        datasets.STL10(str(root), split="train", download=True)
    else:
        getattr(datasets, name.upper())(str(root), train=True, download=True)


def _read_torchvision(name: str, root: Path) -> tuple[ImageArrays, ImageArrays, list[str]]:
    """Parse torchvision's files with torchvision's own classes.

    The files are checked for presence, not checksums (``md5=None``): torchvision verifies the
    archive when it downloads, and this keeps copies made by other means loadable.
    """
    from torchvision import datasets

    if name == "stl10":

        class STL10Files(datasets.STL10):
            train_list: ClassVar = [[n, None] for n, _ in datasets.STL10.train_list[:2]]
            test_list: ClassVar = [[n, None] for n, _ in datasets.STL10.test_list]

        splits = [STL10Files(str(root), split=s) for s in SPLITS]
        arrays = [
            ImageArrays(
                np.ascontiguousarray(s.data.transpose(0, 2, 3, 1)),  # (N, C, H, W) -> (N, H, W, C)
                np.asarray(s.labels, dtype=np.int64),
            )
            for s in splits
        ]
        names = getattr(splits[0], "classes", None) or [str(i) for i in range(10)]
        return arrays[0], arrays[1], list(names)

    base = getattr(datasets, name.upper())

    class Files(base):  # type: ignore[misc, valid-type]
        train_list: ClassVar = [[n, None] for n, _ in base.train_list]
        test_list: ClassVar = [[n, None] for n, _ in base.test_list]
        meta: ClassVar = {**base.meta, "md5": None}

    try:
        splits = [Files(str(root), train=train) for train in (True, False)]
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise DataError(
            f"data.name={name!r}: cannot parse the files under {root / base.base_folder} "
            f"({type(error).__name__}: {error}); delete them to download afresh"
        ) from error
    arrays = [
        ImageArrays(np.ascontiguousarray(s.data), np.asarray(s.targets, dtype=np.int64))
        for s in splits
    ]
    return arrays[0], arrays[1], list(splits[0].classes)


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    with ThreadPoolExecutor(_num_threads()) as pool:
        for row, image in enumerate(
            pool.map(lambda im: _resize_square(im, size), images, chunksize=256)
        ):
            out[row] = image
    return out


# ----------------------------------------------------------------------------- image folder


def _image_folder_source(cfg: DataConfig) -> _Source:
    layout = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
    if cfg.root is None:
        raise DataError(f"data.name='image_folder' needs data.root ({layout})")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root: directory {str(root)!r} does not exist ({layout})")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"image_folder: {str(root)!r} has no 'train' folder ({layout})")
    class_names = _class_folders(train_dir)
    if not class_names:
        raise DataError(f"image_folder: {str(train_dir)!r} is empty: expected one folder per class")
    per_split: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"image_folder: {str(root)!r} has no {split!r} folder ({layout})")
        unknown = [name for name in _class_folders(split_dir) if name not in class_names]
        if unknown:
            raise DataError(
                f"image_folder: {str(split_dir)!r} has class folders missing from train: "
                f"{unknown}; the classes are the folders of {str(train_dir)!r}: {class_names}"
            )
        by_class = [_image_files(split_dir / name) for name in class_names]
        if split == "train":
            for name, files in zip(class_names, by_class, strict=True):
                if not files:
                    raise DataError(
                        f"image_folder: class folder {str(train_dir / name)!r} holds no images "
                        f"(extensions: {', '.join(IMAGE_EXTENSIONS)})"
                    )
        rows = list(_round_robin(by_class))
        if not rows:
            raise DataError(
                f"image_folder: no images under {str(split_dir)!r} ({layout}; extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        per_split[split] = rows
    files = [path for rows in per_split.values() for path, _ in rows]

    def read() -> tuple[ImageArrays, ImageArrays, list[str]]:
        splits = []
        for split in SPLITS:
            rows = per_split[split][: _limit_for(cfg, split)]
            paths = [path for path, _ in rows]
            images = decode_images(
                paths,
                cfg.image_size,
                lambda row, paths=paths, split=split: f"{split} row {row} (file {paths[row]})",
                desc=f"decode {split}",
            )
            splits.append(ImageArrays(images, np.array([c for _, c in rows], dtype=np.int64)))
        return splits[0], splits[1], class_names

    return _Source(files, read)


def _dangling(entry: os.DirEntry[str]) -> DataError | None:
    """The error for a symbolic link whose target does not exist, else None."""
    if not entry.is_symlink() or os.path.exists(entry.path):
        return None
    return DataError(
        f"data.root: {entry.path}: dangling symbolic link to {os.readlink(entry.path)!r}, "
        "which does not exist; restore its target or remove the link"
    )


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` not hidden (no leading dot), sorted by name."""
    try:
        with os.scandir(directory) as scan:
            return sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        raise DataError(f"data.root: cannot list {str(directory)!r}: {error.strerror}") from None


def _class_folders(split_dir: Path) -> list[str]:
    """The class folder names of ``split_dir`` (``ROOT/train``), sorted; a symlinked folder
    counts. Raises ``DataError`` naming a dangling symbolic link (it may have been a class)."""
    names = []
    for entry in _entries(split_dir):
        error = _dangling(entry)
        if error is not None:
            raise error
        if entry.is_dir():  # follows a symbolic link
            names.append(entry.name)
    return names


def _image_files(class_dir: Path) -> list[Path]:
    """The image files (by extension) at any depth under ``class_dir``, sorted; hidden files
    and folders (a leading dot: ``.DS_Store``, ``.ipynb_checkpoints``) are skipped.

    Symbolic links are followed, to folders and to files; each file keeps the path it was
    found by (through the link). A folder reached twice by its real path (two links to it) is
    read once. Raises ``DataError`` naming a dangling link, or a link to a folder that
    contains it (a loop, which would make this class hold itself), or a folder that cannot be
    listed."""
    if not class_dir.is_dir():
        return []
    found: list[Path] = []
    seen: set[str] = set()
    stack = [class_dir]
    while stack:
        directory = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        folders = []
        for entry in _entries(directory):
            error = _dangling(entry)
            if error is not None:
                raise error
            path = Path(entry.path)
            if entry.is_dir():
                target = os.path.realpath(path)
                if entry.is_symlink() and os.path.commonpath([real, target]) == target:
                    raise DataError(
                        f"data.root: {path}: symbolic link loop: it points to {target!r}, "
                        "a folder that contains the link; remove the link"
                    )
                folders.append(path)
            elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
        stack += reversed(folders)  # depth first, in name order: the first path to a folder wins
    return sorted(found)


def _round_robin(by_class: list[list[Path]]) -> Iterator[tuple[Path, int]]:
    """Interleave classes (c0[0], c1[0], ..., c0[1], ...) so a row limit stays class-balanced."""
    longest = max((len(files) for files in by_class), default=0)
    for i in range(longest):
        for label, files in enumerate(by_class):
            if i < len(files):
                yield files[i], label


# ----------------------------------------------------------------------------- parquet


def _parquet_files(spec: str, key: str) -> list[Path]:
    """A file, a directory (every ``*.parquet`` below it) or a glob -> sorted file list."""
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


def _parquet_source(cfg: DataConfig) -> _Source:
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
    sources = {"train": _parquet_files(cfg.train_path, "data.train_path")}
    if cfg.test_path is not None:
        sources["test"] = _parquet_files(cfg.test_path, "data.test_path")
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

    def read() -> tuple[ImageArrays, ImageArrays, list[str]]:
        rows = {}
        for split in SPLITS:
            files = sources.get(split, sources["train"])
            rows[split] = _read_parquet_rows(files, cfg, split, _limit_for(cfg, split))
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

    return _Source([p for files in sources.values() for p in files], read)


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


# ----------------------------------------------------------------------------- synthetic


def _synthetic_source(cfg: DataConfig) -> _Source:
    def read() -> tuple[ImageArrays, ImageArrays, list[str]]:
        splits = []
        for stream, (split, n) in enumerate(
            zip(SPLITS, (cfg.num_train, cfg.num_test), strict=True)
        ):
            limit = _limit_for(cfg, split)
            arrays = synthetic_images(
                n, cfg.synthetic_size, cfg.num_classes, cfg.seed, stream, rows=limit
            )
            if cfg.image_size is not None and cfg.image_size != cfg.synthetic_size:
                arrays = ImageArrays(_resize_all(arrays.images, cfg.image_size), arrays.labels)
            splits.append(arrays)
        return splits[0], splits[1], list(SYNTHETIC_SHAPES[: cfg.num_classes])

    return _Source([], read)


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
    labels = _synthetic_labels(rng, n, num_classes)
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


# ----------------------------------------------------------------------------- cache


def cache_key(cfg: DataConfig, files: Sequence[Path]) -> str:
    """Hash of the fields that shape the decoded arrays plus the source files' identity."""
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
    if cfg.name == "synthetic":
        fields.update(
            cfg.model_dump(
                mode="json",
                include={"num_train", "num_test", "num_classes", "synthetic_size", "seed"},
            )
        )
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
    return f"{cfg.name}-{digest.hexdigest()[:20]}"


_CACHE_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _write_cache(
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


def _read_cache(
    entry: Path,
) -> tuple[
    ImageArrays, ImageArrays, list[str], tuple[float, float, float], tuple[float, float, float]
]:
    meta = json.loads((entry / "meta.json").read_text())
    arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in _CACHE_ARRAYS}
    return (
        ImageArrays(arrays["train_images"], arrays["train_labels"]),
        ImageArrays(arrays["test_images"], arrays["test_labels"]),
        list(meta["class_names"]),
        tuple(meta["mean"]),
        tuple(meta["std"]),
    )


# ----------------------------------------------------------------------------- splits


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
        val.append(rng.permutation(rows)[: _val_count(len(rows), val_fraction)])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.empty(0, np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx


def _val_count(n: int, val_fraction: float) -> int:
    """Validation rows of a class of ``n`` rows (``train_val_split``'s rule)."""
    return min(n - 1, max(1, round(val_fraction * n))) if n > 1 else 0


def _synthetic_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """The classes of ``n`` synthetic images: balanced, shuffled (the first draw of ``rng``)."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


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


# ----------------------------------------------------------------------------- dataset facts

#: Classes and training images per class of the torchvision datasets (their ``train`` split;
#: STL-10's is the 5,000 labelled images, as ``_read_torchvision`` loads it).
KNOWN_TRAIN_CLASSES: dict[str, tuple[int, int]] = {
    "cifar10": (10, 5_000),
    "cifar100": (100, 500),
    "stl10": (10, 500),
}
#: Training-set sizes of the torchvision datasets (before the validation split).
KNOWN_TRAIN_SIZES: dict[str, int] = {k: n * c for k, (n, c) in KNOWN_TRAIN_CLASSES.items()}


def check_sources(cfg: DataConfig) -> None:
    """Check that the source ``cfg`` names can be read, decoding nothing.

    Parquet: files (a file, directory or glob), schemas, columns and class names;
    image folder: the ``ROOT/{train,test}/<class>`` layout and its image files, none of them
    empty (0 bytes: "empty image"; they are decoded in the trial workers); synthetic:
    nothing to check. Torchvision datasets (which may download) and URIs are left to
    ``load_dataset``. Raises ``DataError`` with the same message ``load_dataset`` would give.
    """
    if cfg.name in _TORCHVISION or cfg.name == "synthetic":
        return
    paths = [cfg.root, cfg.train_path, cfg.test_path]
    if any(p and "://" in p for p in paths):
        return
    source = _resolve_source(cfg)
    if cfg.name == "image_folder":
        # Image folders are decoded in the trial workers, not the driver: an empty file found
        # only there would fail a trial instead of stopping the sweep before it starts.
        for path in source.files:
            if path.stat().st_size == 0:
                raise DataError(
                    f"data.root: {path}: empty image (0 bytes): expected encoded image bytes; "
                    "remove the file or replace it"
                )


def train_class_counts(cfg: DataConfig) -> list[int] | None:
    """Training images per class (after ``limit_train``), known without decoding, else None.

    Synthetic: the exact labels; torchvision datasets: their published counts (with
    ``limit_train``: the first N rows, taken as balanced); local Parquet: the label column
    (the ``train`` rows of ``split_column``); local image folders: their files, counted. URIs:
    None.
    """
    limit = cfg.limit_train
    if cfg.name == "synthetic":
        rng = np.random.default_rng([cfg.seed, 0])  # stream 0: the train split
        labels = _synthetic_labels(rng, cfg.num_train, cfg.num_classes)[:limit]
        return np.unique(labels, return_counts=True)[1].tolist()
    if cfg.name in KNOWN_TRAIN_CLASSES:
        classes, per_class = KNOWN_TRAIN_CLASSES[cfg.name]
        if limit is None or limit >= classes * per_class:
            return [per_class] * classes
        return [limit // classes + (i < limit % classes) for i in range(classes)]
    if cfg.name == "parquet" and cfg.train_path and "://" not in cfg.train_path:
        return _parquet_class_counts(cfg)
    if cfg.name == "image_folder" and cfg.root and "://" not in cfg.root:
        train_dir = Path(cfg.root).expanduser().resolve() / "train"
        if not train_dir.is_dir():
            return None
        names = _class_folders(train_dir)
        rows = list(_round_robin([_image_files(train_dir / name) for name in names]))[:limit]
        return np.bincount([c for _, c in rows], minlength=len(names)).tolist() if rows else None
    return None


def _parquet_class_counts(cfg: DataConfig) -> list[int] | None:
    import pyarrow.parquet as pq

    columns = [cfg.label_column] + ([cfg.split_column] if cfg.split_column else [])
    try:
        files = _parquet_files(cfg.train_path or "", "data.train_path")
        table = pq.ParquetDataset([str(f) for f in files]).read(columns=columns)
    except (DataError, OSError, ValueError, KeyError):
        return None
    labels = table.column(cfg.label_column).to_numpy(zero_copy_only=False)
    if cfg.split_column:
        split = table.column(cfg.split_column).to_numpy(zero_copy_only=False)
        labels = labels[split == "train"]
    labels = labels[: cfg.limit_train]
    return np.unique(labels, return_counts=True)[1].tolist()


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
    val = sum(_val_count(int(n), val_fraction) for n in counts)
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


# ----------------------------------------------------------------------------- export


def export_parquet(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    rows_per_group: int = 4096,
    shard_rows: int = 50_000,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Write ``dataset`` as Parquet shards ``out_dir/{train,test}/part-NNNNN.parquet``.

    Columns: ``image`` (PNG bytes: lossless, so reading back gives identical pixels) and
    ``label`` (int64); schema metadata ``class_names`` (JSON list). Readable with
    ``DataConfig(name="parquet", train_path=out_dir/train, test_path=out_dir/test)``.
    Refuses a non-empty ``out_dir`` unless ``overwrite`` (which replaces its train/ and test/).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    check_export_target(out, overwrite)
    if rows_per_group < 1 or shard_rows < 1:
        raise ValueError("rows_per_group and shard_rows must be >= 1")
    metadata = {
        "class_names": json.dumps(dataset.class_names),
        "image_format": "png",
        "source": dataset.name,
    }
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64())], metadata=metadata)
    written: dict[str, list[Path]] = {}
    for split in SPLITS:
        arrays: ImageArrays = getattr(dataset, split)
        split_dir = out / split
        if split_dir.exists():
            shutil.rmtree(split_dir)
        split_dir.mkdir(parents=True)
        written[split] = []
        with _progress(len(arrays), f"export {split}") as bar:
            for part, start in enumerate(range(0, len(arrays), shard_rows)):
                stop = min(start + shard_rows, len(arrays))
                images = encode_png(arrays.images[start:stop], on_chunk=bar.update)
                table = pa.table(
                    {
                        "image": pa.array(images, pa.binary()),
                        "label": pa.array(np.asarray(arrays.labels[start:stop]), pa.int64()),
                    },
                    schema=schema,
                )
                path = split_dir / f"part-{part:05d}.parquet"
                pq.write_table(table, path, row_group_size=rows_per_group)
                written[split].append(path)
    return written


def check_export_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty export directory unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {str(out_dir)!r} is a file, expected a directory")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise DataError(
            f"--out {str(out_dir)!r} exists and is not empty; pass --overwrite "
            "(overwrite=True) to replace its train/ and test/ folders"
        )


def encode_png(images: np.ndarray, on_chunk: Callable[[int], Any] | None = None) -> list[bytes]:
    """(N, H, W, C) uint8 -> N PNG files' bytes, on a thread pool (Pillow releases the GIL)."""

    def encode(rows: range) -> list[bytes]:
        encoded = []
        for row in rows:
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(images[row])).save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        if on_chunk is not None:
            on_chunk(len(rows))
        return encoded

    chunks = [range(s, min(s + 512, len(images))) for s in range(0, len(images), 512)]
    with ThreadPoolExecutor(_num_threads()) as pool:
        return [b for part in pool.map(encode, chunks) for b in part]
