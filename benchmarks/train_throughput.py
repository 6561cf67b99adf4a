"""Images/second of a pretraining epoch vs the model-only bound, measured in one run.

The epoch side runs the training loop's own step, ``ablate.train.pretraining_step``, on rows
drawn the way a worker draws them: uint8 rows of the decoded dataset to a tensor, the two-view
augmentation, encoder + head + NT-Xent forward, the finiteness check, backward, LARS step,
schedule, online probe, contrastive top-1. The bound runs only forward + backward + step of
the same encoder, head and loss on views already in memory. The two sides alternate step by
step; each repeat sums ``--steps`` steps per side, and each side reports its median over the
repeats. Target: ratio >= 0.9 (everything but the model under 10%).

    python benchmarks/train_throughput.py [--steps 4] [--repeats 5] [--width 16] [--batch 256]

Images: the first rows of ../shared/data/cifar10 (32x32) when present, else synthetic shapes.
The last line is one JSON object: {"benchmark": "train_throughput", "ratio": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ablate.config import DataConfig, TrialConfig
from ablate.data import load_dataset
from ablate.probe import OnlineProbe
from ablate.train import (
    build_pretraining,
    contrastive_forward,
    optimizer_step,
    pretraining_step,
    to_device_batch,
)

CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def data_config(rows: int) -> DataConfig:
    if (CIFAR / "train.parquet").exists():
        return DataConfig(
            name="parquet",
            train_path=str(CIFAR / "train.parquet"),
            test_path=str(CIFAR / "test.parquet"),
            limit_train=rows,
            limit_test=64,
        )
    return DataConfig(name="synthetic", num_train=rows, num_test=64, synthetic_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    rows = args.batch * (args.steps + 1)
    dataset = load_dataset(data_config(rows))
    config = TrialConfig.model_validate(
        {
            "model": {"arch": "resnet18", "stem": "cifar", "width": args.width},
            "augment": {"ops": "simclr_cifar", "color": {"strength": 0.5}},
            "train": {"batch_size": args.batch, "epochs": 100},
        }
    )
    print(
        f"device {device}, {args.threads} threads, data {dataset.name} {dataset.image_shape}, "
        f"batch {args.batch}, resnet18 width {args.width}, {args.steps} steps x {args.repeats}"
    )

    def fresh_parts():
        torch.manual_seed(0)
        return build_pretraining(config, dataset.mean, dataset.std, device, steps_per_epoch=1000)

    epoch_parts, bound_parts = fresh_parts(), fresh_parts()
    online = OnlineProbe(epoch_parts.model.encoder.feat_dim, dataset.num_classes, 0.1)
    online.to(device)
    images, labels = dataset.train.images, dataset.train.labels
    generator = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    fixed = epoch_parts.pipeline(
        to_device_batch(images, np.arange(args.batch), device, True), generator
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def epoch_step() -> float:
        """Seconds of one step of the training loop."""
        sync()
        start = time.perf_counter()
        rows_ = np.sort(rng.choice(len(images), args.batch, replace=False))
        result = pretraining_step(
            epoch_parts,
            to_device_batch(images, rows_, device, True),
            generator,
            online,
            torch.from_numpy(labels[rows_]).to(device),
        )
        assert result.finite
        sync()
        return time.perf_counter() - start

    def bound_step() -> float:
        """Seconds of forward + backward + step on views already in memory."""
        sync()
        start = time.perf_counter()
        _, _, _, loss = contrastive_forward(bound_parts, *fixed)
        optimizer_step(bound_parts, loss)
        loss.item()
        sync()
        return time.perf_counter() - start

    epoch_step(), bound_step()  # warm-up: allocator, kernels, first-touch of the data
    # The sides alternate step by step, so a change in machine load hits both alike.
    epochs, bounds = [], []
    for repeat in range(args.repeats):
        epoch_seconds = bound_seconds = 0.0
        for _ in range(args.steps):
            epoch_seconds += epoch_step()
            bound_seconds += bound_step()
        epochs.append(args.steps * args.batch / epoch_seconds)
        bounds.append(args.steps * args.batch / bound_seconds)
        print(f"repeat {repeat + 1}: epoch {epochs[-1]:8.1f} img/s   bound {bounds[-1]:8.1f} img/s")
    epoch_ips, bound_ips = statistics.median(epochs), statistics.median(bounds)
    ratio = epoch_ips / bound_ips
    print(
        f"median: epoch {epoch_ips:.1f} img/s, model-only bound {bound_ips:.1f} img/s, "
        f"ratio {ratio:.3f} (target >= 0.9)"
    )
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "ratio": round(ratio, 4),
                "epoch_images_per_s": round(epoch_ips, 1),
                "bound_images_per_s": round(bound_ips, 1),
                "device": device.type,
                "batch": args.batch,
                "width": args.width,
            }
        )
    )


if __name__ == "__main__":
    main()
