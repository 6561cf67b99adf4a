"""Behaviour of the evaluation protocols in ablate.probe, on synthetic data only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ablate.config import ProbeConfig, SemiSupervisedConfig
from ablate.probe import (
    OnlineProbe,
    extract_features,
    fine_tune,
    knn_top1,
    linear_probe,
    topk_accuracy,
)

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def gaussian_clusters(
    n: int, num_classes: int, dim: int, separation: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n points, labels cycling over classes, each class a unit gaussian around its centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    centres = separation * centres / centres.norm(dim=1, keepdim=True)
    labels = torch.arange(n) % num_classes
    return centres[labels] + torch.randn(n, dim, generator=generator), labels


def chance_band(num_classes: int, n: int) -> tuple[float, float]:
    """Chance accuracy +- 4 binomial standard errors at n trials (two-sided p ~ 6e-5)."""
    p = 1.0 / num_classes
    margin = 4.0 * math.sqrt(p * (1.0 - p) / n)
    return p - margin, p + margin


# ----------------------------------------------------------------------------- topk


def test_topk_accuracy_counts_hits_and_clips_k() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 5) == 1.0  # k clipped to 3 classes


# ----------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("num_classes", [4, 10])
def test_linear_probe_separates_gaussian_clusters(num_classes: int) -> None:
    x_train, y_train = gaussian_clusters(50 * num_classes, num_classes, 32, 12.0, seed=0)
    x_val, y_val = gaussian_clusters(300, num_classes, 32, 12.0, seed=1)
    x_test, y_test = gaussian_clusters(300, num_classes, 32, 12.0, seed=2)
    metrics = linear_probe(
        x_train, y_train, {"val": (x_val, y_val), "test": (x_test, y_test)}, num_classes
    )
    assert set(metrics) == {
        "val/probe_top1",
        "val/probe_top5",
        "test/probe_top1",
        "test/probe_top5",
    }
    assert metrics["val/probe_top1"] >= 0.98
    assert metrics["test/probe_top1"] >= 0.98
    assert metrics["test/probe_top5"] >= metrics["test/probe_top1"]


def test_linear_probe_standardises_badly_scaled_features() -> None:
    x_train, y_train = gaussian_clusters(400, 4, 16, 12.0, seed=0)
    x_test, y_test = gaussian_clusters(400, 4, 16, 12.0, seed=1)
    # A huge offset and scale make the raw problem ill-conditioned for a short L-BFGS run.
    scale = torch.logspace(-2, 3, 16)
    offset = 1e4
    metrics = linear_probe(
        x_train * scale + offset,
        y_train,
        {"test": (x_test * scale + offset, y_test)},
        4,
        ProbeConfig(max_iter=50),
    )
    assert metrics["test/probe_top1"] >= 0.98


def test_linear_probe_on_random_labels_is_at_chance() -> None:
    generator = torch.Generator().manual_seed(0)
    num_classes, n_test = 4, 2000
    x_train = torch.randn(1000, 32, generator=generator)
    y_train = torch.randint(0, num_classes, (1000,), generator=generator)
    x_test = torch.randn(n_test, 32, generator=generator)
    y_test = torch.randint(0, num_classes, (n_test,), generator=generator)
    metrics = linear_probe(x_train, y_train, {"test": (x_test, y_test)}, num_classes)
    low, high = chance_band(num_classes, n_test)
    assert low <= metrics["test/probe_top1"] <= high


def test_sgd_solver_separates_and_is_deterministic() -> None:
    x_train, y_train = gaussian_clusters(400, 5, 32, 12.0, seed=0)
    x_test, y_test = gaussian_clusters(300, 5, 32, 12.0, seed=1)
    cfg = ProbeConfig(solver="sgd", max_iter=10, lr=0.1, batch_size=64)
    first = linear_probe(x_train, y_train, {"test": (x_test, y_test)}, 5, cfg, seed=3)
    second = linear_probe(x_train, y_train, {"test": (x_test, y_test)}, 5, cfg, seed=3)
    assert first["test/probe_top1"] >= 0.98
    assert first == second
    # top-5 means top-min(5, C): with 5 classes every label is in the top 5.
    assert first["test/probe_top5"] == 1.0


def test_linear_probe_rejects_out_of_range_labels() -> None:
    x, y = gaussian_clusters(40, 4, 8, 5.0, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        linear_probe(x, y, {}, num_classes=3)


# ----------------------------------------------------------------------------- kNN


def test_knn_is_perfect_on_separated_clusters() -> None:
    x_train, y_train = gaussian_clusters(500, 10, 32, 20.0, seed=0)
    x_test, y_test = gaussian_clusters(300, 10, 32, 20.0, seed=1)
    assert knn_top1(x_train, y_train, x_test, y_test, k=20, num_classes=10) == 1.0


def test_knn_on_random_labels_is_at_chance() -> None:
    generator = torch.Generator().manual_seed(0)
    num_classes, n_test = 5, 2000
    x_train = torch.randn(1000, 16, generator=generator)
    y_train = torch.randint(0, num_classes, (1000,), generator=generator)
    x_test = torch.randn(n_test, 16, generator=generator)
    y_test = torch.randint(0, num_classes, (n_test,), generator=generator)
    low, high = chance_band(num_classes, n_test)
    assert low <= knn_top1(x_train, y_train, x_test, y_test, k=50, num_classes=5) <= high


def test_knn_votes_are_weighted_by_similarity() -> None:
    # One very close neighbour of class 0 against two farther ones of class 1.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    train_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # Sharp temperature: exp(1/0.1) beats 2 * exp(0.6/0.1); flat: two votes beat one.
    assert knn_top1(train, train_labels, query, torch.tensor([0]), k=3, num_classes=2) == 1.0
    flat = knn_top1(
        train, train_labels, query, torch.tensor([1]), k=3, temperature=100.0, num_classes=2
    )
    assert flat == 1.0


def test_knn_exact_tie_goes_to_smallest_class() -> None:
    train = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    query = torch.tensor([[1.0, 0.0]])
    for labels in (torch.tensor([2, 1]), torch.tensor([1, 2])):
        assert knn_top1(train, labels, query, torch.tensor([1]), k=2, num_classes=3) == 1.0


def test_knn_with_k_above_train_size_uses_every_neighbour() -> None:
    x_train, y_train = gaussian_clusters(30, 3, 8, 10.0, seed=0)
    x_test, y_test = gaussian_clusters(60, 3, 8, 10.0, seed=1)
    all_neighbours = knn_top1(x_train, y_train, x_test, y_test, k=30, num_classes=3)
    assert knn_top1(x_train, y_train, x_test, y_test, k=1000, num_classes=3) == all_neighbours
    assert all_neighbours >= 0.95


def test_knn_chunking_matches_one_block() -> None:
    generator = torch.Generator().manual_seed(0)
    x_train = torch.randn(200, 8, generator=generator)
    y_train = torch.randint(0, 4, (200,), generator=generator)
    x_test = torch.randn(101, 8, generator=generator)
    y_test = torch.randint(0, 4, (101,), generator=generator)
    one_block = knn_top1(x_train, y_train, x_test, y_test, k=7, num_classes=4)
    chunked = knn_top1(x_train, y_train, x_test, y_test, k=7, num_classes=4, max_elements=600)
    # A per-query reference: the weighted vote written out plainly.
    train = torch.nn.functional.normalize(x_train, dim=1)
    correct = 0
    for q, label in zip(torch.nn.functional.normalize(x_test, dim=1), y_test, strict=True):
        sim, idx = (train @ q).topk(7)
        votes = torch.zeros(4)
        for s, i in zip(sim, idx, strict=True):
            votes[y_train[i]] += torch.exp(s / 0.1)
        correct += int(votes.argmax() == label)
    assert chunked == one_block == pytest.approx(correct / 101)


# ----------------------------------------------------------------------------- features


def tiny_encoder(seed: int = 0, feat_dim: int = 32) -> nn.Module:
    """Conv -> BN -> ReLU -> 2x2 pool -> flatten: keeps where in the image things are."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(3, feat_dim // 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(feat_dim // 4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )
    encoder.feat_dim = feat_dim
    return encoder


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_extract_features_normalises_pixels() -> None:
    images = random_images(5)
    feats = extract_features(nn.Flatten(), images, MEAN, STD, batch_size=2, device="cpu")
    expected = (images.astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)
    expected = torch.from_numpy(expected.transpose(0, 3, 1, 2).reshape(5, -1)).float()
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


def test_extract_features_uses_eval_mode_and_restores_it() -> None:
    encoder = tiny_encoder().train()
    running_mean = encoder[1].running_mean.clone()
    images = random_images(23)
    feats = extract_features(encoder, images, MEAN, STD, batch_size=4)
    assert feats.shape == (23, 32)
    assert encoder.training and all(m.training for m in encoder.modules())
    # Eval-mode BatchNorm: running statistics untouched, features independent of batching.
    torch.testing.assert_close(encoder[1].running_mean, running_mean)
    torch.testing.assert_close(feats, extract_features(encoder, images, MEAN, STD, batch_size=512))
    assert torch.equal(feats, extract_features(encoder, images, MEAN, STD, batch_size=4))
    encoder.eval()
    extract_features(encoder, images, MEAN, STD)
    assert not encoder.training


def test_extract_features_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8 numpy images"):
        extract_features(nn.Flatten(), np.zeros((2, 8, 8, 3), np.float32), MEAN, STD)


# ----------------------------------------------------------------------------- online probe


def test_online_probe_learns_separable_features_without_touching_the_encoder() -> None:
    num_classes = 4
    encoder = nn.Linear(16, 16)
    probe = OnlineProbe(16, num_classes, lr=0.1)
    x_test, y_test = gaussian_clusters(400, num_classes, 16, 8.0, seed=99)
    h_test = encoder(x_test)
    low, high = chance_band(num_classes, 400)
    assert low <= probe.accuracy(h_test, y_test) <= high
    for step in range(100):
        x, y = gaussian_clusters(64, num_classes, 16, 8.0, seed=step)
        loss = probe.step(encoder(x), y)  # h carries a graph to the encoder
        assert math.isfinite(loss)
    assert encoder.weight.grad is None
    assert probe.accuracy(h_test, y_test) > 0.9
    assert probe.training


def test_online_probe_checkpoint_resumes_optimizer_state() -> None:
    probe = OnlineProbe(8, 3, lr=0.05)
    for step in range(5):
        x, y = gaussian_clusters(32, 3, 8, 4.0, seed=step)
        probe.step(x, y)
    restored = OnlineProbe(8, 3, lr=0.05)
    restored.load_state_dict(probe.state_dict())
    # Same next step on both: equal only if the momentum buffers came back too.
    x, y = gaussian_clusters(32, 3, 8, 4.0, seed=10)
    probe.step(x, y)
    restored.step(x, y)
    for name, value in probe.state_dict().items():
        if name != "_extra_state":
            torch.testing.assert_close(restored.state_dict()[name], value)


# ----------------------------------------------------------------------------- fine-tuning


def quadrant_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """4 classes: a bright top or bottom half, in the red or the green channel, over noise.

    Invariant to horizontal flips, so the default fine-tuning augmentation keeps the label.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 100, (n, size, size, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        rows = slice(0, size // 2) if label % 2 == 0 else slice(size // 2, size)
        images[i, rows, :, label // 2] = 230
    return images, labels.astype(np.int64)


def test_fine_tune_beats_chance_and_leaves_the_encoder_alone() -> None:
    encoder = tiny_encoder(seed=0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train_images, train_labels = quadrant_images(64, seed=0)
    test_images, test_labels = quadrant_images(200, seed=1)
    calls: list[tuple[int, ...]] = []

    def flip_and_count(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append(tuple(x.shape))
        assert x.min() >= 0.0 and x.max() <= 1.0  # augmentation sees [0, 1] pixels
        flip = torch.rand(len(x), generator=generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)

    cfg = SemiSupervisedConfig(enabled=True, epochs=15, lr=0.1, batch_size=16)
    metrics = fine_tune(
        encoder,
        32,
        train_images,
        train_labels,
        {"test": (test_images, test_labels)},
        4,
        cfg,
        augment_fn=flip_and_count,
        mean=MEAN,
        std=STD,
        device="cpu",
        seed=0,
    )
    assert set(metrics) == {"test/semi_top1", "test/semi_top5"}
    _, high = chance_band(4, 200)
    assert metrics["test/semi_top1"] > max(high, 0.8)
    assert len(calls) == 15 * 4 and calls[0] == (16, 3, 16, 16)
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert encoder.training


def test_fine_tune_is_deterministic_given_seed() -> None:
    images, labels = quadrant_images(32, seed=0, size=8)
    cfg = SemiSupervisedConfig(epochs=2, batch_size=8)
    kwargs = {"mean": MEAN, "std": STD, "device": "cpu", "seed": 5}
    sets = {"val": (images, labels)}
    first = fine_tune(tiny_encoder(), 32, images, labels, sets, 4, cfg, **kwargs)
    second = fine_tune(tiny_encoder(), 32, images, labels, sets, 4, cfg, **kwargs)
    assert first == second
