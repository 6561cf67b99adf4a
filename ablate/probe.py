"""Evaluation of frozen (or fine-tuned) SimCLR encoders.

Four protocols, all on the representation ``h`` (the encoder output, before the projection head,
as in Chen et al., 2020, Sec. 2.1):

- ``knn_top1``: the weighted k-nearest-neighbour monitor of Wu et al. (2018), used by the
  SimCLR/MoCo CIFAR monitors to rank runs cheaply during pretraining;
- ``linear_probe``: multinomial logistic regression on cached features (the paper's linear
  evaluation protocol, Sec. 4 / Appendix B.6), solved full-batch with L-BFGS by default;
- ``OnlineProbe``: a linear classifier trained on the detached ``h`` alongside pretraining;
- ``fine_tune``: the semi-supervised protocol (Sec. 6 / Appendix B.5): fine-tune a copy of the
  encoder plus a linear layer on a labelled subset.

Every function takes its randomness from an explicit seed; nothing touches global RNG state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ablate.augment import normalize, to_float
from ablate.config import ProbeConfig, SemiSupervisedConfig

#: ``(images float BCHW in [0, 1], generator) -> float BCHW in [0, 1]``: fine-tuning augmentation.
AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
#: ``{name: (features or images, labels)}``: the sets a probe reports on, e.g. ``val``, ``test``.
EvalSets = dict[str, tuple[Any, Any]]


# ----------------------------------------------------------------------------- helpers


def _as_labels(labels: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if tensor.ndim != 1:
        raise ValueError(f"{name}: expected labels of shape (N,), got {tuple(tensor.shape)}")
    return tensor.long()


def _check_labels(labels: torch.Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _check_images(images: np.ndarray, name: str) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"{name}: expected uint8 numpy images (N, H, W, C), got {dtype} {shape}")


def _module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits.

    logits: (N, C); labels: (N,) int. ``k`` is clipped to C.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy: no rows to score")
    k = max(1, min(k, logits.shape[1]))
    top = logits.topk(k, dim=1).indices
    hits = (top == labels.to(top.device).view(-1, 1)).any(dim=1)
    return hits.float().mean().item()


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encode ``images`` with ``encoder`` in eval mode; returns (N, F) float32 on the CPU.

    images: uint8 (N, H, W, C). Each batch becomes float [0, 1] BCHW, normalised with
    ``mean``/``std`` on ``device`` (default: the encoder's device). The encoder's train/eval
    mode is restored afterwards.
    """
    _check_images(images, "extract_features(images)")
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _module_device(encoder)
    was_training = encoder.training
    encoder.eval()
    features: list[torch.Tensor] = []
    try:
        for start in range(0, len(images), batch_size):
            # np.array copies: the rows may be a read-only memmap or object-store view.
            batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
            x = normalize(to_float(batch.permute(0, 3, 1, 2)), mean, std)
            # The NHWC -> NCHW permute leaves channels-last strides; honour the caller's choice.
            x = x.contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format
            )
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                h = encoder(x)
            features.append(h.float().flatten(1).cpu())
    finally:
        encoder.train(was_training)
    if not features:
        return torch.empty(0, int(getattr(encoder, "feat_dim", 0)))
    return torch.cat(features)


# ----------------------------------------------------------------------------- kNN monitor


@torch.no_grad()
def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int,
    max_elements: int = 1 << 24,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier of Wu et al. (2018).

    Features are L2-normalised; each query takes its ``k`` most cosine-similar train features
    (``k`` clipped to the train size) and every neighbour votes for its label with weight
    ``exp(sim / temperature)``. The class with the largest summed weight wins; exact ties go to
    the smallest class index. Queries are processed in chunks so that the similarity block holds
    at most ``max_elements`` entries.

    train_feats: (N, F), train_labels: (N,), query_feats: (M, F), query_labels: (M,).
    Computed on ``train_feats``' device.
    """
    if train_feats.ndim != 2 or query_feats.ndim != 2:
        raise ValueError(
            f"knn_top1: expected 2-d features, got {tuple(train_feats.shape)} and "
            f"{tuple(query_feats.shape)}"
        )
    if train_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(
            f"knn_top1: train features have {train_feats.shape[1]} dims, queries "
            f"{query_feats.shape[1]}"
        )
    if len(train_feats) == 0 or len(query_feats) == 0:
        raise ValueError("knn_top1: needs at least one train and one query feature")
    if temperature <= 0:
        raise ValueError(f"knn_top1: temperature must be > 0, got {temperature}")
    device = train_feats.device
    train_labels = _as_labels(train_labels, "knn_top1(train_labels)").to(device)
    query_labels = _as_labels(query_labels, "knn_top1(query_labels)").to(device)
    _check_labels(train_labels, num_classes, "knn_top1(train_labels)")
    train = F.normalize(train_feats.float(), dim=1)
    k = max(1, min(k, len(train)))
    chunk = max(1, max_elements // len(train))
    correct = 0
    for start in range(0, len(query_feats), chunk):
        query = F.normalize(query_feats[start : start + chunk].to(device).float(), dim=1)
        top_sim, top_idx = (query @ train.T).topk(k, dim=1)
        # Subtracting the row maximum leaves the vote unchanged and keeps exp() finite.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        correct += (votes.argmax(dim=1) == query_labels[start : start + chunk]).sum().item()
    return correct / len(query_feats)


# ----------------------------------------------------------------------------- linear probe


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    eval_sets: EvalSets,
    num_classes: int,
    cfg: ProbeConfig | None = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Multinomial logistic regression on frozen features; top-1/top-5 on each eval set.

    The objective is ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not decayed),
    on features standardised with the train mean/std when ``cfg.standardize``. Solvers:

    - ``lbfgs`` (default): full-batch L-BFGS with strong-Wolfe line search, ``cfg.max_iter``
      iterations from W = 0 (the objective is convex, so the result is deterministic);
    - ``sgd``: minibatch SGD (momentum 0.9, cosine lr from ``cfg.lr``) over the in-memory
      features, ``cfg.max_iter`` epochs of ``cfg.batch_size``, shuffled by ``seed``.

    The paper does not state its probe's regulariser or iteration count, so they are explicit
    in ``ProbeConfig``: defaults ``lbfgs``, ``max_iter=100``, ``weight_decay=1e-3``,
    ``standardize=True``. On 10k CIFAR-10 features these land within noise of the fully
    converged optimum and of the 500-epoch Adam probe of public SimCLR code, 20x+ faster
    (``benchmarks/probe_speed.py``).

    train_feats: (N, F); train_labels: (N,); eval_sets: ``{name: (feats (M, F), labels (M,))}``.
    Runs on ``train_feats``' device. Returns ``{f"{name}/probe_top1", f"{name}/probe_top5"}``,
    top-5 meaning top-min(5, num_classes).
    """
    cfg = cfg or ProbeConfig()
    if train_feats.ndim != 2 or len(train_feats) == 0:
        raise ValueError(
            f"linear_probe: expected train features (N>0, F), got {tuple(train_feats.shape)}"
        )
    device = train_feats.device
    labels = _as_labels(train_labels, "linear_probe(train_labels)").to(device)
    if len(labels) != len(train_feats):
        raise ValueError(
            f"linear_probe: {len(train_feats)} train features but {len(labels)} labels"
        )
    _check_labels(labels, num_classes, "linear_probe(train_labels)")
    x = train_feats.float()
    if cfg.standardize:
        shift = x.mean(dim=0)
        scale = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    else:
        shift = torch.zeros(x.shape[1], device=device)
        scale = torch.ones(x.shape[1], device=device)
    x = (x - shift) / scale

    weight = torch.zeros(x.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    with torch.autocast(device.type, enabled=False), torch.enable_grad():
        if cfg.solver == "lbfgs":
            _fit_lbfgs(x, labels, weight, bias, cfg)
        else:
            _fit_sgd(x, labels, weight, bias, cfg, seed)

    metrics: dict[str, float] = {}
    top5 = min(5, num_classes)
    with torch.no_grad():
        for name, (feats, eval_labels) in eval_sets.items():
            eval_labels = _as_labels(eval_labels, f"linear_probe(eval_sets[{name!r}])")
            logits = ((feats.to(device).float() - shift) / scale) @ weight + bias
            metrics[f"{name}/probe_top1"] = topk_accuracy(logits, eval_labels, 1)
            metrics[f"{name}/probe_top5"] = topk_accuracy(logits, eval_labels, top5)
    return metrics


def _fit_lbfgs(
    x: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    cfg: ProbeConfig,
) -> None:
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=cfg.max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, labels)
        loss = loss + 0.5 * cfg.weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def _fit_sgd(
    x: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    cfg: ProbeConfig,
    seed: int,
) -> None:
    optimizer = torch.optim.SGD(
        [
            {"params": [weight], "weight_decay": cfg.weight_decay},
            {"params": [bias], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        momentum=0.9,
    )
    batch_size = min(cfg.batch_size, len(x))
    steps_per_epoch = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(cfg.max_iter * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(cfg.max_iter):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(x[idx] @ weight + bias, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def _cosine(total_steps: int) -> Callable[[int], float]:
    """lr multiplier: cosine decay from 1 to 0 over ``total_steps``."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


# ----------------------------------------------------------------------------- online probe


class OnlineProbe(nn.Module):
    """A linear classifier on the detached representation, trained alongside pretraining.

    ``BatchNorm1d(affine=False)`` then ``Linear``: the normalisation makes a fixed lr work
    whatever the scale of h (which drifts during pretraining); at eval time it is an affine map
    with running statistics, so the classifier stays linear in h. It has its own SGD optimizer
    (momentum 0.9, multi-tensor updates), so gradients never reach the encoder. The optimizer
    state travels with ``state_dict()`` (as the module's extra state), so checkpoints resume
    it exactly.
    """

    def __init__(
        self, feat_dim: int, num_classes: int, lr: float = 0.1, momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(feat_dim, affine=False)
        self.linear = nn.Linear(feat_dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=momentum, foreach=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, feat_dim) -> logits (B, num_classes)."""
        return self.linear(self.norm(h.flatten(1).float()))

    def step(
        self, h: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One SGD step on the batch (h is detached here); returns the cross-entropy (0-dim,
        detached, left on the device so the training loop does not wait for it).

        ``ok``: a 0-dim bool on the device; where False the step is undone on the device
        (weights, momentum and BatchNorm statistics keep their values; no host sync).
        """
        self.train()
        before = None
        if ok is not None:
            before = list(torch._foreach_clone(self._state_tensors()))
        with torch.autocast(h.device.type, enabled=False), torch.enable_grad():
            loss = F.cross_entropy(self(h.detach()), labels.to(h.device).long())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if ok is not None and before is not None:
            with torch.no_grad():
                after = self._state_tensors()
                # A momentum buffer made by this (first) step had no value before: zero.
                old = before + [torch.zeros_like(t) for t in after[len(before) :]]
                kept = [torch.where(ok, new, prev) for new, prev in zip(after, old, strict=True)]
                torch._foreach_copy_(after, kept)
        return loss.detach()

    def _state_tensors(self) -> list[torch.Tensor]:
        """What a step changes: parameters, BatchNorm statistics, then momentum buffers."""
        momentum = [
            buf
            for p in self.parameters()
            if (buf := self.optimizer.state.get(p, {}).get("momentum_buffer")) is not None
        ]
        return [*(p.data for p in self.parameters()), *self.buffers(), *momentum]

    @torch.no_grad()
    def accuracy(self, h: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy on (h, labels) in eval mode; the previous mode is restored.

        ``h`` may live on any device (e.g. features cached on the CPU): it is moved to the
        probe's.
        """
        h = h.detach().to(self.linear.weight.device)
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(h.device.type, enabled=False):
                logits = self(h)
        finally:
            self.train(was_training)
        return topk_accuracy(logits, labels.to(logits.device).long(), 1)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Optimizer.load_state_dict keeps the given tensors when no cast is needed; copy them so
        # that a probe restored from a live state_dict does not share momentum buffers.
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


# ----------------------------------------------------------------------------- fine-tuning


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 1/2; x: (B, C, H, W)."""
    flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def fine_tune(
    encoder: nn.Module,
    feat_dim: int,
    images: np.ndarray,
    labels: Any,
    eval_sets: EvalSets,
    num_classes: int,
    cfg: SemiSupervisedConfig | None = None,
    *,
    augment_fn: AugmentFn | None = None,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Semi-supervised evaluation: fine-tune a copy of ``encoder`` + a linear layer.

    Follows the paper's Appendix B.5: Nesterov SGD (momentum 0.9) at lr = ``cfg.lr`` x
    ``cfg.batch_size`` / 256 with cosine decay, no warmup, no weight decay, for ``cfg.epochs``
    epochs over the labelled ``images`` (uint8 (N, H, W, C)) and ``labels`` (N,).
    ``augment_fn(x, generator)`` augments float [0, 1] BCHW batches before normalisation
    (default: random horizontal flip). ``encoder`` itself is never modified.

    eval_sets: ``{name: (images uint8 (M, H, W, C), labels (M,))}``. Returns
    ``{f"{name}/semi_top1", f"{name}/semi_top5"}`` (top-5 = top-min(5, num_classes)).
    """
    cfg = cfg or SemiSupervisedConfig()
    _check_images(images, "fine_tune(images)")
    labels_t = _as_labels(labels, "fine_tune(labels)")
    if len(labels_t) != len(images):
        raise ValueError(f"fine_tune: {len(images)} images but {len(labels_t)} labels")
    if len(images) < 2:
        raise ValueError(f"fine_tune: needs at least 2 labelled images, got {len(images)}")
    _check_labels(labels_t, num_classes, "fine_tune(labels)")
    device = torch.device(device) if device is not None else _module_device(encoder)
    labels_t = labels_t.to(device)
    augment = augment_fn or _random_flip

    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    head = nn.Linear(feat_dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    model = nn.Sequential(copy.deepcopy(encoder), head).to(device).train()

    batch_size = min(cfg.batch_size, len(images))
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr * cfg.batch_size / 256, momentum=0.9, nesterov=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(cfg.epochs * steps_per_epoch))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single image
                continue
            batch = torch.from_numpy(images[idx.numpy()]).to(device).permute(0, 3, 1, 2)
            x = normalize(augment(to_float(batch), augment_generator), mean, std)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels_t[idx.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    metrics: dict[str, float] = {}
    top5 = min(5, num_classes)
    for name, (eval_images, eval_labels) in eval_sets.items():
        _check_images(eval_images, f"fine_tune(eval_sets[{name!r}])")
        logits = extract_features(
            model, eval_images, mean, std, device=device, autocast_dtype=autocast_dtype
        )
        eval_labels_t = _as_labels(eval_labels, f"fine_tune(eval_sets[{name!r}])")
        metrics[f"{name}/semi_top1"] = topk_accuracy(logits, eval_labels_t, 1)
        metrics[f"{name}/semi_top5"] = topk_accuracy(logits, eval_labels_t, top5)
    return metrics
