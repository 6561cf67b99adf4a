"""One pretraining step, exactly as every worker runs it: two augmented views -> encoder and
head -> contrastive loss -> a finiteness check all workers agree on -> backward, optimiser and
schedule step, and one online-probe step (``pretraining_step``).

``build_pretraining`` builds what the step uses (``Pretraining``) from the trial config through
the axes' public builders: ``models.build_encoder``/``build_head``, ``loss.build_loss``,
``augment.build_pipeline``, ``optim.build_optimizer``/``warmup_cosine``. The throughput and
packing benchmarks call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ablate.config import TrialConfig


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


def agreed_finite(loss: torch.Tensor) -> torch.Tensor:
    """0-dim bool on ``loss``'s device: the loss is finite on every worker (an all-reduce of
    the flag with MIN; no host synchronisation on an accelerator)."""
    finite = torch.isfinite(loss)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = finite.to(torch.float32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag > 0
    return finite


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The SimCLR model inside torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


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
