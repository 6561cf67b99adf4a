"""Load a dataset: resolve its source, decode it once into uint8 arrays, cache them.

Sources (``DataConfig.name``):

- ``cifar10`` / ``cifar100`` / ``stl10``: torchvision's on-disk layout under ``root``
  (STL-10: the labelled ``train`` and ``test`` splits, 96 px).
- ``image_folder``: ``root/{train,test}/<class>/<image>``, any size (``image_size`` resizes);
  symbolic links to folders and files are followed (a dangling link or a loop is an error).
- ``parquet``: a file, directory or glob of Parquet files; the image column holds encoded
  bytes (JPEG/PNG) or a struct with a ``bytes`` field (the Hugging Face hub layout).
- ``synthetic``: seeded shapes on plain backgrounds (class = shape), no files.
- ``module.path:factory``: a user's own source (``ablate.data.sources.plugin``).

The sources are the registry ``ablate.data.sources.SOURCES``, one module per family.

Everything becomes ``Dataset(train=ImageArrays, test=ImageArrays, ...)`` with images
``(N, H, W, 3)`` uint8 and labels ``(N,)`` int64. ``load_dataset(cfg, cache_dir)`` keeps the
decoded arrays as ``.npy`` files keyed by the source's content, so a sweep decodes once and
every later trial memory-maps them (read-only, zero-copy).

Bad input raises one ``DataError`` that names the problem, the file/row and what is valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ablate.data.arrays import Dataset
from ablate.data.cache import cache_key, read_cache, write_cache
from ablate.data.sources import resolve_source, source_entry
from ablate.data.stats import channel_stats, floored_std

if TYPE_CHECKING:
    from ablate.config import DataConfig


def load_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> Dataset:
    """Decode the source that ``cfg`` names into uint8 arrays (see the module docstring).

    With ``cache_dir``, the decoded arrays are stored once under ``cache_dir/<key>/`` (key: the
    data-relevant config fields plus the source files' sizes and mtimes, or contents for small
    sources) and every load, the first included, returns read-only memory maps of them.
    ``limit_train``/``limit_test`` keep the first N rows. Raises ``DataError`` on bad input.
    """
    source = resolve_source(cfg)
    if cache_dir is None:
        train, test, class_names = source.read()
        mean, std = channel_stats(train.images)
    else:
        entry = Path(cache_dir) / cache_key(cfg, source.files)
        if not (entry / "meta.json").is_file():
            train, test, class_names = source.read()
            mean, std = channel_stats(train.images)
            write_cache(entry, train, test, class_names, mean, std, cfg)
        train, test, class_names, mean, std = read_cache(entry)
    return Dataset(
        train=train,
        test=test,
        class_names=class_names,
        mean=tuple(cfg.mean) if cfg.mean is not None else mean,  # type: ignore[arg-type]
        std=tuple(cfg.std) if cfg.std is not None else floored_std(std),  # type: ignore[arg-type]
        name=cfg.name,
    )


def check_sources(cfg: DataConfig) -> None:
    """Check that the source ``cfg`` names can be read, decoding nothing.

    Parquet: files (a file, directory or glob), schemas, columns and class names;
    image folder: the ``ROOT/{train,test}/<class>`` layout and its image files, none of them
    empty (0 bytes: "empty image"; they are decoded in the trial workers); synthetic:
    nothing to check; a user's source (``module.path:factory``): that it imports and takes one
    argument. Torchvision datasets (which may download) and URIs are left to
    ``load_dataset``. Raises ``DataError`` with the same message ``load_dataset`` would give.
    """
    check = source_entry(cfg.name).meta.get("check")
    if check is None:
        return
    paths = [cfg.root, cfg.train_path, cfg.test_path]
    if any(p and "://" in p for p in paths):
        return
    check(cfg)
