"""The ``image_folder`` source: ``ROOT/{train,test}/<class>/<image>``, any size
(``data.image_size`` resizes); symbolic links to folders and files are followed (a dangling
link or a loop is an error)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.data.arrays import SPLITS, ImageArrays
from ablate.data.decode import decode_images
from ablate.data.errors import DataError
from ablate.data.sources.source import Source, Splits, limit_for

if TYPE_CHECKING:
    from ablate.config import DataConfig

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


def resolve(cfg: DataConfig) -> Source:
    """Check the ``ROOT/{train,test}/<class>/<image>`` layout under ``data.root`` and list its
    image files (classes: the folders of ``train``, sorted; rows interleave the classes)."""
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

    def read() -> Splits:
        splits = []
        for split in SPLITS:
            rows = per_split[split][: limit_for(cfg, split)]
            paths = [path for path, _ in rows]
            images = decode_images(
                paths,
                cfg.image_size,
                lambda row, paths=paths, split=split: f"{split} row {row} (file {paths[row]})",
                desc=f"decode {split}",
            )
            splits.append(ImageArrays(images, np.array([c for _, c in rows], dtype=np.int64)))
        return splits[0], splits[1], class_names

    return Source(files, read)


def check(cfg: DataConfig) -> None:
    """``resolve`` plus no empty (0-byte) image file, decoding nothing.

    Image folders are decoded in the trial workers, not the driver: an empty file found only
    there would fail a trial instead of stopping the sweep before it starts.
    """
    for path in resolve(cfg).files:
        if path.stat().st_size == 0:
            raise DataError(
                f"data.root: {path}: empty image (0 bytes): expected encoded image bytes; "
                "remove the file or replace it"
            )


def class_counts(cfg: DataConfig) -> list[int] | None:
    """Training images per class (after ``limit_train``), from the files of a local folder
    (None for a URI, a missing ``train`` folder or no images)."""
    if not cfg.root or "://" in cfg.root:
        return None
    train_dir = Path(cfg.root).expanduser().resolve() / "train"
    if not train_dir.is_dir():
        return None
    names = _class_folders(train_dir)
    rows = list(_round_robin([_image_files(train_dir / name) for name in names]))[: cfg.limit_train]
    return np.bincount([c for _, c in rows], minlength=len(names)).tolist() if rows else None


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
