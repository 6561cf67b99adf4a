"""The contrastive losses against naive per-anchor loops, locally and over two gloo workers."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ablate.config import LossConfig
from ablate.loss import (
    MarginTripletLoss,
    NTLogisticLoss,
    NTXentLoss,
    build_loss,
    contrastive_top1,
)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The paper's Eq. 1, one anchor and one candidate at a time."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    total = z.new_zeros(())
    for i in range(n2):
        j = (i + n2 // 2) % n2
        numerator = torch.exp(_cos(z[i], z[j]) / t)
        denominator = sum(torch.exp(_cos(z[i], z[k]) / t) for k in range(n2) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / n2


def naive_nt_logistic(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    total = z.new_zeros(())
    for i in range(n2):
        j = (i + n2 // 2) % n2
        triplets = [
            -torch.log(torch.sigmoid(_cos(z[i], z[j]) / t))
            - torch.log(torch.sigmoid(-_cos(z[i], z[k]) / t))
            for k in range(n2)
            if k not in (i, j)
        ]
        total = total + sum(triplets) / len(triplets)
    return total / n2


def naive_margin_triplet(z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    total = z.new_zeros(())
    for i in range(n2):
        j = (i + n2 // 2) % n2
        triplets = [
            torch.clamp(_cos(z[i], z[k]) - _cos(z[i], z[j]) + margin, min=0)
            for k in range(n2)
            if k not in (i, j)
        ]
        total = total + sum(triplets) / len(triplets)
    return total / n2


# (N, D, temperature, margin)
CASES = [(2, 3, 0.5, 0.5), (5, 8, 0.1, 1.0), (8, 4, 1.0, 0.3), (3, 128, 0.07, 0.8)]
LOSSES = [
    ("nt_xent", lambda t, m: NTXentLoss(temperature=t), lambda a, b, t, m: naive_nt_xent(a, b, t)),
    (
        "nt_logistic",
        lambda t, m: NTLogisticLoss(temperature=t),
        lambda a, b, t, m: naive_nt_logistic(a, b, t),
    ),
    (
        "margin_triplet",
        lambda t, m: MarginTripletLoss(margin=m),
        lambda a, b, t, m: naive_margin_triplet(a, b, m),
    ),
]


@pytest.mark.parametrize(("name", "make", "naive"), LOSSES, ids=[c[0] for c in LOSSES])
@pytest.mark.parametrize(("n", "dim", "temperature", "margin"), CASES)
def test_loss_and_gradients_match_naive_loop(name, make, naive, n, dim, temperature, margin):
    gen = torch.Generator().manual_seed(n * 100 + dim)
    z1 = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = z1.detach() + 0.5 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    z2.requires_grad_(True)

    ours = make(temperature, margin)(z1, z2)
    expected = naive(z1, z2, temperature, margin)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert expected.item() > 0

    grads = torch.autograd.grad(ours, (z1, z2))
    expected_grads = torch.autograd.grad(expected, (z1, z2))
    for got, want in zip(grads, expected_grads, strict=True):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_nt_xent_known_values():
    # Orthogonal, perfectly aligned views: the positive has sim 1, the 2N-2 negatives sim 0,
    # and the anchor itself (sim 1) must not count.
    n, t = 4, 0.5
    z = torch.eye(n)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert NTXentLoss(t)(z, z).item() == pytest.approx(expected, rel=1e-6)
    assert NTXentLoss(t)(3 * z, 0.1 * z).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_bf16_inputs_are_computed_in_fp32():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)
    loss = NTXentLoss(0.1)(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    reference = NTXentLoss(0.1)(z1.bfloat16().float(), z2.bfloat16().float())
    torch.testing.assert_close(loss, reference)


def test_build_loss_picks_each_loss_with_its_parameters():
    assert isinstance(build_loss(LossConfig()), NTXentLoss)
    xent = build_loss(LossConfig(name="nt_xent", temperature=0.2))
    logistic = build_loss(LossConfig(name="nt_logistic", temperature=0.3))
    triplet = build_loss(LossConfig(name="margin_triplet", margin=0.7))
    assert (type(xent), xent.temperature) == (NTXentLoss, 0.2)
    assert (type(logistic), logistic.temperature) == (NTLogisticLoss, 0.3)
    assert (type(triplet), triplet.margin) == (MarginTripletLoss, 0.7)


def test_loss_rejects_mismatched_views():
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.randn(4, 8), torch.randn(5, 8))


def test_contrastive_top1():
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(32, 16, generator=gen)
    # the second view is a tiny perturbation: every view's nearest is its positive
    assert contrastive_top1(z1, z1 + 1e-3 * torch.randn(32, 16, generator=gen)).item() == 1.0
    # the second view of image k is the first view of image k+1: no positive is nearest
    # (the nearest of z1[k] is z2[k+1], an exact copy of it) -> 0
    assert contrastive_top1(z1, z1.roll(1, dims=0)).item() == 0.0
    # half the images aligned, half swapped with a neighbour pair: exactly half correct
    z2 = z1.clone()
    z2[:16] = z1[:16].roll(1, dims=0)
    assert contrastive_top1(z1, z2).item() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, inputs: dict, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n_local = inputs["z1"].shape[0] // world
        rows = slice(rank * n_local, (rank + 1) * n_local)
        results = {}
        for name, param in inputs["losses"]:
            z1 = inputs["z1"][rows].clone().requires_grad_(True)
            z2 = inputs["z2"][rows].clone().requires_grad_(True)
            loss = build_loss(LossConfig(name=name, **param))(z1, z2)
            g1, g2 = torch.autograd.grad(loss, (z1, z2))
            results[name] = (loss.detach(), g1, g2)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_losses_equal_single_process_on_whole_batch(tmp_path):
    world, n = 2, 6
    gen = torch.Generator().manual_seed(7)
    z1 = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
    losses = [
        ("nt_xent", {"temperature": 0.2}),
        ("nt_logistic", {"temperature": 0.5}),
        ("margin_triplet", {"margin": 0.5}),
    ]
    inputs = {"z1": z1, "z2": z2, "losses": losses}
    mp.spawn(_distributed_worker, args=(world, _free_port(), inputs, str(tmp_path)), nprocs=world)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    for name, param in losses:
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        single = build_loss(LossConfig(name=name, **param))(a, b)
        single_g1, single_g2 = torch.autograd.grad(single, (a, b))
        # DDP averages the workers' gradients: their mean loss and their gradients / W are
        # the loss and the gradient slices of one process holding the whole batch.
        mean_loss = sum(r[name][0] for r in per_rank) / world
        torch.testing.assert_close(mean_loss, single.detach(), rtol=1e-10, atol=1e-12)
        for rank, result in enumerate(per_rank):
            rows = slice(rank * n // world, (rank + 1) * n // world)
            torch.testing.assert_close(
                result[name][1] / world, single_g1[rows], rtol=1e-8, atol=1e-12
            )
            torch.testing.assert_close(
                result[name][2] / world, single_g2[rows], rtol=1e-8, atol=1e-12
            )
        # the halves alone (no global negatives) would give a different loss
        local_only = build_loss(LossConfig(name=name, **param))(z1[: n // 2], z2[: n // 2])
        assert not torch.allclose(per_rank[0][name][0], local_only)


def test_build_loss_takes_a_plugin_factory_and_holds_it_to_a_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "user_losses.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Align(nn.Module):\n"
        "    def __init__(self, t):\n        super().__init__()\n        self.t = t\n"
        "    def forward(self, z1, z2):\n"
        "        return -(nn.functional.cosine_similarity(z1, z2) / self.t).mean()\n\n"
        "def align(cfg):\n    return Align(cfg.temperature)\n\n"
        "def not_a_module(cfg):\n    return lambda z1, z2: (z1 - z2).sum()\n"
    )
    loss = build_loss(LossConfig(name="user_losses:align", temperature=0.5))
    z = torch.randn(4, 8)
    assert loss(z, z).item() == pytest.approx(-2.0)
    with pytest.raises(TypeError, match=r"not a torch\.nn\.Module"):
        build_loss(LossConfig(name="user_losses:not_a_module"))
