"""Data sources by ``data.name``: the registry ``SOURCES``, one module per source family.

Each entry's component is a resolver ``resolve(cfg: DataConfig) -> Source`` (``source.py``:
check paths and list files, then ``Source.read()`` decodes). Its meta says what is known
before decoding: ``check(cfg)`` (preflight's check of the files, decoding nothing; absent:
nothing to check before loading), ``class_counts(cfg) -> list[int] | None`` (training images
per class, for batch-size and step counts; absent: not known without decoding) and
``cache_fields`` (further ``data.*`` keys that shape the arrays, for the cache key).

A user's own source is named ``module.path:factory`` (the contract: ``plugin.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ablate.data.errors import DataError
from ablate.data.sources import image_folder, parquet, plugin, synthetic, torchvision_sets
from ablate.data.sources.source import Source, Splits, apply_limit, limit_for
from ablate.registry import Entry, Registry

if TYPE_CHECKING:
    from ablate.config import DataConfig

SOURCES: Registry[Callable[[DataConfig], Source]] = Registry(
    "data source", "data.name", check=plugin.check
)

for _name, _what in (
    ("cifar10", "CIFAR-10 (32 px, 10 classes)"),
    ("cifar100", "CIFAR-100 (32 px, 100 classes)"),
    ("stl10", "STL-10's labelled images (96 px, 10 classes)"),
):
    SOURCES.add(
        _name,
        torchvision_sets.resolve,
        f"{_what}: torchvision's files under data.root, downloaded if missing",
        class_counts=torchvision_sets.class_counts,
    )
SOURCES.add(
    "image_folder",
    image_folder.resolve,
    "ROOT/{train,test}/<class>/<image> under data.root, any size (data.image_size resizes)",
    check=image_folder.check,
    class_counts=image_folder.class_counts,
)
SOURCES.add(
    "parquet",
    parquet.resolve,
    "Parquet files (data.train_path, data.test_path or data.split_column) of encoded images "
    "and integer labels",
    check=parquet.resolve,
    class_counts=parquet.class_counts,
)
SOURCES.add(
    "synthetic",
    synthetic.resolve,
    "seeded shapes on plain backgrounds (class = shape), no files or download",
    class_counts=synthetic.class_counts,
    cache_fields=synthetic.CACHE_FIELDS,
)


def source_entry(name: str) -> Entry[Callable[[DataConfig], Source]]:
    """The ``SOURCES`` entry of ``data.name`` (a user's source imported and checked).

    Raises ``DataError`` (key ``data.name``) for an unknown name (with did-you-mean), a plugin
    that does not import, or one that breaks the contract (``plugin.check``).
    """
    try:
        return SOURCES.get(name)
    except DataError:
        raise
    except ValueError as error:  # unknown, not importable, or not a source (plugin.check)
        raise DataError(f"data.name: {error}") from error


def resolve_source(cfg: DataConfig) -> Source:
    """Check paths and list files (fast, no decoding); download torchvision sets if allowed."""
    return source_entry(cfg.name).component(cfg)


__all__ = [
    "SOURCES",
    "Source",
    "Splits",
    "apply_limit",
    "limit_for",
    "resolve_source",
    "source_entry",
]
