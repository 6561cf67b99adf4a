"""Images/second of a pretraining epoch vs the model-only bound, measured in one run.

The epoch side runs the training loop's own step, ``ablate.train.pretraining_step``, on rows
drawn the way ``run_epoch`` draws them: on an accelerator gathered from the training set held
on the device (``resident_data``) with an index tensor, on the CPU gathered from the arrays;
the two-view augmentation, encoder + head + NT-Xent forward, the finiteness flag agreed and
(on an accelerator, with LARS) the update skipped on the device, backward, LARS step,
schedule, online probe, contrastive top-1. The bound runs only forward + backward + step of
the same encoder, head and loss on views already in memory. Each side runs ``--steps`` steps
back to back and waits for the device once at their end (as an epoch does); the sides
alternate block by block; each side reports its median over ``--repeats`` blocks.
Target: ratio >= 0.9 (everything but the model under 10%).

    python benchmarks/train_throughput.py [--steps 4] [--repeats 5] [--width 16] [--batch 256]
    python benchmarks/train_throughput.py --width 64 --batch 512 --steps 10   # a GPU

A/B switches for a GPU session: ``--host-rows`` (host gather + copy each step, as before),
``--host-sync`` (the host reads the finiteness flag every step, as before), ``--compile MODE``
(``train.compile``'s modes, both sides). It also prints the model's FLOP rate (FLOPs
of one bound step counted by ``torch.utils.flop_counter``) against a measured bf16 matmul rate
of the chip on CUDA: the fraction of the chip's bf16 rate the epoch uses.

Images: the first rows of ../shared/data/cifar10 (32x32) when present, else synthetic shapes.
No Ray needed. The last line is one JSON object: {"benchmark": "train_throughput", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
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
    compiled,
    contrastive_forward,
    optimizer_step,
    pretraining_step,
    resident_data,
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


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul rate of the chip (TFLOP/s): the reference for 'fraction used'."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host-rows", action="store_true", help="gather rows on the host")
    parser.add_argument("--host-sync", action="store_true", help="read the flag every step")
    parser.add_argument(
        "--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    rows = args.batch * (args.steps + 1)
    dataset = load_dataset(data_config(rows))
    config = TrialConfig.model_validate(
        {
            "model": {"arch": "resnet18", "stem": "cifar", "width": args.width},
            "augment": {"ops": "simclr_cifar", "color": {"strength": 0.5}},
            "train": {"batch_size": args.batch, "epochs": 100},
        }
    )
    load = os.getloadavg()
    print(
        f"device {device}, {args.threads} threads, load average {load[0]:.2f}, "
        f"data {dataset.name} {dataset.image_shape}, batch {args.batch}, resnet18 width "
        f"{args.width}, {args.steps} steps x {args.repeats}, compile {args.compile}"
    )

    def fresh_parts():
        torch.manual_seed(0)
        parts = build_pretraining(config, dataset.mean, dataset.std, device, steps_per_epoch=1000)
        parts.model = compiled(parts.model, args.compile)
        return parts

    epoch_parts, bound_parts = fresh_parts(), fresh_parts()
    if args.host_sync:
        epoch_parts.device_skip = False
    online = OnlineProbe(
        getattr(epoch_parts.model, "_orig_mod", epoch_parts.model).encoder.feat_dim,
        dataset.num_classes,
        0.1,
    )
    online.to(device)
    images, labels = dataset.train.images, dataset.train.labels
    resident = None if args.host_rows or not cuda else resident_data(images, labels, device)
    generator = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    fixed = epoch_parts.pipeline(
        to_device_batch(images, np.arange(args.batch), device, True), generator
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def epoch_block() -> float:
        """Seconds of ``--steps`` steps of the training loop, the device waited for once."""
        order = np.sort(rng.choice(len(images), (args.steps, args.batch)), axis=1)
        if resident is not None:
            order = torch.from_numpy(order).to(device)
        sync()
        start = time.perf_counter()
        finite = []
        for step_rows in order:
            if resident is not None:
                batch = to_device_batch(resident.images, step_rows, device, True)
                batch_labels = resident.labels.index_select(0, step_rows)
            else:
                batch = to_device_batch(images, step_rows, device, True)
                batch_labels = torch.from_numpy(labels[step_rows]).to(device)
            result = pretraining_step(epoch_parts, batch, generator, online, batch_labels)
            finite.append(result.finite)
        assert bool(torch.stack(finite).all())  # waits for the device
        return time.perf_counter() - start

    def bound_block() -> float:
        """Seconds of ``--steps`` forward + backward + step on views already in memory."""
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            _, _, _, loss = contrastive_forward(bound_parts, *fixed)
            optimizer_step(bound_parts, loss)
        loss.item()  # waits for the device
        return time.perf_counter() - start

    epoch_block(), bound_block()  # warm-up: allocator, kernels, compilation, first touches
    epochs, bounds = [], []
    for repeat in range(args.repeats):
        # The sides alternate block by block, so a change in machine load hits both alike.
        epochs.append(args.steps * args.batch / epoch_block())
        bounds.append(args.steps * args.batch / bound_block())
        print(f"repeat {repeat + 1}: epoch {epochs[-1]:8.1f} img/s   bound {bounds[-1]:8.1f} img/s")
    epoch_ips, bound_ips = statistics.median(epochs), statistics.median(bounds)
    ratio = epoch_ips / bound_ips
    print(
        f"median: epoch {epoch_ips:.1f} img/s, model-only bound {bound_ips:.1f} img/s, "
        f"ratio {ratio:.3f} (target >= 0.9)"
    )
    summary = {
        "benchmark": "train_throughput",
        "ratio": round(ratio, 4),
        "epoch_images_per_s": round(epoch_ips, 1),
        "bound_images_per_s": round(bound_ips, 1),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "batch": args.batch,
        "width": args.width,
        "threads": args.threads,
        "load_average_1min": round(load[0], 2),
        "resident_rows": resident is not None,
        "device_skip": epoch_parts.device_skip,
        "compile": args.compile,
    }
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _, _, _, loss = contrastive_forward(bound_parts, *fixed)
        optimizer_step(bound_parts, loss)
    flops_per_image = counter.get_total_flops() / args.batch
    model_tflops = flops_per_image * epoch_ips / 1e12
    summary.update(
        gflop_per_image=round(flops_per_image / 1e9, 3), epoch_tflops=round(model_tflops, 3)
    )
    line = f"model {flops_per_image / 1e9:.3f} GFLOP/image (2 views, fwd+bwd): "
    line += f"{model_tflops:.3f} TFLOP/s"
    if cuda:
        peak = matmul_tflops(device)
        summary.update(
            bf16_matmul_tflops_measured=round(peak, 1),
            fraction_of_bf16_rate=round(model_tflops / peak, 3),
        )
        line += f" = {model_tflops / peak:.1%} of the measured bf16 matmul rate {peak:.0f} TFLOP/s"
    print(line)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
