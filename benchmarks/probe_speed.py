"""Linear-probe speed and accuracy: our L-BFGS probe vs the 500-epoch Adam probe of public code.

Both sides fit multinomial logistic regression on the same cached features and are scored on
the same held-out rows. "Theirs" is the protocol of public SimCLR repositories (e.g.
Spijkervet/SimCLR ``linear_evaluation.py``): ``nn.Linear`` on the raw features, Adam (lr 3e-4,
no weight decay), batch 256, 500 epochs; here its minibatches index in-memory tensors (no
DataLoader), which only makes it faster. "Ours" is ``ablate.probe.linear_probe`` with the
``ProbeConfig`` defaults.

Features: a randomly initialised CIFAR-stem ResNet-18 of width 16 from ``ablate.models`` when
that module exists, else a fixed random two-layer conv net; on the first rows of CIFAR-10 from
``../shared/data/cifar10`` (relative to the repository root) when present, else gaussian
clusters. Usage::

    python benchmarks/probe_speed.py [--train-rows 10000] [--test-rows 5000] [--epochs 500]

Last line: ``{"benchmark": "probe_speed", "ratio": their_seconds / our_seconds, ...}``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import ModelConfig, ProbeConfig
from ablate.probe import extract_features, linear_probe, topk_accuracy

CIFAR_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def read_cifar(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``rows`` rows of a CIFAR-10 Parquet file: uint8 (N, 32, 32, 3), int64 (N,)."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(path, columns=["image", "label"]).slice(0, rows)
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table["image"].to_pylist()]
    )
    return images, np.asarray(table["label"].to_pylist(), dtype=np.int64)


def random_encoder(seed: int) -> tuple[nn.Module, str]:
    """A frozen, randomly initialised encoder and its description."""
    torch.manual_seed(seed)
    try:
        from ablate.models import build_encoder
    except ImportError:
        encoder = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        return encoder, "random 2-layer conv net (ablate.models not available)"
    return build_encoder(ModelConfig(arch="resnet18", stem="cifar", width=16)), (
        "random-init resnet18 (cifar stem, width 16) from ablate.models"
    )


def cached_features(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    train_file, test_file = CIFAR_DIR / "train.parquet", CIFAR_DIR / "test.parquet"
    if train_file.exists() and test_file.exists():
        train_images, train_labels = read_cifar(train_file, args.train_rows)
        test_images, test_labels = read_cifar(test_file, args.test_rows)
        mean = tuple(float(m) for m in train_images.reshape(-1, 3).mean(0) / 255.0)
        std = tuple(float(s) for s in train_images.reshape(-1, 3).std(0) / 255.0)
        encoder, description = random_encoder(args.seed)
        start = time.perf_counter()
        x_train = extract_features(encoder, train_images, mean, std, batch_size=256)
        x_test = extract_features(encoder, test_images, mean, std, batch_size=256)
        print(f"features: {description} on CIFAR-10 {CIFAR_DIR.resolve()}")
        print(
            f"  extracted {tuple(x_train.shape)} + {tuple(x_test.shape)} in "
            f"{time.perf_counter() - start:.1f}s"
        )
        return x_train, torch.from_numpy(train_labels), x_test, torch.from_numpy(test_labels)
    print("features: gaussian clusters (CIFAR-10 parquet not found), 10 classes, 256 dims")
    generator = torch.Generator().manual_seed(args.seed)
    centres = 1.5 * torch.randn(10, 256, generator=generator)
    y_train = torch.randint(0, 10, (args.train_rows,), generator=generator)
    y_test = torch.randint(0, 10, (args.test_rows,), generator=generator)
    x_train = centres[y_train] + 4.0 * torch.randn(args.train_rows, 256, generator=generator)
    x_test = centres[y_test] + 4.0 * torch.randn(args.test_rows, 256, generator=generator)
    return x_train, y_train, x_test, y_test


def adam_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """The public repositories' probe: Linear + Adam on raw features; returns test top-1."""
    torch.manual_seed(seed)
    model = nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(x_train), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return topk_accuracy(model(x_test), y_test, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-rows", type=int, default=10000)
    parser.add_argument("--test-rows", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=500, help="their Adam epochs")
    parser.add_argument("--their-lr", type=float, default=3e-4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="our probe's runs (median)")
    parser.add_argument(
        "--features-cache", type=Path, help="save the features here, or load them if present"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.features_cache and args.features_cache.exists():
        x_train, y_train, x_test, y_test = torch.load(args.features_cache, weights_only=True)
        print(f"features: loaded from {args.features_cache}")
    else:
        x_train, y_train, x_test, y_test = cached_features(args)
        if args.features_cache:
            torch.save((x_train, y_train, x_test, y_test), args.features_cache)
    num_classes = int(y_train.max()) + 1
    cfg = ProbeConfig()

    our_runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = linear_probe(x_train, y_train, {"test": (x_test, y_test)}, num_classes, cfg)
        our_runs.append(time.perf_counter() - start)
    our_seconds = float(np.median(our_runs))
    print(
        f"ours  : L-BFGS max_iter={cfg.max_iter} weight_decay={cfg.weight_decay} "
        f"standardize={cfg.standardize}: {our_seconds:.2f}s (median of "
        f"{[round(t, 2) for t in our_runs]}), "
        f"test top-1 {100 * ours['test/probe_top1']:.2f}%"
    )

    start = time.perf_counter()
    their_top1 = adam_probe(
        x_train,
        y_train,
        x_test,
        y_test,
        epochs=args.epochs,
        lr=args.their_lr,
        batch_size=256,
        seed=args.seed,
    )
    their_seconds = time.perf_counter() - start
    print(
        f"theirs: Adam lr={args.their_lr} batch=256 epochs={args.epochs}: "
        f"{their_seconds:.2f}s, test top-1 {100 * their_top1:.2f}%"
    )

    print(
        json.dumps(
            {
                "benchmark": "probe_speed",
                "ratio": round(their_seconds / our_seconds, 2),
                "top1_ours": round(ours["test/probe_top1"], 4),
                "top1_theirs": round(their_top1, 4),
                "seconds_ours": round(our_seconds, 3),
                "seconds_theirs": round(their_seconds, 3),
                "train_rows": len(x_train),
                "test_rows": len(x_test),
                "feat_dim": x_train.shape[1],
            }
        )
    )


if __name__ == "__main__":
    main()
