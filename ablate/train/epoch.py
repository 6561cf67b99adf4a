"""One epoch of one worker: ``worker.steps_per_epoch`` pretraining steps on its shard
(``run_epoch``), stopped at the first non-finite loss, the sums reduced over every worker.

Each epoch re-seeds the augmentation generator (``epoch_seed``) and draws its shard from the
trial's seed (``ablate.data.shard_indices``), so a run resumed from a checkpoint trains as an
uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from ablate.config import TrialConfig
from ablate.train.data import resident_data, to_device_batch
from ablate.train.step import bare_model, pretraining_step

if TYPE_CHECKING:
    from ablate.train.worker import Worker


@dataclass
class EpochResult:
    """One epoch's pretraining, summed over every worker."""

    loss_sum: float
    top1_sum: float
    steps: float  # steps completed by all workers together (at least 1)
    seconds: float  # this worker's wall time for the epoch
    started_at: float  # time.time() at its first step
    diverged: str  # why the epoch stopped on a non-finite loss ("" if it did not)


#: Steps between the host's reads of the divergence flag when steps skip on the device
#: (``Pretraining.device_skip``): one host sync per this many steps, and at most this many
#: skipped steps run after a divergence before the epoch stops.
DIVERGENCE_CHECK_EVERY = 25


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the augmentation generator of one worker in one epoch.

    Re-seeding per epoch makes a run resumed from a checkpoint draw the same augmentations as
    an uninterrupted one, with no generator state to carry.
    """
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63 - 1)


def epoch_rows(
    worker: Worker, epoch: int, device: torch.device | None = None
) -> np.ndarray | torch.Tensor:
    """(steps_per_epoch, local_batch) row numbers of this worker's steps in ``epoch``, each
    step's rows sorted; on ``device`` when given (one copy per epoch)."""
    data, config = worker.data, worker.config
    order = data.pretrain_idx[
        _shard(len(data.pretrain_idx), worker.rank, worker.world_size, epoch, config)
    ]
    used = worker.steps_per_epoch * worker.local_batch
    rows = np.sort(order[:used].reshape(worker.steps_per_epoch, worker.local_batch), axis=1)
    return rows if device is None else torch.from_numpy(rows).to(device)


def run_epoch(
    worker: Worker, generator: torch.Generator, epoch: int, poison: bool = False
) -> EpochResult:
    """``worker.steps_per_epoch`` pretraining steps on this worker's shard of ``epoch``; stops
    at the first non-finite loss (seen by the host within ``DIVERGENCE_CHECK_EVERY`` steps
    when steps skip on the device; the steps after it update nothing and count for nothing).
    ``poison``: make the losses NaN (fault injection).

    On an accelerator the training set is held there when it fits (``resident_data``; kept
    on the worker), so a step gathers its rows there. On the CPU the rows are gathered from the
    arrays as before: numpy's gather of 256 rows of 32x32x3 uint8 took 80 us against 0.8-8 ms
    for ``torch.index_select`` (2 loaded cores), and there is no copy to save.
    """
    config, data, parts, device = worker.config, worker.data, worker.parts, worker.device
    bare_model(parts.model).train()
    generator.manual_seed(epoch_seed(config.train.seed, worker.rank, epoch))
    if worker.resident is None:
        held = resident_data(data.images, data.labels, device) if device.type != "cpu" else None
        worker.resident = held or False
    resident = worker.resident or None
    rows = epoch_rows(worker, epoch, device if resident is not None else None)
    online = worker.online if config.eval.online_probe else None
    epoch_start = time.time()
    loss_sum = top1_sum = torch.zeros((), device=device)
    steps_done = torch.zeros((), dtype=torch.int64, device=device)
    healthy = torch.ones((), dtype=torch.bool, device=device)  # every step so far finite
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    bad_loss = torch.zeros((), device=device)
    lrs: list[float] = []  # each step's lr, for the divergence message
    for step in range(worker.steps_per_epoch):
        lrs.append(parts.scheduler.get_last_lr()[0])
        if resident is not None:
            images, labels = resident.images, resident.labels.index_select(0, rows[step])
        else:
            images, labels = data.images, torch.from_numpy(data.labels[rows[step]]).to(device)
        result = pretraining_step(
            parts,
            to_device_batch(images, rows[step], device, parts.channels_last),
            generator,
            online,
            labels,
            poison=poison,
        )
        newly_bad = healthy & ~result.finite
        first_bad = torch.where(newly_bad, step, first_bad)
        bad_loss = torch.where(newly_bad, result.loss, bad_loss)
        healthy = healthy & result.finite
        loss_sum = loss_sum + torch.where(healthy, result.loss, 0.0)
        top1_sum = top1_sum + torch.where(healthy, result.contrastive_top1, 0.0)
        steps_done = steps_done + healthy.long()
        if result.host_finite is not None:  # read by the step already: no second wait
            if not result.host_finite:
                break
        elif (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not healthy.item():
            break
    # One read of everything the epoch reports (waits for the device); stacked as fp32, which
    # holds the fp32 sums and the step numbers (< 2**24) exactly.
    read = torch.stack([healthy, first_bad, bad_loss, loss_sum, top1_sum, steps_done])
    all_finite, bad_step, bad_value, *local_sums = read.tolist()
    diverged = ""
    if not all_finite:
        diverged = (
            f"non-finite loss ({bad_value}) at epoch {epoch}, step {int(bad_step) + 1}; "
            f"lr={lrs[int(bad_step)]:.4g}"
        )
    seconds = time.time() - epoch_start
    total_loss, total_top1, total_steps = _all_reduce_sum(local_sums, device)
    return EpochResult(
        total_loss, total_top1, max(total_steps, 1.0), seconds, epoch_start, diverged
    )


def _shard(n: int, rank: int, world_size: int, epoch: int, config: TrialConfig) -> np.ndarray:
    from ablate.data import shard_indices

    return np.asarray(shard_indices(n, rank, world_size, epoch, config.train.seed))


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
