"""The torchvision sets ``cifar10``, ``cifar100`` and ``stl10``: torchvision's on-disk layout
under ``data.root`` (STL-10: the labelled ``train`` and ``test`` splits, 96 px), downloaded
when missing and ``data.download`` is on."""

from __future__ import annotations

import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlparse

import numpy as np

from ablate.data.arrays import SPLITS, ImageArrays
from ablate.data.decode import resize_all
from ablate.data.errors import DataError
from ablate.data.sources.source import Source, Splits, apply_limit, limit_for

if TYPE_CHECKING:
    from ablate.config import DataConfig


@dataclass(frozen=True)
class _TorchvisionSet:
    folder: str
    required: tuple[str, ...]
    url: str


#: The sets this module reads, by ``data.name``.
TORCHVISION_SETS: dict[str, _TorchvisionSet] = {
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


def resolve(cfg: DataConfig) -> Source:
    """Check that ``data.root`` holds the set's files, downloading them when missing and
    ``data.download`` is on; raises ``DataError`` with the offline alternatives otherwise."""
    spec = TORCHVISION_SETS[cfg.name]
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

    def read() -> Splits:
        train, test, class_names = _read_torchvision(cfg.name, root)
        splits = []
        for split, arrays in zip(SPLITS, (train, test), strict=True):
            arrays = apply_limit(arrays, limit_for(cfg, split))
            if cfg.image_size is not None and arrays.images.shape[1:3] != (cfg.image_size,) * 2:
                arrays = ImageArrays(resize_all(arrays.images, cfg.image_size), arrays.labels)
            splits.append(arrays)
        return splits[0], splits[1], class_names

    return Source(files, read)


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


#: Classes and training images per class of the torchvision datasets (their ``train`` split;
#: STL-10's is the 5,000 labelled images, as ``_read_torchvision`` loads it).
KNOWN_TRAIN_CLASSES: dict[str, tuple[int, int]] = {
    "cifar10": (10, 5_000),
    "cifar100": (100, 500),
    "stl10": (10, 500),
}


def class_counts(cfg: DataConfig) -> list[int]:
    """Training images per class (after ``limit_train``): the published counts; with
    ``limit_train``, the first N rows, taken as balanced."""
    classes, per_class = KNOWN_TRAIN_CLASSES[cfg.name]
    limit = cfg.limit_train
    if limit is None or limit >= classes * per_class:
        return [per_class] * classes
    return [limit // classes + (i < limit % classes) for i in range(classes)]
