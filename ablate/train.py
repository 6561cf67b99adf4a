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

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ablate import vocabulary
from ablate.config import TrialConfig
from ablate.faults import FaultInjector

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
    images: np.ndarray, rows: np.ndarray, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """uint8 rows (B, H, W, C) of ``images`` -> uint8 (B, C, H, W) tensor on ``device``."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device, non_blocking=True)
    # (B, H, W, C) memory is already channels-last for the (B, C, H, W) view.
    batch = batch.permute(0, 3, 1, 2)
    return batch if channels_last else batch.contiguous()


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


def optimizer_step(parts: Pretraining, step_loss: torch.Tensor) -> None:
    """Backward, optimiser step and one scheduler step."""
    parts.optimizer.zero_grad(set_to_none=True)
    step_loss.backward()
    parts.optimizer.step()
    parts.scheduler.step()


@dataclass
class StepResult:
    """What one pretraining step reports; tensors stay on the device (no host sync)."""

    loss: torch.Tensor  # 0-dim fp32, detached
    contrastive_top1: torch.Tensor  # 0-dim fp32
    finite: bool  # the loss was finite on every worker (else nothing was updated)


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
    Two views, encoder + head + loss, a finiteness check agreed by all workers (the step's one
    host sync), then backward, optimiser and schedule step, and one online-probe step on the
    detached h of the first view. ``poison`` multiplies the loss by NaN (fault injection).
    """
    from ablate.loss import contrastive_top1

    h, z1, z2, step_loss = contrastive_forward(parts, *parts.pipeline(images, generator))
    if poison:
        step_loss = step_loss * float("nan")
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    finite = _all_reduce_sum([float(torch.isfinite(step_loss))], parts.device)[0] == world_size
    if finite:
        optimizer_step(parts, step_loss)
        if online is not None and labels is not None:
            online.step(h[: len(images)], labels)
    return StepResult(
        loss=step_loss.detach(),
        contrastive_top1=contrastive_top1(z1.detach(), z2.detach()),
        finite=finite,
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

    Raises ValueError when one step's batch exceeds the pretraining set.
    """
    from ablate import probe

    device = device or torch.device("cpu")
    torch.manual_seed(config.train.seed)
    data = prepare_data(config, runtime)
    local_batch = config.train.batch_size // world_size
    steps_per_epoch = len(data.pretrain_idx) // world_size // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} is larger than the pretraining set "
            f"({len(data.pretrain_idx)} images after the validation split)"
        )
    if config.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    parts = build_pretraining(config, data.mean, data.std, device, steps_per_epoch)
    online = probe.OnlineProbe(
        _bare(parts.model).encoder.feat_dim, data.num_classes, config.eval.online_probe_lr
    )
    online.to(device)
    return Worker(config, rank, world_size, data, parts, online, local_batch, steps_per_epoch)


def distribute(worker: Worker) -> None:
    """Wrap the model for DDP (Ray Train) and, with ``train.compile``, compile it; after a
    checkpoint was read into the bare model."""
    import ray.train.torch

    model = ray.train.torch.prepare_model(worker.parts.model, move_to_device=False)
    worker.parts.model = torch.compile(model) if worker.config.train.compile else model


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
    when the run starts fresh."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return read_checkpoint(directory, worker)


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:05d}"


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


def run_epoch(
    worker: Worker, generator: torch.Generator, epoch: int, poison: bool = False
) -> EpochResult:
    """``worker.steps_per_epoch`` pretraining steps on this worker's shard of ``epoch``; stops
    at the first non-finite loss. ``poison``: make the losses NaN (fault injection)."""
    config, data, parts, device = worker.config, worker.data, worker.parts, worker.device
    _bare(parts.model).train()
    generator.manual_seed(epoch_seed(config.train.seed, worker.rank, epoch))
    order = data.pretrain_idx[
        _shard(len(data.pretrain_idx), worker.rank, worker.world_size, epoch, config)
    ]
    online = worker.online if config.eval.online_probe else None
    epoch_start = time.time()
    loss_sum = top1_sum = torch.zeros((), device=device)
    steps_done, diverged = 0, ""
    for step in range(worker.steps_per_epoch):
        rows = np.sort(order[step * worker.local_batch : (step + 1) * worker.local_batch])
        result = pretraining_step(
            parts,
            to_device_batch(data.images, rows, device, parts.channels_last),
            generator,
            online,
            torch.from_numpy(data.labels[rows]).to(device),
            poison=poison,
        )
        if not result.finite:
            diverged = (
                f"non-finite loss ({result.loss.item()}) at epoch {epoch}, step {step + 1}; "
                f"lr={parts.scheduler.get_last_lr()[0]:.4g}"
            )
            break
        loss_sum = loss_sum + result.loss
        top1_sum = top1_sum + result.contrastive_top1
        steps_done += 1
    local_sums = [loss_sum.item(), top1_sum.item(), float(steps_done)]  # waits for the device
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
    if epoch % config.eval.eval_every == 0:
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
    name = checkpoint_dir_name(state.epoch)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if worker.rank == 0:
            write_checkpoint(directory, worker, state)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
    return name


# ----------------------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train worker entry point: ``{"config": resolved TrialConfig, "runtime": {...}}``.

    ``runtime`` holds what is not part of the experiment's definition: ``launched_at`` (the
    trial's start, to measure the fixed per-trial overhead), ``dataset_ref`` (a one-element list
    with an object-store reference to the decoded dataset) or ``data_cache_dir``.

    Returns every epoch's report, the epochs before a restart included (they travel in the
    checkpoint), which ``TorchTrainer.fit().return_value`` hands to the caller.
    """
    import ray.train
    import ray.train.torch

    config = TrialConfig.model_validate(loop_config["config"])
    runtime = loop_config.get("runtime", {})
    launched_at = runtime.get("launched_at") or time.time()
    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    worker = build_worker(
        config,
        runtime,
        context.get_world_rank(),
        context.get_world_size(),
        ray.train.torch.get_device(),
    )
    resumed = resume(worker)
    state = resumed or TrialState()
    faults = FaultInjector(config.train.faults, worker.rank, resumed=resumed is not None)
    restored_epoch = state.epoch
    distribute(worker)
    generator = torch.Generator(device=worker.device)
    wall_start = time.time()
    overhead: float | None = None
    faults.at_start()

    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        result = run_epoch(worker, generator, epoch, poison=faults.poison_loss(epoch))
        if overhead is None:
            overhead = result.started_at - launched_at
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
) -> Any:
    """A ``TorchTrainer`` that runs one trial of ``config`` (a trial config dict).

    Re-running a trainer with the same ``storage_path``/``name`` continues from the run's
    latest checkpoint; a worker group that fails is restarted up to ``max_failures`` times and
    resumes from the latest checkpoint as well.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trial = TrialConfig.model_validate(config)
    resources = trial.resources
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    runtime = {
        "launched_at": launched_at or time.time(),
        "dataset_ref": dataset_ref,
        "data_cache_dir": data_cache_dir,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": trial.model_dump(mode="json"), "runtime": runtime},
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=per_worker,
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
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
