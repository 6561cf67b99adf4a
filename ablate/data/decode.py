"""Encoded images (JPEG, PNG, ...; bytes or files) -> one (N, H, W, 3) uint8 array.

``decode_images`` decodes on a thread pool, through torchvision's decoders where built and
Pillow otherwise; ``resize_square``/``resize_all`` give every image one square side
(``data.image_size``). A bad row raises ``DataError`` naming it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ablate.data.errors import DataError

_PROGRESS_MIN_IMAGES = 5000


class _RowProblem(Exception):
    """Raised inside decode workers; turned into a ``DataError`` naming the row."""

    def __init__(self, row: int, message: str, shape: tuple[int, int] | None = None):
        super().__init__(message)
        self.row = row
        self.message = message
        self.shape = shape


def num_threads() -> int:
    """Threads for decoding and encoding: the CPUs this process may use, 1 to 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


def progress(total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` images, shown only on a terminal and for large sets."""
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


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
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
                image = resize_square(image, image_size)
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

    threads = num_threads()
    chunk = max(32, min(1024, len(items) // (threads * 8) + 1))
    chunks = [range(s, min(s + chunk, len(items))) for s in range(1, len(items), chunk)]
    with progress(len(items), desc) as bar, ThreadPoolExecutor(threads) as pool:
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


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """``resize_square`` every image of (N, H, W, C) ``images``, on a thread pool."""
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    with ThreadPoolExecutor(num_threads()) as pool:
        for row, image in enumerate(
            pool.map(lambda im: resize_square(im, size), images, chunksize=256)
        ):
            out[row] = image
    return out
