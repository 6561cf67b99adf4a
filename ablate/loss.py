"""Contrastive losses of SimCLR's Table 2 (Chen et al., 2020, arXiv:2002.05709), registered by
name in :data:`ablate.losses.LOSSES`; :func:`build_loss` builds the one a config names.

Every loss is called as ``loss(z1, z2) -> scalar`` with ``z1, z2`` of shape (N, D): the
projections of the two augmented views of the same N images. The 2N views are the anchors;
view i's positive is the other view of its image and the remaining 2N - 2 views are its
negatives. Similarities are cosine similarities (the embeddings are l2-normalised).

Memory: the only (2N, 2N) tensors are the similarity logits and what cross-entropy keeps for
backward; the anchor itself is removed by writing -inf into its own column, never by boolean
masks and gathers (which copy the matrix several times) nor by (N, N, D) broadcasts.

Distributed training (torch.distributed initialised, world size W > 1): negatives come from
the global batch. Each worker all-gathers the normalised embeddings of every worker (gradients
flow back to each worker's own slice, see :class:`GatherWithGrad`) and computes loss rows only
for its own 2N anchors against all 2NW candidates, averaged over its own anchors. DDP then
averages the gradients over the W workers, which gives exactly the gradient of the
single-process loss on the whole global batch (derivation in :class:`GatherWithGrad`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ablate.config import LossConfig
from ablate.losses import LOSSES


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0, ``(n, D) -> (n * W, D)``, differentiable for every worker.

    Backward sums the incoming gradients of all workers (all_reduce) and returns the slice of
    this worker's rows. Why that is the right scale: let worker r's loss be
    ``L_r = mean of its own 2N anchor rows`` and the single-process loss on the global batch
    ``L = (1/W) sum_s L_s``. Worker r's z_r feeds L_r directly (as anchors) and every L_s
    through the gathered candidates, so the gradient it receives is ``sum_s dL_s/dz_r =
    W dL/dz_r``; DDP's average over the W workers divides by W again, giving ``dL/dtheta``.
    All workers must pass tensors of the same shape (the global batch divides evenly).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, world = _world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _Views(NamedTuple):
    """The anchors of this worker, all candidates, and where each anchor's self/positive are.

    anchors: (2N, D) unit vectors ``[z1; z2]`` of this worker (fp32, or fp64 if given).
    candidates: (2NW, D) every worker's anchors, worker by worker (``anchors`` when W = 1).
    self_idx, positive_idx: (2N,) columns of each anchor itself and of its positive in the
        (2N, 2NW) similarity matrix.
    positive: (2N,) cosine similarity of each anchor with its positive.
    """

    anchors: torch.Tensor
    candidates: torch.Tensor
    self_idx: torch.Tensor
    positive_idx: torch.Tensor
    positive: torch.Tensor


def _views(z1: torch.Tensor, z2: torch.Tensor) -> _Views:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected z1, z2 of the same shape (N, D), got {z1.shape}, {z2.shape}")
    if not z1.is_floating_point() or z1.dtype in (torch.float16, torch.bfloat16):
        z1, z2 = z1.float(), z2.float()  # similarities / temperature need fp32 under autocast
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    rank, world = _world()
    candidates = GatherWithGrad.apply(anchors) if world > 1 else anchors
    local = torch.arange(2 * n, device=anchors.device)
    offset = rank * 2 * n
    partner = local.roll(n)  # view i of image k <-> the other view of image k
    positive = (anchors * anchors[partner]).sum(dim=1)
    return _Views(anchors, candidates, local + offset, partner + offset, positive)


def _similarities(anchors: torch.Tensor, candidates: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * anchors @ candidates.T`` in fp32 even under autocast: (2N, 2NW)."""
    with torch.autocast(anchors.device.type, enabled=False):
        # scaling the (2N, D) anchors rather than the (2N, 2NW) product saves one matrix
        return (anchors * scale) @ candidates.T


def _exclude(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Write -inf into ``matrix[i, columns[i, :]]`` in place (matmul does not need its output)."""
    return matrix.scatter_(1, columns, float("-inf"))


class NTXentLoss(nn.Module):
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Eq. 1, Table 2).

    For the 2N views with positive pairs (i, j)::

        l_i = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )
        loss = mean over the 2N views of l_i

    computed as cross-entropy over the (2N, 2N) logits whose diagonal is -inf.

    Shapes: z1, z2 (N, D) -> scalar. Distributed: rows (2N, 2NW), mean over the local 2N.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        v = _views(z1, z2)
        logits = _similarities(v.anchors, v.candidates, 1.0 / self.temperature)
        return F.cross_entropy(_exclude(logits, v.self_idx[:, None]), v.positive_idx)


class NTLogisticLoss(nn.Module):
    """NT-Logistic of SimCLR's Table 2: a sigmoid on temperature-scaled cosine similarities.

    Table 2 gives the per-triplet loss ``-log s(u.v+ / t) - log s(-u.v- / t)`` (s: sigmoid).
    Every (anchor, positive, negative) triplet weighs the same, so for each of the 2N anchors::

        l_i = -log s(sim(z_i, z_j) / t) - mean_{k not in {i, j}} log s(-sim(z_i, z_k) / t)
        loss = mean over the 2N views of l_i

    Shapes: z1, z2 (N, D) -> scalar; needs N >= 2 (one negative). Distributed as NT-Xent.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        v = _views(z1, z2)
        logits = _similarities(v.anchors, v.candidates, 1.0 / self.temperature)
        negatives = _exclude(logits, torch.stack([v.self_idx, v.positive_idx], dim=1))
        # -log s(-x) = softplus(x), which is 0 (with gradient 0) at the excluded -inf entries
        negative_term = F.softplus(negatives).sum(dim=1) / (v.candidates.shape[0] - 2)
        positive_term = F.softplus(-v.positive / self.temperature)
        return (positive_term + negative_term).mean()


class MarginTripletLoss(nn.Module):
    """Margin triplet loss of SimCLR's Table 2 on cosine similarities.

    Table 2's per-triplet loss is ``max(u.v- - u.v+ + m, 0)``; averaged over each anchor's
    negatives, with equal weight for every triplet::

        l_i = mean_{k not in {i, j}} max(sim(z_i, z_k) - sim(z_i, z_j) + m, 0)
        loss = mean over the 2N views of l_i

    Shapes: z1, z2 (N, D) -> scalar; needs N >= 2. Distributed as NT-Xent.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"loss.margin must be >= 0, got {margin}")
        self.margin = margin

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        v = _views(z1, z2)
        sims = _similarities(v.anchors, v.candidates, 1.0)
        negatives = _exclude(sims, torch.stack([v.self_idx, v.positive_idx], dim=1))
        hinge = F.relu(negatives - v.positive[:, None] + self.margin)  # 0 at the -inf entries
        return (hinge.sum(dim=1) / (v.candidates.shape[0] - 2)).mean()


def build_loss(cfg: LossConfig) -> nn.Module:
    """The loss of ``cfg.name`` (a name of :data:`ablate.losses.LOSSES` or a plugin's
    ``module.path:factory``), called as ``loss(z1 (N, D), z2 (N, D)) -> scalar``.

    Raises ``UnknownComponentError`` / ``PluginImportError`` (both ``ValueError``) for a name
    the registry does not resolve, ``TypeError`` when a plugin's factory builds no module.
    """
    loss = LOSSES.get(cfg.name).component(cfg)
    if not isinstance(loss, nn.Module):
        raise TypeError(
            f"loss.name={cfg.name}: the factory returned {type(loss).__name__}, not a "
            "torch.nn.Module called as loss(z1 (N, D), z2 (N, D)) -> scalar"
        )
    return loss


@torch.no_grad()
def contrastive_top1(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2N views whose positive is their most similar other view (local batch).

    Shapes: z1, z2 (N, D) -> 0-dim float tensor in [0, 1]. The candidates of view i are the
    2N - 1 other views; the nearest is the maximum cosine similarity.
    """
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    with torch.autocast(anchors.device.type, enabled=False):
        sims = anchors @ anchors.T
    sims.fill_diagonal_(float("-inf"))
    positive_idx = torch.arange(2 * n, device=sims.device).roll(n)
    return (sims.argmax(dim=1) == positive_idx).float().mean()
