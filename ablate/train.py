"""One trial: SimCLR pretraining plus evaluation, run by a Ray Train ``TorchTrainer``.

``build_trainer(config)`` turns a resolved trial config (``ablate.config.TrialConfig``) into a
``TorchTrainer`` whose workers run ``train_loop_per_worker``; ``fit_trial`` runs one to the end
outside Tune. The loop pretrains with the global batch split over the workers (DDP; gloo on
CPU, nccl on GPU) and reads top to bottom in its parts:

* build: ``build_worker`` (data, model, optimiser, schedule, online probe), ``distribute``;
* checkpoint: ``write_checkpoint`` / ``read_checkpoint`` own the layout, ``resume`` reads Ray
  Train's latest; ``report`` sends an epoch's result, with a checkpoint when one is due;
* one epoch: ``run_epoch`` (the steps of ``pretraining_step``);
* evaluation: ``evaluate`` -> ``validation_monitors`` or ``final_evaluation``;
* fault injection: ``ablate.faults.FaultInjector``, called at start, per epoch and after each
  report.

Every epoch reports ``epoch``, ``vocabulary.EPOCH_METRICS``, the latest
``vocabulary.MONITOR_METRICS`` (``val/knn_top1``, ``val/online_top1``, carried between
evaluations) and ``vocabulary.TEXT_KEYS`` (status "running" | "completed" | "diverged",
reason). The last epoch (and each of ``eval.probe.epochs``) adds ``vocabulary.FINAL_METRICS``:
the offline linear probe, kNN and the online probe on the validation and test splits and, with
semi-supervised fine-tuning, ``*/semi_top1``/``*/semi_top5``, reported at that epoch only.
Ranking and early stopping use ``val/knn_top1``: it is comparable across batch sizes and
temperatures, unlike the contrastive loss, and it never touches the test split.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ablate import vocabulary
from ablate.config import ConfigurationError, TrialConfig
from ablate.faults import FaultInjector

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- helpers


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto`` picks bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), where it
    measured 2.4-3.4x faster than fp32 for CIFAR-stem ResNets; elsewhere bf16 is emulated and
    slower, so fp32 is kept.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the augmentation generator of one worker in one epoch.

    Re-seeding per epoch makes a run resumed from a checkpoint draw the same augmentations as
    an uninterrupted one, with no generator state to carry.
    """
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63 - 1)


def worker_device(assigned: torch.device, cuda_available: bool) -> torch.device:
    """The device a worker trains on: Ray Train's ``assigned`` one (``ray.train.torch.
    get_device()``: ``cuda:i`` when the worker reserved a GPU), or the CPU when CUDA is not
    usable in this process (a node that declares GPU resources it does not have, a driver
    mismatch): the trial then runs, slower, instead of failing on its first CUDA call."""
    if assigned.type == "cuda" and not cuda_available:
        return torch.device("cpu")
    return assigned


def process_group_backend(use_gpu: bool, cuda_available: bool) -> str:
    """The torch.distributed backend of a trial's workers: nccl when they reserve GPUs and
    CUDA is usable, else gloo (nccl has no CPU tensors)."""
    return "nccl" if use_gpu and cuda_available else "gloo"


def gpus_usable() -> bool:
    """Whether the GPUs the Ray cluster declares are CUDA devices, as far as the trial's
    driver can tell (it reserves no GPU itself, so Ray may hide them from it): True when
    another node declares GPUs (assumed real), else whether this node has CUDA or an NVIDIA
    driver loaded. False on a node that declares GPU resources it does not have (a test's
    ``ray.init(num_gpus=1)`` on a CPU machine)."""
    import ray

    if ray.is_initialized():
        here = ray.get_runtime_context().get_node_id()
        gpu_nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
        if any(node["NodeID"] != here for node in gpu_nodes):
            return True
    return (
        torch.cuda.is_available()
        or os.path.exists("/proc/driver/nvidia/version")
        or os.path.exists("/dev/nvidiactl")
    )


def agreed_finite(loss: torch.Tensor) -> torch.Tensor:
    """0-dim bool on ``loss``'s device: the loss is finite on every worker (an all-reduce of
    the flag with MIN; no host synchronisation on an accelerator)."""
    finite = torch.isfinite(loss)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = finite.to(torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag > 0
    return finite


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


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


# ----------------------------------------------------------------------------- one step


@dataclass
class Pretraining:
    """What one worker's pretraining step uses, built from the trial config."""

    model: torch.nn.Module  # SimCLRModel, possibly DDP-wrapped or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    pipeline: Any  # ablate.augment.TwoViewAugment
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    #: Skip a non-finite step on the device (``LARS.step(ok=...)``), the host reading the
    #: divergence flag every ``DIVERGENCE_CHECK_EVERY`` steps only. False: the host reads the
    #: flag every step and skips there (the CPU, where that read costs nothing, and the
    #: optimisers without a device-side skip: SGD, AdamW).
    device_skip: bool = False


def build_pretraining(
    config: TrialConfig,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    steps_per_epoch: int,
) -> Pretraining:
    """Encoder, head, optimiser, warmup-cosine schedule, loss and augmentation of ``config``."""
    from ablate import augment, loss, models, optim

    encoder = models.build_encoder(config.model)
    head = models.build_head(config.model, encoder.feat_dim)
    model: torch.nn.Module = models.SimCLRModel(encoder, head)
    channels_last = config.train.channels_last
    model = model.to(device, memory_format=torch.channels_last if channels_last else None)
    model = models.convert_sync_batchnorm(model, config.model)
    optimizer = optim.build_optimizer(model, config.optim, config.train.batch_size)
    total_steps = steps_per_epoch * config.train.epochs
    warmup_steps = round(min(config.optim.warmup_epochs, config.train.epochs) * steps_per_epoch)
    return Pretraining(
        model=model,
        optimizer=optimizer,
        scheduler=optim.warmup_cosine(optimizer, warmup_steps, total_steps),
        loss_fn=loss.build_loss(config.loss),
        pipeline=augment.build_pipeline(config.augment, mean, std),
        device=device,
        amp_dtype=autocast_dtype(config.train.precision, device),
        channels_last=channels_last,
        device_skip=device.type != "cpu" and isinstance(optimizer, optim.LARS),
    )


def contrastive_forward(
    parts: Pretraining, view1: torch.Tensor, view2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both views (B, C, H, W) through encoder and head as one batch: ``(h, z1, z2, loss)``.

    ``h`` is (2B, F) in the autocast dtype; ``z1``, ``z2`` are (B, D) fp32; ``loss`` a scalar.
    """
    both = torch.cat([view1, view2])
    if parts.channels_last:
        both = both.contiguous(memory_format=torch.channels_last)
    with torch.autocast(
        parts.device.type, dtype=parts.amp_dtype, enabled=parts.amp_dtype is not None
    ):
        h, z = parts.model(both)
    z1, z2 = z.float().chunk(2)
    return h, z1, z2, parts.loss_fn(z1, z2)


def optimizer_step(
    parts: Pretraining, step_loss: torch.Tensor, ok: torch.Tensor | None = None
) -> None:
    """Backward, optimiser step and one scheduler step; ``ok`` (0-dim bool on the device,
    LARS only): the update is skipped on the device where it is False."""
    parts.optimizer.zero_grad(set_to_none=True)
    step_loss.backward()
    if ok is None:
        parts.optimizer.step()
    else:
        parts.optimizer.step(ok=ok)
    parts.scheduler.step()


@dataclass
class StepResult:
    """What one pretraining step reports; tensors stay on the device (no host sync)."""

    loss: torch.Tensor  # 0-dim fp32, detached
    contrastive_top1: torch.Tensor  # 0-dim fp32
    #: 0-dim bool on the device: the loss was finite on every worker (else nothing was
    #: updated: model, optimiser state and online probe keep their values)
    finite: torch.Tensor
    #: ``finite`` as the host read it, when it did (not ``parts.device_skip``); else None
    host_finite: bool | None = None


def pretraining_step(
    parts: Pretraining,
    images: torch.Tensor,
    generator: torch.Generator,
    online: Any = None,
    labels: torch.Tensor | None = None,
    poison: bool = False,
) -> StepResult:
    """One SimCLR step, exactly as every worker runs it (the throughput benchmark calls it too).

    ``images``: uint8 (B, C, H, W) on the device; ``labels``: (B,) for the online probe.
    Two views, encoder + head + loss, a finiteness check agreed by all workers, then backward,
    optimiser and schedule step, and one online-probe step on the detached h of the first
    view; a non-finite step updates nothing. With ``parts.device_skip`` the check stays on the
    device and the updates are masked there (no host sync in the step); else the host reads
    the flag and skips them. ``poison`` multiplies the loss by NaN (fault injection).
    """
    from ablate.loss import contrastive_top1

    h, z1, z2, step_loss = contrastive_forward(parts, *parts.pipeline(images, generator))
    if poison:
        step_loss = step_loss * float("nan")
    finite = agreed_finite(step_loss)
    has_probe = online is not None and labels is not None
    host_finite = None
    if parts.device_skip:
        optimizer_step(parts, step_loss, ok=finite)
        if has_probe:
            online.step(h[: len(images)], labels, ok=finite)
    elif host_finite := bool(finite.item()):
        optimizer_step(parts, step_loss)
        if has_probe:
            online.step(h[: len(images)], labels)
    return StepResult(
        loss=step_loss.detach(),
        contrastive_top1=contrastive_top1(z1.detach(), z2.detach()),
        finite=finite,
        host_finite=host_finite,
    )


# ----------------------------------------------------------------------------- build


@dataclass
class Worker:
    """What one worker of a trial holds, built once from the trial config (``build_worker``)."""

    config: TrialConfig
    rank: int
    world_size: int
    data: TrialData
    parts: Pretraining  # model, optimiser, schedule, loss, augmentation, device, precision
    online: Any  # ablate.probe.OnlineProbe on the encoder's features
    local_batch: int  # this worker's share of train.batch_size
    steps_per_epoch: int
    #: The training set on the device (``resident_data``), made at the first epoch; False
    #: when it does not fit there.
    resident: ResidentData | bool | None = None

    @property
    def device(self) -> torch.device:
        return self.parts.device


def build_worker(
    config: TrialConfig,
    runtime: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> Worker:
    """Seed, load and split the data, build the model, optimiser and online probe of ``config``
    for worker ``rank`` of ``world_size`` (``runtime``: see ``train_loop_per_worker``).

    Raises ``ConfigurationError`` (``data.check_batch``) when one step's batch exceeds the
    pretraining set.
    """
    from ablate import probe
    from ablate.data import check_batch

    device = device or torch.device("cpu")
    torch.manual_seed(config.train.seed)
    data = prepare_data(config, runtime)
    local_batch = config.train.batch_size // world_size
    check_batch((len(data.pretrain_idx), len(data.val_idx)), config.train.batch_size, world_size)
    steps_per_epoch = len(data.pretrain_idx) // world_size // local_batch
    if config.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    parts = build_pretraining(config, data.mean, data.std, device, steps_per_epoch)
    online = probe.OnlineProbe(
        _bare(parts.model).encoder.feat_dim, data.num_classes, config.eval.online_probe_lr
    )
    online.to(device)
    return Worker(config, rank, world_size, data, parts, online, local_batch, steps_per_epoch)


def distribute(worker: Worker) -> None:
    """Wrap the model for DDP (Ray Train) and compile it in ``train.compile``'s mode; after a
    checkpoint was read into the bare model.

    Only the model (encoder + head, forward and backward) is compiled: augmentation, loss and
    optimiser step stay eager, so the augmentation generator's draws never enter a graph
    (CUDA graphs of ``reduce-overhead`` cannot capture a CPU generator, and would replay a
    device generator's captured offsets).
    """
    import ray.train.torch

    # The worker's own device (it may have fallen back to the CPU: ``worker_device``) for DDP.
    model = ray.train.torch.prepare_model(worker.parts.model, move_to_device=worker.device)
    worker.parts.model = compiled(model, worker.config.train.compile)


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` under ``torch.compile`` in ``mode`` (``TrainConfig.compile``); ``off``: as is."""
    return model if mode == "off" else torch.compile(model, mode=mode)


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The SimCLR model inside torch.compile and DDP wrappers."""
    return _unwrap(getattr(model, "_orig_mod", model))


# ----------------------------------------------------------------------------- checkpoint

#: The one file of a checkpoint directory: see ``write_checkpoint`` for its keys.
CHECKPOINT_FILE = "state.pt"


@dataclass
class TrialState:
    """What a trial carries from epoch to epoch and across a restart, in its checkpoint."""

    epoch: int = 0  # the last epoch completed
    #: The latest value of each monitor, reported at every epoch until it is evaluated again
    #: (the ranking metric is always present, NaN before its first evaluation, for ASHA).
    monitors: dict[str, float] = field(
        default_factory=lambda: {vocabulary.DEFAULT_RANKING_METRIC: float("nan")}
    )
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's report
    #: Not saved: what this worker group's checkpoint names end with ("" unless it resumed
    #: from an older checkpoint than Train's latest, which was damaged: ``ablate.checkpoint``).
    checkpoint_suffix: str = ""


def write_checkpoint(directory: str, worker: Worker, state: TrialState) -> None:
    """Save the worker's model, optimiser, schedule, online probe and torch RNG with ``state``
    to ``directory/CHECKPOINT_FILE`` (the layout ``read_checkpoint`` reads)."""
    parts = worker.parts
    torch.save(
        {
            "model": _bare(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "online_probe": worker.online.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": state.epoch,
            "carried_metrics": dict(state.monitors),
            "history": state.history,
        },
        os.path.join(directory, CHECKPOINT_FILE),
    )


def read_checkpoint(directory: str, worker: Worker) -> TrialState:
    """Load what ``write_checkpoint`` saved in ``directory`` into ``worker``; its state."""
    parts = worker.parts
    saved = torch.load(
        os.path.join(directory, CHECKPOINT_FILE), map_location=worker.device, weights_only=True
    )
    _bare(parts.model).load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    worker.online.load_state_dict(saved["online_probe"])
    torch.set_rng_state(saved["torch_rng"])
    state = TrialState(epoch=int(saved["epoch"]), history=list(saved["history"]))
    state.monitors.update({k: float(v) for k, v in saved["carried_metrics"].items()})
    return state


def resume(worker: Worker) -> TrialState | None:
    """The state of Ray Train's latest checkpoint of this run, loaded into ``worker``; None
    when the run starts fresh. A latest checkpoint that does not load (cut short) is skipped
    for the newest older one that does, with a warning in the trial's log
    (``ablate.checkpoint.load_newest_intact``); raises ``CheckpointDamaged`` when none does."""
    import ray.train

    from ablate.checkpoint import load_newest_intact

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    resumed = load_newest_intact(checkpoint, lambda directory: read_checkpoint(directory, worker))
    resumed.value.checkpoint_suffix = resumed.suffix
    return resumed.value


def checkpoint_dir_name(epoch: int, suffix: str = "") -> str:
    """The checkpoint directory of ``epoch`` (``TrialState.checkpoint_suffix``)."""
    from ablate.checkpoint import dir_name

    return dir_name(epoch, suffix)


# ----------------------------------------------------------------------------- one epoch


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
    _bare(parts.model).train()
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


# ----------------------------------------------------------------------------- evaluation


def evaluate(worker: Worker, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
    """The evaluations due after ``epoch`` (rank 0 only): ``(monitors, probe_results)``.

    At the last epoch and each of ``eval.probe.epochs``: ``final_evaluation``, whose
    validation monitors also update the monitors; else every ``eval.eval_every`` epochs the
    validation monitors alone; otherwise nothing.
    """
    config = worker.config
    if worker.rank != 0:
        return {}, {}
    if epoch == config.train.epochs or epoch in config.eval.probe.epochs:
        # Extracts the features once for the probe and the kNN monitor alike.
        results = final_evaluation(worker)
        monitors = {k: v for k, v in results.items() if k in vocabulary.MONITOR_METRICS}
        return monitors, results
    if vocabulary.monitor_measured(epoch, config.train.epochs, config.eval.eval_every):
        return validation_monitors(worker), {}
    return {}, {}


def validation_monitors(worker: Worker) -> dict[str, float]:
    """``val/knn_top1`` against the pretraining bank and ``val/online_top1``."""
    from ablate import probe

    data, parts = worker.data, worker.parts
    bank = data.pretrain_idx
    feats = probe.extract_features(
        _bare(parts.model).encoder,
        data.images[np.concatenate([bank, data.val_idx])],
        data.mean,
        data.std,
        device=parts.device,
        channels_last=parts.channels_last,
        autocast_dtype=parts.amp_dtype,
    )
    return monitor_metrics(
        "val",
        feats[: len(bank)],
        torch.from_numpy(data.labels[bank]),
        feats[len(bank) :],
        torch.from_numpy(data.labels[data.val_idx]),
        worker.online,
        worker.config,
        data.num_classes,
    )


def monitor_metrics(
    split: str,
    bank_feats: torch.Tensor,
    bank_labels: torch.Tensor,
    feats: torch.Tensor,
    labels: torch.Tensor,
    online: Any,
    config: TrialConfig,
    num_classes: int,
) -> dict[str, float]:
    """``<split>/knn_top1`` (weighted kNN against the pretraining bank) and, when enabled,
    ``<split>/online_top1`` of the online probe. Features (N, F) on the CPU, labels (N,)."""
    from ablate import probe

    results = {
        f"{split}/knn_top1": probe.knn_top1(
            bank_feats,
            bank_labels,
            feats,
            labels,
            k=config.eval.knn_k,
            temperature=config.eval.knn_temperature,
            num_classes=num_classes,
        )
    }
    if config.eval.online_probe:
        results[f"{split}/online_top1"] = online.accuracy(feats, labels)
    return results


def final_evaluation(worker: Worker) -> dict[str, float]:
    """Linear probe, kNN and online probe on frozen features of the train, validation and
    test splits (features extracted once; ``val/knn_top1`` stays the ranking metric), and
    with ``eval.semi_supervised`` fine-tuning on ``data.labelled_fraction``: the names of
    ``vocabulary.FINAL_METRICS`` plus the validation monitors."""
    from ablate import probe

    config, data, parts = worker.config, worker.data, worker.parts
    encoder = _bare(parts.model).encoder
    extract = {
        "device": parts.device,
        "channels_last": parts.channels_last,
        "autocast_dtype": parts.amp_dtype,
    }
    train_rows = data.pretrain_idx
    train_feats = probe.extract_features(
        encoder, data.images[train_rows], data.mean, data.std, **extract
    )
    val_feats = probe.extract_features(
        encoder, data.images[data.val_idx], data.mean, data.std, **extract
    )
    test_feats = probe.extract_features(encoder, data.test_images, data.mean, data.std, **extract)
    train_labels = torch.from_numpy(data.labels[train_rows])
    val_labels = torch.from_numpy(data.labels[data.val_idx])
    test_labels = torch.from_numpy(data.test_labels)
    results = probe.linear_probe(
        train_feats,
        train_labels,
        {"val": (val_feats, val_labels), "test": (test_feats, test_labels)},
        data.num_classes,
        config.eval.probe,
        seed=config.train.seed,
    )
    for split, feats, labels in (("val", val_feats, val_labels), ("test", test_feats, test_labels)):
        results.update(
            monitor_metrics(
                split,
                train_feats,
                train_labels,
                feats,
                labels,
                worker.online,
                config,
                data.num_classes,
            )
        )
    semi = config.eval.semi_supervised
    if semi.enabled and config.data.labelled_fraction:
        from ablate.data import labelled_subset

        subset = train_rows[
            labelled_subset(
                data.labels[train_rows], config.data.labelled_fraction, config.data.seed
            )
        ]
        results.update(
            probe.fine_tune(
                encoder,
                encoder.feat_dim,
                data.images[subset],
                data.labels[subset],
                {
                    "val": (data.images[data.val_idx], val_labels.numpy()),
                    "test": (data.test_images, data.test_labels),
                },
                data.num_classes,
                semi,
                augment_fn=None,
                mean=data.mean,
                std=data.std,
                device=parts.device,
                seed=config.train.seed,
            )
        )
    return results


# ----------------------------------------------------------------------------- reporting


def epoch_metrics(
    worker: Worker, epoch: int, result: EpochResult, overhead: float, restored_epoch: int
) -> dict[str, Any]:
    """The report of ``epoch`` before evaluation: ``vocabulary.EPOCH_METRICS`` but
    ``wall_seconds`` (set when the report is sent), ``status: running``."""
    return {
        "epoch": epoch,
        "train/loss": result.loss_sum / result.steps,
        "train/contrastive_top1": result.top1_sum / result.steps,
        "train/lr": worker.parts.scheduler.get_last_lr()[0],
        "train/images_per_sec": result.steps * worker.local_batch / max(result.seconds, 1e-9),
        "train/epoch_seconds": result.seconds,
        "overhead_seconds": overhead,
        # The checkpoint epoch this worker group started from: > 0 after a restart.
        "restored_epoch": restored_epoch,
        "status": "running",
        "reason": "",
    }


def report(worker: Worker, state: TrialState, metrics: dict[str, Any], save: bool) -> str | None:
    """Send ``metrics`` through ``ray.train.report``, with a checkpoint of ``state`` (written
    by rank 0) when ``save``; the checkpoint's directory name, or None."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return None
    name = checkpoint_dir_name(state.epoch, state.checkpoint_suffix)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if worker.rank == 0:
            write_checkpoint(directory, worker, state)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
    return name


def configuration_failure(error: Exception) -> dict[str, Any]:
    """The one report of a trial whose config or data cannot run (``ConfigurationError``,
    ``DataError``: deterministic, so not retried): ``status: failed`` and the message
    as ``reason`` (``vocabulary.trial_outcome`` reads it), epoch 0 and NaN monitors (Tune
    checks that every result holds the ranking metric)."""
    return {
        "epoch": 0,
        **{metric: float("nan") for metric in vocabulary.MONITOR_METRICS},
        "status": "failed",
        "reason": str(error),
    }


# ----------------------------------------------------------------------------- the loop


class StartupTimes:
    """Where a trial's fixed overhead goes: seconds from the trial's start (``launched_at``,
    ``time.time()`` in the Tune trial actor) to each stage of this worker's start-up.

    Stages: ``fit`` (the trial actor built the trainer and called ``fit()``), ``worker process``
    (this process was created: Train's controller actor and placement group came before it),
    ``train loop`` (Ray Train's set-up and the process group were done), then each ``mark``.
    """

    def __init__(self, launched_at: float, fit_at: float | None) -> None:
        import psutil

        self.launched_at = launched_at
        self.stages: list[tuple[str, float]] = []
        if fit_at is not None:
            self.stages.append(("fit", fit_at))
        self.stages.append(("worker process", psutil.Process().create_time()))
        self.mark("train loop")

    def mark(self, stage: str) -> None:
        self.stages.append((stage, time.time()))

    def describe(self, first_step_at: float) -> str:
        """One line: each stage's offset (s) from the trial's start, then the first step's."""
        stages = [*self.stages, ("first step", first_step_at)]
        times = ", ".join(f"{name} +{at - self.launched_at:.1f}" for name, at in stages)
        return f"trial start-up (s after the trial started): {times}"


def train_loop_per_worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train worker entry point: ``{"config": resolved TrialConfig, "runtime": {...}}``.

    ``runtime`` holds what is not part of the experiment's definition: ``launched_at`` (the
    trial's start, to measure the fixed per-trial overhead), ``dataset_ref`` (a one-element list
    with an object-store reference to the decoded dataset) or ``data_cache_dir``, and
    ``heartbeat`` (``[ReportRelay handle, channel]``: every worker beats there, for the sweep's
    stall watchdog, ``ablate.relay``).

    Returns every epoch's report, the epochs before a restart included (they travel in the
    checkpoint), which ``TorchTrainer.fit().return_value`` hands to the caller.
    """
    import ray.train
    import ray.train.torch

    from ablate.data import DataError

    config = TrialConfig.model_validate(loop_config["config"])
    runtime = loop_config.get("runtime", {})
    launched_at = runtime.get("launched_at") or time.time()
    startup = StartupTimes(launched_at, runtime.get("fit_at"))
    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    try:
        worker = build_worker(
            config,
            runtime,
            context.get_world_rank(),
            context.get_world_size(),
            worker_device(ray.train.torch.get_device(), torch.cuda.is_available()),
        )
    except (ConfigurationError, DataError) as error:
        # Every worker fails alike: report it and return, so that Ray Train's FailureConfig
        # does not restart a worker group that cannot run (a crash would be retried).
        failed = configuration_failure(error)
        ray.train.report(failed)
        return [failed]
    startup.mark("data + model")
    if runtime.get("heartbeat"):
        from ablate.relay import Heartbeat

        relay, channel = runtime["heartbeat"]
        Heartbeat(relay, channel, worker.rank).start()  # a daemon: it ends with the worker
    resumed = resume(worker)
    state = resumed or TrialState()
    faults = FaultInjector(config.train.faults, worker.rank, resumed=resumed is not None)
    restored_epoch = state.epoch
    distribute(worker)
    startup.mark("checkpoint + DDP")
    generator = torch.Generator(device=worker.device)
    wall_start = time.time()
    overhead: float | None = None
    faults.at_start()
    if resumed is not None and state.epoch >= config.train.epochs and state.history:
        # Every epoch ran before the restart: report the last one again, or a trial Tune
        # restored without a result would end with none (and Tune's metric check fails).
        ray.train.report(state.history[-1])

    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        faults.before_epoch(epoch)
        result = run_epoch(worker, generator, epoch, poison=faults.poison_loss(epoch))
        if overhead is None:
            overhead = result.started_at - launched_at
            if worker.rank == 0:
                # Train's worker logger: the sweep's log file (ablate.console), not the console.
                # (A print reaches that file twice: Train copies prints to its logger.)
                logger.info(startup.describe(result.started_at))
        metrics = epoch_metrics(worker, epoch, result, overhead, restored_epoch)
        if result.diverged:
            metrics.update(state.monitors, status="diverged", reason=result.diverged)
            metrics["wall_seconds"] = time.time() - wall_start
            state.history.append(metrics)
            ray.train.report(metrics)
            return state.history

        monitors, probe_results = evaluate(worker, epoch)
        state.monitors.update(monitors)
        metrics.update(state.monitors)
        metrics.update(probe_results)  # only at the epoch it was measured
        last = epoch == config.train.epochs
        if last:
            metrics["status"] = "completed"
        metrics["wall_seconds"] = time.time() - wall_start
        state.history.append(metrics)
        state.epoch = epoch
        save = last or epoch % config.train.checkpoint_every == 0
        faults.after_epoch(epoch, report(worker, state, metrics, save))
    return state.history


# ----------------------------------------------------------------------------- the trainer


def repeated_crash_policy(failure_config: Any) -> Any:
    """Ray Train's default failure policy (``FailureConfig``'s retries), except that a worker
    group in which a worker process died (a native crash: a signal, no Python exception) for
    the second time is not retried again: a segfault at a given width or kernel repeats, and
    each retry costs a worker group's start-up for nothing."""
    from ray.train.v2._internal.execution.failure_handling.default import DefaultFailurePolicy
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision

    from ablate.relay import process_died

    class RepeatedCrashPolicy(DefaultFailurePolicy):
        crashes = 0

        def make_decision(self, training_failed_error: Any) -> Any:
            failures = getattr(training_failed_error, "worker_failures", None) or {}
            if any(process_died(f) for f in failures.values()):
                self.crashes += 1
                if self.crashes >= 2:
                    return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return RepeatedCrashPolicy(failure_config)


#: Ray Train's limit (s) on waiting for a worker group's placement group (``constants``).
WORKER_GROUP_START_TIMEOUT_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def build_trainer(
    config: dict[str, Any],
    *,
    storage_path: str,
    name: str,
    callbacks: list[Any] | tuple[Any, ...] = (),
    launched_at: float | None = None,
    dataset_ref: Any = None,
    data_cache_dir: str | None = None,
    max_failures: int = 2,
    placement_janitor: str | None = None,
    heartbeat: tuple[Any, str] | None = None,
) -> Any:
    """A ``TorchTrainer`` that runs one trial of ``config`` (a trial config dict).

    Re-running a trainer with the same ``storage_path``/``name`` continues from the run's
    latest checkpoint; a worker group that fails is restarted up to ``max_failures`` times and
    resumes from the latest checkpoint as well.

    Two of Ray Train's default controller callbacks each start one more actor (a Python
    process importing Ray Train) per run, and are left out: the Ray Data ``DatasetsCallback``
    (a ``DatasetManager``; the trials read no Ray Dataset) and, when ``placement_janitor``
    names a sweep's ``ablate.placement.PlacementGroupJanitor``, the per-run
    ``PlacementGroupCleaner``, whose work that janitor does for every trial of the sweep.

    ``heartbeat``: ``(ReportRelay handle, channel)`` the workers beat to (``ablate.relay``).
    The worker group waits up to ``resources.schedule_timeout_s`` for the cluster to hold it
    (Train's own limit is 60 s, after which it retries with a new placement group: on a
    busy cluster that churn never ends).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    from ablate.placement import JanitorCallback
    from ablate.rendezvous import LocalRendezvousTorchConfig

    class TrialTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            # Ray Train 2.60 builds the controller's failure policy in fit(); ours only adds
            # the rule for a worker process that dies twice.
            policy = repeated_crash_policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(
                **{**controller_init_kwargs, "failure_policy": policy}
            )

        def _create_default_callbacks(self) -> list[Any]:
            # Ray Train 2.60 builds its default callbacks in this private method; the others
            # are kept as they are.
            callbacks = []
            for callback in super()._create_default_callbacks():
                if isinstance(callback, DatasetsCallback):
                    continue
                if placement_janitor and isinstance(callback, PlacementGroupCleanerCallback):
                    callback = JanitorCallback(placement_janitor)
                callbacks.append(callback)
            return callbacks

    # Train V2 starts a PreemptionWatcher actor per worker group (one more process to start
    # beside the workers, and an error line from the controller's core worker at each start);
    # it only observes node preemption, which a failed worker group's restart from its
    # checkpoint covers. Train passes the variable on to the controller and workers it starts.
    # RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 in the environment turns it back on.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

    trial = TrialConfig.model_validate(config)
    resources = trial.resources
    # Read by the controller that fit() starts (Train passes the variable on to it).
    os.environ[WORKER_GROUP_START_TIMEOUT_VAR] = f"{resources.schedule_timeout_s:g}"
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    runtime = {
        "launched_at": launched_at or time.time(),
        "fit_at": time.time(),  # the trainer is fitted as soon as it is built
        "dataset_ref": dataset_ref,
        "data_cache_dir": data_cache_dir,
        "heartbeat": list(heartbeat) if heartbeat else None,
    }
    return TrialTrainer(
        train_loop_per_worker,
        train_loop_config={"config": trial.model_dump(mode="json"), "runtime": runtime},
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
        ),
        torch_config=LocalRendezvousTorchConfig(
            backend=process_group_backend(use_gpu, use_gpu and gpus_usable())
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks) or None,
        ),
    )


def fit_trial(
    config: dict[str, Any], *, storage_path: str, name: str, **kwargs: Any
) -> list[dict[str, Any]]:
    """Fit one trial's ``TorchTrainer`` to the end outside Tune (``kwargs``: see
    ``build_trainer``); returns every epoch's report (rank 0's), raises the trial's error."""
    result = build_trainer(config, storage_path=storage_path, name=name, **kwargs).fit()
    if result.error is not None:
        raise result.error
    return list(result.return_value or [])
