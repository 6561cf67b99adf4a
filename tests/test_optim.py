"""LARS, optimiser construction, lr scaling and the warmup-cosine schedule."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from ablate.config import OptimConfig
from ablate.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def _set_grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_param_groups_split_weights_from_batchnorm_and_bias():
    model = _net()
    adapted, excluded = param_groups(model, 1e-4)
    assert [p.shape for p in adapted["params"]] == [(5, 6), (3, 5)]
    assert [p.shape for p in excluded["params"]] == [(5,), (5,), (5,), (3,)]
    assert (adapted["weight_decay"], adapted["lars_exclude"]) == (1e-4, False)
    assert (excluded["weight_decay"], excluded["lars_exclude"]) == (0.0, True)


def test_lars_batchnorm_and_bias_follow_plain_momentum_sgd():
    lars_model, sgd_model = _net(), _net()
    lars = LARS(param_groups(lars_model, 0.1), lr=0.5, momentum=0.9, eta=1e-3)
    excluded = [p for p in sgd_model.parameters() if p.ndim <= 1]
    sgd = torch.optim.SGD(excluded, lr=0.5, momentum=0.9)
    for step in range(3):
        _set_grads(lars_model, step)
        _set_grads(sgd_model, step)
        lars.step()
        sgd.step()
    lars_excluded = [p for p in lars_model.parameters() if p.ndim <= 1]
    for got, want, start in zip(
        lars_excluded, excluded, [p for p in _net().parameters() if p.ndim <= 1], strict=True
    ):
        assert not torch.equal(got, start)
        torch.testing.assert_close(got, want)


def test_lars_scales_weights_by_the_trust_ratio():
    model = _net()
    lr, momentum, wd, eta = 0.5, 0.9, 0.1, 1e-3
    lars = LARS(param_groups(model, wd), lr=lr, momentum=momentum, eta=eta)
    weight = model[0].weight
    w0 = weight.detach().clone()
    _set_grads(model, 0)
    g0 = weight.grad.clone()
    lars.step()

    trust0 = eta * w0.norm() / (g0.norm() + wd * w0.norm())
    v0 = lr * trust0 * (g0 + wd * w0)
    w1 = w0 - v0
    torch.testing.assert_close(weight.detach(), w1)
    assert trust0 < 0.01  # the adaptation shrinks this step by two orders of magnitude

    _set_grads(model, 1)
    g1 = weight.grad.clone()
    lars.step()
    trust1 = eta * w1.norm() / (g1.norm() + wd * w1.norm())
    v1 = momentum * v0 + lr * trust1 * (g1 + wd * w1)
    torch.testing.assert_close(weight.detach(), w1 - v1)


def test_lars_trust_ratio_is_one_for_zero_weights():
    layer = nn.Linear(3, 2, bias=False)
    nn.init.zeros_(layer.weight)
    layer.weight.grad = torch.ones(2, 3)
    LARS(param_groups(layer, 0.0), lr=0.1, momentum=0.9).step()
    torch.testing.assert_close(layer.weight.detach(), torch.full((2, 3), -0.1))


@pytest.mark.parametrize(
    ("base_lr", "batch", "rule", "expected"),
    [
        (0.3, 4096, "linear", 4.8),
        (0.3, 256, "linear", 0.3),
        (0.3, 512, "linear", 0.6),
        (0.075, 4096, "sqrt", 4.8),
        (0.075, 256, "sqrt", 1.2),
        (0.3, 4096, "none", 0.3),
    ],
)
def test_scaled_lr(base_lr, batch, rule, expected):
    assert scaled_lr(base_lr, batch, rule) == pytest.approx(expected)


def test_scaled_lr_rejects_unknown_rule():
    with pytest.raises(ValueError, match="linear, sqrt, none"):
        scaled_lr(0.3, 256, "quadratic")


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_build_optimizer_excludes_batchnorm_and_bias_from_weight_decay(name):
    model = _net()
    cfg = OptimConfig(name=name, base_lr=0.3, lr_scaling="linear", weight_decay=1e-4)
    optimizer = build_optimizer(model, cfg, batch_size=512)
    expected_type = {"lars": LARS, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]
    assert type(optimizer) is expected_type
    adapted, excluded = optimizer.param_groups
    assert adapted["lr"] == pytest.approx(0.6) and excluded["lr"] == pytest.approx(0.6)
    assert adapted["weight_decay"] == 1e-4 and not adapted["lars_exclude"]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    assert all(p.ndim <= 1 for p in excluded["params"])
    assert len(adapted["params"]) + len(excluded["params"]) == len(list(model.parameters()))

    # with zero gradients only weight decay moves parameters: the excluded ones stay put
    start = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, p0 in zip(model.parameters(), start, strict=True):
        assert torch.equal(p, p0) == (p.ndim <= 1)


def test_build_optimizer_uses_config_hyperparameters():
    model = _net()
    lars = build_optimizer(model, OptimConfig(lars_eta=0.02, momentum=0.8), batch_size=256)
    assert lars.param_groups[0]["eta"] == 0.02 and lars.param_groups[0]["momentum"] == 0.8
    adamw = build_optimizer(model, OptimConfig(name="adamw", betas=(0.8, 0.95)), batch_size=256)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.95)


def _lrs(warmup: int, total: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = warmup_cosine(optimizer, warmup, total)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_warmup_cosine():
    lrs = _lrs(warmup=4, total=12, steps=14)
    assert lrs[0] == pytest.approx(2.0 / 4)  # step 0: first warmup step already moves
    assert lrs[3] == pytest.approx(2.0)  # end of warmup: the full lr
    assert lrs[4] == pytest.approx(2.0)  # cosine starts at the full lr
    assert lrs[8] == pytest.approx(1.0)  # half-way through the cosine
    assert lrs[11] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lrs[12] == pytest.approx(0.0, abs=1e-12) and lrs[13] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in pairwise(lrs[:4]))
    assert all(a >= b for a, b in pairwise(lrs[4:]))


def test_warmup_cosine_edge_cases():
    assert _lrs(warmup=0, total=4, steps=5) == pytest.approx(
        [2.0, 2 * 0.8535534, 1.0, 2 * 0.1464466, 0.0]
    )
    assert _lrs(warmup=10, total=3, steps=4) == pytest.approx([2 / 3, 4 / 3, 2.0, 0.0])
    with pytest.raises(ValueError, match="total_steps >= 1"):
        warmup_cosine(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 0, 0)


# ----------------------------------------------------------------------------- multi-tensor LARS


@torch.no_grad()
def _reference_lars_step(groups: list[dict], velocities: dict) -> None:
    """The per-parameter LARS loop this module had before its multi-tensor form (kept as the
    reference the new step must equal)."""
    for group in groups:
        excluded = group["lars_exclude"]
        weight_decay = 0.0 if excluded else group["weight_decay"]
        for param in group["params"]:
            grad = param.grad
            step_size = group["lr"]
            if not excluded:
                w_norm = torch.linalg.vector_norm(param)
                denominator = torch.linalg.vector_norm(grad) + weight_decay * w_norm
                trust = torch.where(
                    (w_norm > 0) & (denominator > 0),
                    group["eta"] * w_norm / denominator,
                    torch.ones_like(w_norm),
                )
                step_size = group["lr"] * trust
                if weight_decay:
                    grad = grad.add(param, alpha=weight_decay)
            velocity = velocities.setdefault(param, torch.zeros_like(param))
            velocity.mul_(group["momentum"]).add_(grad * step_size)
            param.sub_(velocity)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1, bias=False), nn.Flatten()
    )
    return net.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_multi_tensor_lars_equals_the_per_parameter_loop(weight_decay):
    """Five steps with a changing lr, channels-last conv weights and a zero-weight layer:
    parameters and velocities equal the per-parameter reference to float rounding (the same
    operations in the same order; measured bit-identical on CPU)."""
    new, ref = _conv_net(), _conv_net()
    nn.init.zeros_(new[2].weight)
    nn.init.zeros_(ref[2].weight)
    lars = LARS(param_groups(new, weight_decay), lr=0.5, momentum=0.9, eta=1e-3)
    ref_groups = param_groups(ref, weight_decay)
    for group in ref_groups:
        group.update(lr=0.5, momentum=0.9, eta=1e-3)
    velocities: dict = {}
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    for step in range(5):
        for group, ref_group in zip(lars.param_groups, ref_groups, strict=True):
            group["lr"] = ref_group["lr"] = 0.5 / (step + 1)
        for model in (new, ref):
            model.zero_grad()
            (model(x) - 1).square().sum().backward()
        lars.step()
        _reference_lars_step(ref_groups, velocities)
    for p, q in zip(new.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(lars.state[p]["velocity"], velocities[q], rtol=1e-6, atol=1e-7)
    assert not torch.equal(new[2].weight, torch.zeros_like(new[2].weight))


def test_lars_skips_a_step_on_the_device_when_not_ok():
    """ok=False (a 0-dim device flag): NaN gradients leave parameters and velocities as they
    were; ok=True is the plain step."""
    model, plain = _conv_net(), _conv_net()
    masked_opt = LARS(param_groups(model, 1e-4), lr=0.5)
    plain_opt = LARS(param_groups(plain, 1e-4), lr=0.5)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    for m in (model, plain):
        m(x).square().sum().backward()
    masked_opt.step(ok=torch.tensor(True))
    plain_opt.step()
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    before = [p.detach().clone() for p in model.parameters()]
    velocity = [masked_opt.state[p]["velocity"].clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    masked_opt.step(ok=torch.tensor(False))
    for p, p0, v0 in zip(model.parameters(), before, velocity, strict=True):
        assert torch.equal(p, p0)
        assert torch.equal(masked_opt.state[p]["velocity"], v0)


def test_lars_accepts_gradients_in_another_layout_than_their_parameter():
    model = _conv_net()
    lars = LARS(param_groups(model, 0.0), lr=0.1)
    weight = model[0].weight
    weight.grad = torch.ones(weight.shape)  # contiguous, the weight is channels-last
    w0 = weight.detach().clone()
    lars.step()
    trust = 1e-3 * w0.norm() / torch.ones(weight.shape).norm()
    torch.testing.assert_close(weight.detach(), w0 - 0.1 * trust)
