"""Trials packed on one device: the aggregate images/second of N trials at once vs one alone.

What ``resources.gpus_per_worker: 1/N`` buys: N trials' workers share one GPU. Each trial
here is a separate process (as Ray's workers are; no Ray needed) running the training loop's
own step (``ablate.train.pretraining_step`` with the online probe, rows drawn as ``run_epoch``
draws them) for ``--seconds`` after all have built their model and warmed up (they start
the timed window together at a barrier). The single-trial run is the same with N = 1. CPU
threads are split: one trial alone gets ``--threads``, each of N packed trials
``--threads // N`` (on the CPU packing only re-divides the cores).

    python benchmarks/packing.py [--trials 3] [--seconds 20] [--width 16] [--batch 256]
    python benchmarks/packing.py --trials 3 --width 64 --batch 512     # a GPU

Images: the first rows of ../shared/data/cifar10 when present, else synthetic shapes. The last
line is one JSON object: {"benchmark": "packing", "trials": N, "ratio": packed / single, ...}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_trial(args: argparse.Namespace, seed: int, threads: int, barrier, results) -> None:
    """One trial's loop: build, warm up, wait at ``barrier``, then steps for ``args.seconds``;
    puts (images, seconds) on ``results``."""
    from train_throughput import data_config

    from ablate.config import TrialConfig
    from ablate.data import load_dataset
    from ablate.probe import OnlineProbe
    from ablate.train import build_pretraining, pretraining_step, resident_data, to_device_batch

    torch.set_num_threads(threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dataset = load_dataset(data_config(args.batch * 8))
    config = TrialConfig.model_validate(
        {
            "model": {"arch": "resnet18", "stem": "cifar", "width": args.width},
            "augment": {"ops": "simclr_cifar", "color": {"strength": 0.5}},
            "train": {"batch_size": args.batch, "epochs": 100, "seed": seed},
        }
    )
    torch.manual_seed(seed)
    parts = build_pretraining(config, dataset.mean, dataset.std, device, steps_per_epoch=1000)
    online = OnlineProbe(parts.model.encoder.feat_dim, dataset.num_classes, 0.1).to(device)
    images, labels = dataset.train.images, dataset.train.labels
    resident = resident_data(images, labels, device) if cuda else None
    generator = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)

    def step() -> torch.Tensor:
        rows = np.sort(rng.choice(len(images), args.batch, replace=False))
        if resident is not None:
            index = torch.from_numpy(rows).to(device)
            batch = to_device_batch(resident.images, index, device, True)
            batch_labels = resident.labels.index_select(0, index)
        else:
            batch = to_device_batch(images, rows, device, True)
            batch_labels = torch.from_numpy(labels[rows]).to(device)
        return pretraining_step(parts, batch, generator, online, batch_labels).finite

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    barrier.wait()
    start = time.perf_counter()
    steps = 0
    finite = []
    while time.perf_counter() - start < args.seconds:
        finite.append(step())
        steps += 1
    assert bool(torch.stack(finite).all())  # waits for the device
    results.put((steps * args.batch, time.perf_counter() - start))


def measure(args: argparse.Namespace, trials: int) -> list[float]:
    """Images/second of each of ``trials`` processes run at once."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(trials), context.Queue()
    threads = max(1, args.threads // trials)
    processes = [
        context.Process(target=run_trial, args=(args, seed, threads, barrier, results))
        for seed in range(trials)
    ]
    for process in processes:
        process.start()
    rates = [images / seconds for images, seconds in (results.get() for _ in processes)]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a trial process failed (exit code {process.exitcode})")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="N trials packed at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed window per run")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width")
    parser.add_argument("--batch", type=int, default=256, help="each trial's batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"device {args.device}, {args.threads} threads, load average {load[0]:.2f}, "
        f"resnet18 width {args.width}, batch {args.batch}, {args.seconds:.0f} s windows"
    )
    single = measure(args, 1)[0]
    print(f"one trial alone: {single:.1f} img/s")
    packed = measure(args, args.trials)
    aggregate = sum(packed)
    ratio = aggregate / single
    print(
        f"{args.trials} trials at once: {aggregate:.1f} img/s together "
        f"({', '.join(f'{r:.1f}' for r in packed)}), {ratio:.2f}x one trial"
    )
    print(
        json.dumps(
            {
                "benchmark": "packing",
                "trials": args.trials,
                "ratio": round(ratio, 3),
                "single_images_per_s": round(single, 1),
                "packed_images_per_s": round(aggregate, 1),
                "per_trial_images_per_s": [round(r, 1) for r in packed],
                "device": args.device,
                "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "width": args.width,
                "batch": args.batch,
                "threads": args.threads,
                "load_average_1min": round(load[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
