"""Optimisers and learning-rate schedule of SimCLR (Chen et al., 2020, Sec. 2.2 and App. B.1).

SimCLR trains with LARS (You et al., 2017) at ``lr = 0.3 * B / 256`` (or ``0.075 * sqrt(B)``),
weight decay 1e-6, a linear warmup and a cosine decay without restarts. As in the paper's
reference code, BatchNorm and bias parameters (every parameter with ndim <= 1) get neither
weight decay nor LARS adaptation; this module marks them with a param group whose
``lars_exclude`` is True (and whose ``weight_decay`` is 0 for every optimiser).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ablate.config import OptimConfig

LR_SCALING_RULES = ("linear", "sqrt", "none")


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The learning rate for a global batch of ``batch_size`` (paper, App. B.1).

    ``linear``: ``base_lr * B / 256`` (0.3 * 4096 / 256 = 4.8); ``sqrt``: ``base_lr * sqrt(B)``
    (0.075 * sqrt(4096) = 4.8); ``none``: ``base_lr``.
    """
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"optim.lr_scaling={rule!r} is not one of {', '.join(LR_SCALING_RULES)}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights (decayed, LARS-adapted) and BatchNorm/bias (ndim <= 1: neither)."""
    adapted, excluded = [], []
    for param in model.parameters():
        if param.requires_grad:
            (excluded if param.ndim <= 1 else adapted).append(param)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """LARS: momentum SGD with a layer-wise trust ratio, as You et al. (2017, Algorithm 1) and
    solo-learn (``solo/utils/lars.py``) define it.

    For every parameter w with gradient g in a group whose ``lars_exclude`` is False::

        trust = eta * ||w|| / (||g|| + wd * ||w||)   (1 where ||w|| or the denominator is 0)
        v <- momentum * v + lr * trust * (g + wd * w)
        w <- w - v

    and in a group whose ``lars_exclude`` is True (BatchNorm, biases) trust = 1 and wd = 0,
    which is plain momentum SGD. The learning rate sits inside the velocity as in SimCLR's
    reference ``lars_optimizer.py``; with a constant lr this equals ``torch.optim.SGD``.
    No trust-ratio clipping.

    SimCLR's reference (google-research/simclr ``lars_optimizer.py``) differs in one place: it
    adds ``wd * w`` to g first and takes ``trust = eta * ||w|| / ||g + wd * w||``, which is
    never smaller than the ratio above (triangle inequality); the recipe
    ``simclr_google_cifar`` lists this among its deviations.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; got "
                f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(
        self, closure: Callable[[], float] | None = None, *, ok: torch.Tensor | None = None
    ) -> float | None:
        """One update of every parameter with a gradient, as multi-tensor (``torch._foreach_*``)
        operations: a few kernels per parameter group instead of several per parameter.

        ``ok``: a 0-dim bool tensor on the parameters' device; where it is False the step is
        skipped on the device (parameters and velocities keep their values, whatever the
        gradients hold, NaN included) without the host reading the flag.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            velocities = []
            for param in params:
                state = self.state[param]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(param)
                velocities.append(state["velocity"])
            # Flat views in memory order: one layout for every list (conv weights may be
            # channels-last), so the multi-tensor kernels take their fast path.
            flat_params = [_flat(p) for p in params]
            flat_grads = [_flat(_like(p.grad, p)) for p in params]
            flat_velocities = [_flat(v) for v in velocities]
            if ok is not None:
                # A skipped step must not read NaN gradients: zero them all (one select over
                # the concatenated gradients) so the update below is exactly zero.
                flat_grads = list(
                    torch.cat(flat_grads)
                    .masked_fill_(~ok, 0.0)
                    .split([g.numel() for g in flat_grads])
                )
            scaled = self._scaled_gradients(group, flat_params, flat_grads, ok)
            momentum: float | torch.Tensor = group["momentum"]
            if ok is not None:
                momentum = torch.where(ok, group["momentum"], 1.0)
            torch._foreach_mul_(flat_velocities, momentum)
            torch._foreach_add_(flat_velocities, scaled)
            if ok is None:
                torch._foreach_sub_(flat_params, flat_velocities)
            else:
                torch._foreach_sub_(flat_params, torch._foreach_mul(flat_velocities, ok.float()))
        return loss

    @staticmethod
    def _scaled_gradients(
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        ok: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """``lr * trust * (g + wd * w)`` of every parameter of ``group`` (``lr * g`` in an
        excluded group): the term added to the velocity; zero where ``ok`` is False (the
        gradients are zero then, and the weight-decay term is zeroed with the step size)."""
        if group["lars_exclude"]:
            return torch._foreach_mul(grads, group["lr"])
        weight_decay = group["weight_decay"]
        w_norms = torch.stack(torch._foreach_norm(params))
        denominators = torch.stack(torch._foreach_norm(grads)) + weight_decay * w_norms
        trust = torch.where(
            (w_norms > 0) & (denominators > 0),
            group["eta"] * w_norms / denominators,
            torch.ones_like(w_norms),
        )
        step_sizes = group["lr"] * trust
        if ok is not None:
            step_sizes = step_sizes * ok
        step_sizes = step_sizes.unbind()
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        return torch._foreach_mul(grads, step_sizes)


def _like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``reference``'s memory layout (a copy only when the strides differ)."""
    if tensor.stride() == reference.stride():
        return tensor
    return torch.empty_like(reference).copy_(tensor)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a contiguous or channels-last ``tensor`` in its memory order."""
    if tensor.is_contiguous():
        return tensor.view(-1)
    if tensor.ndim == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).view(-1)
    raise ValueError(
        f"LARS needs contiguous or channels-last parameters and gradients; got shape "
        f"{tuple(tensor.shape)} with strides {tensor.stride()}"
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` for ``model`` at the scaled lr of the global ``batch_size``.

    Every optimiser gets the two groups of :func:`param_groups`: BatchNorm and bias
    parameters have no weight decay (and, for LARS, no adaptation).
    """
    lr = scaled_lr(cfg.base_lr, batch_size, cfg.lr_scaling)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)
    raise ValueError(f"optim.name={cfg.name!r} is not one of lars, sgd, adamw")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> LambdaLR:
    """Linear warmup then cosine decay to 0, stepped once per optimiser step (paper, Sec. 2.2).

    The lr of step s (0-based; the scheduler's ``last_epoch``) is the group's lr times::

        (s + 1) / warmup_steps                                      for s < warmup_steps
        0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))       for warmup <= s <= total

    so the first step already moves, the full lr is reached at s = warmup_steps - 1 and at
    s = warmup_steps, and the factor reaches 0 at s = total_steps (and stays there).
    ``warmup_steps`` is capped at ``total_steps``.
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(
            f"warmup_cosine needs total_steps >= 1 and warmup_steps >= 0, got "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    warmup = min(warmup_steps, total_steps)
    decay = total_steps - warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == 0:
            return 0.0
        progress = min(step - warmup, decay) / decay
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
