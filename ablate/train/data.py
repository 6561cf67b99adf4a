"""A trial's data on one worker: the decoded dataset split once (``TrialData``), and the rows
of one step as a uint8 batch on the training device (``to_device_batch``), gathered there when
the training set is held on the accelerator (``resident_data``).

Arrays: images (N, H, W, C) uint8, labels (N,) int64; the dataset and its split come from
``ablate.data`` (``load_dataset``, ``train_val_split``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ablate.config import TrialConfig


@dataclass
class TrialData:
    """The arrays one worker needs, split once from the decoded dataset."""

    images: np.ndarray  # (N, H, W, C) uint8, the whole training set (zero-copy view)
    labels: np.ndarray  # (N,) int64, writable copy
    pretrain_idx: np.ndarray  # rows used for pretraining (train minus validation)
    val_idx: np.ndarray  # the held-out, class-balanced validation rows
    test_images: np.ndarray  # (M, H, W, C) uint8 (zero-copy view)
    test_labels: np.ndarray  # (M,) int64, writable copy
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def prepare_data(config: TrialConfig, runtime: dict[str, Any]) -> TrialData:
    """Load (or receive from the object store) the decoded dataset and split it.

    Images stay the dataset's (possibly read-only) arrays; labels are writable int64 copies.
    """
    from ablate import data as data_lib

    dataset_ref = runtime.get("dataset_ref")
    if dataset_ref is not None:
        import ray

        dataset = ray.get(dataset_ref[0])
    else:
        dataset = data_lib.load_dataset(config.data, cache_dir=runtime.get("data_cache_dir"))
    # The labels are copied (8 bytes an image, against the images' H*W*C): the cache's memory
    # maps and Ray's object store hand out read-only arrays, which torch.from_numpy warns about
    # and must not write to. The images stay zero-copy views; every use indexes or slices
    # them into a copy first.
    labels = np.array(dataset.train.labels, dtype=np.int64)
    train_idx, val_idx = data_lib.train_val_split(
        labels, config.data.val_fraction, config.data.seed
    )
    mean = tuple(config.data.mean or dataset.mean)
    std = tuple(config.data.std or dataset.std)
    return TrialData(
        images=dataset.train.images,
        labels=labels,
        pretrain_idx=np.asarray(train_idx),
        val_idx=np.asarray(val_idx),
        test_images=dataset.test.images,
        test_labels=np.array(dataset.test.labels, dtype=np.int64),
        num_classes=len(dataset.class_names),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


def to_device_batch(
    images: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    device: torch.device,
    channels_last: bool,
) -> torch.Tensor:
    """uint8 rows (B, H, W, C) of ``images`` -> uint8 (B, C, H, W) tensor on ``device``.

    ``images`` a tensor already on ``device`` (``ResidentData``) with ``rows`` an index tensor
    there: the rows are gathered on the device (no host gather, no copy); else a host gather
    and one copy.
    """
    if isinstance(images, torch.Tensor):
        batch = images.index_select(0, torch.as_tensor(rows, device=images.device))
    else:
        batch = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device, non_blocking=True)
    # (B, H, W, C) memory is already channels-last for the (B, C, H, W) view.
    batch = batch.permute(0, 3, 1, 2)
    return batch if channels_last else batch.contiguous()


#: The most of an accelerator's free memory the resident training set may take (trials
#: packed on one GPU each hold their own copy).
RESIDENT_MAX_FRACTION = 0.25


@dataclass
class ResidentData:
    """The decoded training images (N, H, W, C) uint8 and labels (N,) int64 held on the
    training device, so that a step gathers its rows there with an index tensor."""

    images: torch.Tensor
    labels: torch.Tensor


def resident_data(
    images: np.ndarray, labels: np.ndarray, device: torch.device
) -> ResidentData | None:
    """``images``/``labels`` on ``device`` when they fit in ``RESIDENT_MAX_FRACTION`` of its
    free memory (CIFAR-10's 50,000 images: 154 MB), else None (the step then gathers on the
    host and copies). On the CPU the tensors share the arrays' memory (no copy)."""
    import warnings

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes + labels.nbytes > RESIDENT_MAX_FRACTION * free:
            return None
    with warnings.catch_warnings():
        # Read-only arrays (memory maps, Ray's object store): the tensors are only read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        host_images = torch.from_numpy(np.ascontiguousarray(images))
        host_labels = torch.from_numpy(np.ascontiguousarray(labels))
    return ResidentData(host_images.to(device), host_labels.to(device))
