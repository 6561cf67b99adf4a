"""A user's own data source, named ``module.path:factory`` in ``data.name``.

The contract::

    def factory(cfg: DataConfig) -> tuple[train, test, class_names]

- ``cfg``: the trial's ``DataConfig`` (every ``data.*`` key, defaults filled in; read what the
  source needs, e.g. ``cfg.root``, ``cfg.train_path``, ``cfg.seed``). The factory gets a copy.
- ``train``, ``test``: each an ``ImageArrays`` or a pair ``(images, labels)``: ``images`` an
  ``(N, H, W, 3)`` uint8 array (RGB, 0..255, N >= 1), ``labels`` ``(N,)`` integers in
  ``0..len(class_names) - 1``. Train and test share one ``H x W`` unless ``data.image_size``
  is set.
- ``class_names``: a non-empty list of distinct strings; a class's label is its index.

As for a built-in source, ``data.limit_train``/``data.limit_test`` then keep the first N rows
of each split, ``data.image_size`` resizes (shorter side, bicubic) and centre-crops every image
to that square, the arrays are cached (the key covers the ``data.*`` keys that can change the
arrays and the factory's module file, so editing it decodes afresh), ``data.mean``/``data.std``
default to the training images' statistics, and the validation hold-out and labelled subset
are drawn per class.

The factory runs where a dataset is loaded: in the sweep's driver, which shares the arrays with
every trial through Ray's object store, or in a trial's worker; its module must import there
(from the launch directory, which Ray ships to every worker, or installed). Errors: a factory
that is not callable or does not take one argument is refused when the name is validated,
before anything runs; anything the factory raises, and a result that breaks the contract,
raise ``DataError`` (key ``data.name``) naming the split, the row and what is valid.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablate.data.arrays import SPLITS, ImageArrays
from ablate.data.decode import resize_all
from ablate.data.errors import DataError
from ablate.data.sources.source import Source, Splits, apply_limit, limit_for
from ablate.registry import Entry

if TYPE_CHECKING:
    from ablate.config import DataConfig

#: ``data.*`` keys that do not shape a source's arrays; a user source's cache key holds all others
#: (its factory may read any of them).
NOT_CACHED: frozenset[str] = frozenset({"val_fraction", "labelled_fraction", "mean", "std"})
_CONTRACT = (
    "expected factory(cfg) -> (train, test, class_names), train/test each an ImageArrays or "
    "(images (N, H, W, 3) uint8, labels (N,) int), class_names a list of str"
)


def check(name: str, factory: Any) -> Entry[Callable[[DataConfig], Source]]:
    """The registry's check of a plugin source: ``factory`` is callable with one argument.

    Returns the entry whose component is a resolver, like every built-in's; raises
    ``ValueError`` naming the factory and the fix (``source_entry`` makes it a ``DataError``
    at ``data.name``; the schema's validator reports it at the field).
    """
    if not callable(factory):
        raise ValueError(
            f"source {name!r} is a {type(factory).__name__}, not callable; {_CONTRACT}"
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        signature = None
    if signature is not None:
        try:
            signature.bind(None)
        except TypeError:
            raise ValueError(
                f"source {name!r} has the signature {signature}; it must take one argument, "
                f"the data config: {_CONTRACT}"
            ) from None
    from ablate.config import DataConfig  # on use: ablate.config imports this package

    module = sys.modules.get(name.partition(":")[0])
    module_file = getattr(module, "__file__", None)
    files = [Path(module_file).resolve()] if module_file else []
    doc = inspect.getdoc(factory) or ""
    return Entry(
        name,
        _resolver(name, factory, files),
        doc.strip().splitlines()[0] if doc.strip() else "",
        {
            "cache_fields": tuple(f for f in DataConfig.model_fields if f not in NOT_CACHED),
            "factory": factory,
        },
        plugin=True,
    )


def _resolver(
    name: str, factory: Callable[[DataConfig], Any], files: list[Path]
) -> Callable[[DataConfig], Source]:
    def resolve(cfg: DataConfig) -> Source:
        def read() -> Splits:
            try:
                result = factory(cfg.model_copy(deep=True))
            except DataError:
                raise
            except Exception as error:  # anything the user's code raises
                raise DataError(
                    f"data.name: source {name!r} raised {type(error).__name__}: {error}"
                ) from error
            return conform(name, result, cfg)

        return Source(list(files), read)

    return resolve


def conform(name: str, result: Any, cfg: DataConfig) -> Splits:
    """Check a factory's ``result`` against the contract (module docstring) and apply
    ``data.limit_train``/``data.limit_test`` and ``data.image_size``.

    Returns ``(train, test, class_names)`` with int64 labels; raises ``DataError`` (key
    ``data.name``) saying what is wrong, in which split and row, and what is valid.
    """
    where = f"data.name: source {name!r}"
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise DataError(f"{where} returned {_kind(result)}; {_CONTRACT}")
    train, test, names = result
    class_names = _class_names(where, names)
    splits = []
    for split, value in zip(SPLITS, (train, test), strict=True):
        arrays = apply_limit(_split(where, split, value, len(class_names)), limit_for(cfg, split))
        if cfg.image_size is not None and arrays.images.shape[1:3] != (cfg.image_size,) * 2:
            arrays = ImageArrays(resize_all(arrays.images, cfg.image_size), arrays.labels)
        splits.append(arrays)
    (train_h, train_w), (test_h, test_w) = (s.images.shape[1:3] for s in splits)
    if (train_h, train_w) != (test_h, test_w):
        raise DataError(
            f"{where} returned train images of {train_h}x{train_w} (HxW) but test images of "
            f"{test_h}x{test_w}; return one size, or set data.image_size to resize every image "
            "to one square side"
        )
    return splits[0], splits[1], class_names


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _class_names(where: str, names: Any) -> list[str]:
    if (
        isinstance(names, str)
        or not isinstance(names, Sequence)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        shown = re.sub(r"\s+", " ", repr(names))[:80]
        raise DataError(
            f"{where} returned class_names {shown}; expected a non-empty list of str (a "
            "class's label is its index)"
        )
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise DataError(f"{where} returned class_names with duplicates: {duplicates}")
    return list(names)


def _split(where: str, split: str, value: Any, num_classes: int) -> ImageArrays:
    if isinstance(value, ImageArrays):
        images, labels = value.images, value.labels
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        images, labels = np.asarray(value[0]), np.asarray(value[1])
    else:
        raise DataError(
            f"{where} returned {split} as {_kind(value)}; expected an ImageArrays or a pair "
            "(images, labels)"
        )
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or not len(images):
        raise DataError(
            f"{where} returned {split} images of shape {images.shape} and dtype {images.dtype}; "
            "expected (N, H, W, 3) uint8 with N >= 1 (RGB, 0..255)"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where} returned {split} labels of shape {labels.shape} and dtype {labels.dtype}; "
            f"expected ({len(images)},) integers, one class index per image"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"{where}: {split} row {int(bad[0])}: label {int(labels[bad[0]])} is out of range; "
            f"valid: 0..{num_classes - 1} (class_names has {num_classes})"
        )
    return ImageArrays(images, labels.astype(np.int64))
