"""One trial: SimCLR pretraining plus evaluation, run by a Ray Train ``TorchTrainer``.

``build_trainer(config)`` turns a resolved trial config (``ablate.config.TrialConfig``) into a
``TorchTrainer`` whose workers run ``train_loop_per_worker``. The loop builds everything from
the config, pretrains with the global batch split over the workers (DDP; gloo on CPU, nccl on
GPU), and reports once per epoch through ``ray.train.report``:

    epoch, train/loss, train/contrastive_top1, train/lr, train/images_per_sec,
    train/epoch_seconds, val/knn_top1 (carried between evaluations), val/online_top1,
    wall_seconds, overhead_seconds, restored_epoch,
    status ("running" | "completed" | "diverged"), reason

The last epoch (and each of ``eval.probe.epochs``) adds the offline linear probe, kNN and the
online probe on the validation and test splits (``val/probe_top1``, ``val/probe_top5``,
``test/probe_top1``, ``test/probe_top5``, ``test/knn_top1``, ``test/online_top1``;
``*/semi_top1`` when semi-supervised fine-tuning is on), reported at that epoch only.
Ranking and early stopping use ``val/knn_top1``: it is comparable across batch sizes and
temperatures, unlike the contrastive loss, and it never touches the test split.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ablate.config import TrialConfig

#: Rows of the report that are not metrics (strings); every other key is a number.
TEXT_KEYS = ("status", "reason")
CHECKPOINT_FILE = "state.pt"
#: Monitors reported at every epoch, carried from their latest evaluation (``eval_every``).
CARRIED_METRICS = ("val/knn_top1", "val/online_top1")


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
    labels: np.ndarray  # (N,) int64
    pretrain_idx: np.ndarray  # rows used for pretraining (train minus validation)
    val_idx: np.ndarray  # the held-out, class-balanced validation rows
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def prepare_data(config: TrialConfig, runtime: dict[str, Any]) -> TrialData:
    """Load (or receive from the object store) the decoded dataset and split it."""
    from ablate import data as data_lib

    dataset_ref = runtime.get("dataset_ref")
    if dataset_ref is not None:
        import ray

        dataset = ray.get(dataset_ref[0])
    else:
        dataset = data_lib.load_dataset(config.data, cache_dir=runtime.get("data_cache_dir"))
    labels = np.asarray(dataset.train.labels)
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
        test_labels=np.asarray(dataset.test.labels),
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

    from ablate import probe

    config = TrialConfig.model_validate(loop_config["config"])
    runtime = loop_config.get("runtime", {})
    launched_at = runtime.get("launched_at") or time.time()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    torch.manual_seed(config.train.seed)

    trial_data = prepare_data(config, runtime)
    local_batch = config.train.batch_size // world_size
    shard_len = len(trial_data.pretrain_idx) // world_size
    steps_per_epoch = shard_len // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} is larger than the pretraining set "
            f"({len(trial_data.pretrain_idx)} images after the validation split)"
        )
    if config.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)

    parts = build_pretraining(config, trial_data.mean, trial_data.std, device, steps_per_epoch)
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    channels_last, amp_dtype = parts.channels_last, parts.amp_dtype
    feat_dim = _unwrap(model).encoder.feat_dim
    online = probe.OnlineProbe(feat_dim, trial_data.num_classes, config.eval.online_probe_lr)
    online.to(device)

    start_epoch, carried = 0, {"val/knn_top1": float("nan")}
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(
                os.path.join(directory, CHECKPOINT_FILE), map_location=device, weights_only=True
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        online.load_state_dict(state["online_probe"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"])
        carried.update({k: float(v) for k, v in state["carried_metrics"].items()})
        history = list(state["history"])
    resumed = checkpoint is not None
    restored_epoch = start_epoch

    model = ray.train.torch.prepare_model(model, move_to_device=False)
    if config.train.compile:
        model = torch.compile(model)
    parts.model = model
    generator = torch.Generator(device=device)
    wall_start = time.time()
    overhead = None
    faults = config.train.faults
    if faults.raise_at_start:
        raise RuntimeError(faults.raise_at_start)

    def evaluate_knn() -> dict[str, float]:
        encoder_eval = _unwrap(model).encoder
        bank = trial_data.pretrain_idx
        feats = probe.extract_features(
            encoder_eval,
            trial_data.images[np.concatenate([bank, trial_data.val_idx])],
            trial_data.mean,
            trial_data.std,
            device=device,
            channels_last=channels_last,
            autocast_dtype=amp_dtype,
        )
        return monitor_metrics(
            "val",
            feats[: len(bank)],
            torch.from_numpy(trial_data.labels[bank]),
            feats[len(bank) :],
            torch.from_numpy(trial_data.labels[trial_data.val_idx]),
            online,
            config,
            trial_data.num_classes,
        )

    for epoch in range(start_epoch + 1, config.train.epochs + 1):
        _unwrap(model).train()
        generator.manual_seed(epoch_seed(config.train.seed, rank, epoch))
        order = trial_data.pretrain_idx[
            _shard(len(trial_data.pretrain_idx), rank, world_size, epoch, config)
        ]
        epoch_start = time.time()
        loss_sum = top1_sum = torch.zeros((), device=device)
        steps_done = 0
        diverged_reason = ""
        for step in range(steps_per_epoch):
            if overhead is None:
                overhead = time.time() - launched_at
            rows = np.sort(order[step * local_batch : (step + 1) * local_batch])
            result = pretraining_step(
                parts,
                to_device_batch(trial_data.images, rows, device, channels_last),
                generator,
                online if config.eval.online_probe else None,
                torch.from_numpy(trial_data.labels[rows]).to(device),
                poison=faults.nan_loss_at_epoch == epoch,
            )
            if not result.finite:
                diverged_reason = (
                    f"non-finite loss ({result.loss.item()}) at epoch {epoch}, step {step + 1}; "
                    f"lr={scheduler.get_last_lr()[0]:.4g}"
                )
                break
            loss_sum = loss_sum + result.loss
            top1_sum = top1_sum + result.contrastive_top1
            steps_done += 1
        local_sums = [loss_sum.item(), top1_sum.item(), float(steps_done)]  # waits for the device
        epoch_seconds = time.time() - epoch_start
        loss_sum, top1_sum, steps_done = _all_reduce_sum(local_sums, device)
        steps_done = max(steps_done, 1.0)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": loss_sum / steps_done,
            "train/contrastive_top1": top1_sum / steps_done,
            "train/lr": scheduler.get_last_lr()[0],
            "train/images_per_sec": steps_done * local_batch / max(epoch_seconds, 1e-9),
            "train/epoch_seconds": epoch_seconds,
            "overhead_seconds": overhead if overhead is not None else float("nan"),
            # The checkpoint epoch this worker group started from: > 0 after a restart.
            "restored_epoch": restored_epoch,
            "status": "running",
            "reason": "",
        }
        if diverged_reason:
            metrics.update(carried, status="diverged", reason=diverged_reason)
            metrics["wall_seconds"] = time.time() - wall_start
            history.append(metrics)
            ray.train.report(metrics)
            return history

        last = epoch == config.train.epochs
        probe_now = last or epoch in config.eval.probe.epochs
        probe_results: dict[str, float] = {}
        if rank == 0 and probe_now:
            # Extracts the features once for the probe and the kNN monitor alike.
            probe_results = final_evaluation(model, online, trial_data, config, device, amp_dtype)
            carried.update({k: v for k, v in probe_results.items() if k in CARRIED_METRICS})
        elif rank == 0 and epoch % config.eval.eval_every == 0:
            carried.update(evaluate_knn())
        metrics.update(carried)
        metrics.update(probe_results)  # only at the epoch it was measured
        if last:
            metrics["status"] = "completed"
        metrics["wall_seconds"] = time.time() - wall_start
        history.append(metrics)

        save = epoch % config.train.checkpoint_every == 0 or last
        if save:
            with tempfile.TemporaryDirectory() as directory:
                checkpoint_out = None
                if rank == 0:
                    torch.save(
                        {
                            "model": _unwrap(_uncompiled(model)).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "online_probe": online.state_dict(),
                            "torch_rng": torch.get_rng_state(),
                            "epoch": epoch,
                            "carried_metrics": dict(carried),
                            "history": history,
                        },
                        os.path.join(directory, CHECKPOINT_FILE),
                    )
                    checkpoint_out = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(
                    metrics, checkpoint=checkpoint_out, checkpoint_dir_name=f"epoch_{epoch:05d}"
                )
        else:
            ray.train.report(metrics)

        if faults.raise_once_at_epoch == epoch and not resumed and rank == 0:
            raise RuntimeError(
                f"injected fault: worker raised after epoch {epoch} "
                "(train.faults.raise_once_at_epoch)"
            )
        if faults.kill_once_at_epoch == epoch and not resumed and rank == 0:
            if save:
                _wait_for_registered_checkpoint(f"epoch_{epoch:05d}")
            # A real crash of this worker process: no exception, no cleanup, no goodbye.
            os.kill(os.getpid(), signal.SIGKILL)
    return history


def _wait_for_registered_checkpoint(dir_name: str, timeout_s: float = 120.0) -> None:
    """Block until Ray Train's controller has registered checkpoint ``dir_name`` (fault
    injection only).

    ``ray.train.report`` returns once the result is queued in this worker; the controller
    takes it on its next poll. A worker killed before that poll loses the report and its
    checkpoint, so ``kill_once_at_epoch`` waits until the controller's checkpoint-manager
    snapshot on storage names the checkpoint as the latest (then kills anyway on timeout).
    """
    import json

    import ray.train

    storage = ray.train.get_context().get_storage()
    snapshot, filesystem = storage.checkpoint_manager_snapshot_path, storage.storage_filesystem
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with filesystem.open_input_stream(snapshot) as stream:
                state = json.loads(stream.read())
        except (OSError, ValueError):
            state = {}
        latest = state.get("latest_checkpoint_result") or {}
        if latest.get("checkpoint_dir_name") == dir_name:
            return
        time.sleep(0.2)


def _uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def _shard(n: int, rank: int, world_size: int, epoch: int, config: TrialConfig) -> np.ndarray:
    from ablate.data import shard_indices

    return np.asarray(shard_indices(n, rank, world_size, epoch, config.train.seed))


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


def final_evaluation(
    model: torch.nn.Module,
    online: Any,
    trial_data: TrialData,
    config: TrialConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Linear probe, kNN and online probe on frozen features of the train, validation and
    test splits (features extracted once; ``val/knn_top1`` stays the ranking metric)."""
    from ablate import probe

    encoder = _unwrap(_uncompiled(model)).encoder
    extract = {
        "device": device,
        "channels_last": config.train.channels_last,
        "autocast_dtype": amp_dtype,
    }
    train_rows = trial_data.pretrain_idx
    train_feats = probe.extract_features(
        encoder, trial_data.images[train_rows], trial_data.mean, trial_data.std, **extract
    )
    val_feats = probe.extract_features(
        encoder, trial_data.images[trial_data.val_idx], trial_data.mean, trial_data.std, **extract
    )
    test_feats = probe.extract_features(
        encoder, trial_data.test_images, trial_data.mean, trial_data.std, **extract
    )
    train_labels = torch.from_numpy(trial_data.labels[train_rows])
    val_labels = torch.from_numpy(trial_data.labels[trial_data.val_idx])
    test_labels = torch.from_numpy(trial_data.test_labels)
    results = probe.linear_probe(
        train_feats,
        train_labels,
        {"val": (val_feats, val_labels), "test": (test_feats, test_labels)},
        trial_data.num_classes,
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
                online,
                config,
                trial_data.num_classes,
            )
        )
    semi = config.eval.semi_supervised
    if semi.enabled and config.data.labelled_fraction:
        from ablate.data import labelled_subset

        subset = train_rows[
            labelled_subset(
                trial_data.labels[train_rows], config.data.labelled_fraction, config.data.seed
            )
        ]
        results.update(
            probe.fine_tune(
                encoder,
                encoder.feat_dim,
                trial_data.images[subset],
                trial_data.labels[subset],
                {
                    "val": (trial_data.images[trial_data.val_idx], val_labels.numpy()),
                    "test": (trial_data.test_images, trial_data.test_labels),
                },
                trial_data.num_classes,
                semi,
                augment_fn=None,
                mean=trial_data.mean,
                std=trial_data.std,
                device=device,
                seed=config.train.seed,
            )
        )
    return results


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


def run_trial(
    config: dict[str, Any], *, storage_path: str, name: str, **kwargs: Any
) -> list[dict[str, Any]]:
    """Run one trial to the end outside Tune; returns every epoch's metrics (rank 0)."""
    result = build_trainer(config, storage_path=storage_path, name=name, **kwargs).fit()
    if result.error is not None:
        raise result.error
    return list(result.return_value or [])
