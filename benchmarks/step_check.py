"""What one training step costs outside the model, counted, and that its paths train alike.

On ``--device`` (default: CUDA when present), with the loop's own ``run_epoch``:

* ``counts``: per step (an epoch of 6 steps, its end included), under ``torch.profiler``:
  host reads of device values (``aten::_local_scalar_dense``: ``.item()``, ``bool()``; the
  epoch's one ``tolist()`` at its end is not an op: on CUDA it shows as a copy + sync), ops
  dispatched, and on CUDA kernel launches, ``cudaMemcpy*`` calls and synchronisations; for
  the step as it was (host gather + copy, flag read every step: ``device_skip`` False, no
  resident rows) and as it is now on the device (on the CPU "now" is the same path unless
  ``--device-path``).
* ``same``: two epochs of each path from the same seed: epoch losses and the largest weight
  difference (bit-identical on the CPU; on CUDA within cuDNN's nondeterminism).
* ``divergence``: a loss that turns NaN at step 3: the reason the epoch reports.

    python benchmarks/step_check.py [--device cuda] [--width 16] [--batch 128] [--device-path]

No Ray needed. Prints one JSON line per part.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from ablate.config import TrialConfig, resolve
from ablate.train import NaNLossFromCall, build_worker, resident_data, run_epoch


def trial(args: argparse.Namespace, steps: int) -> TrialConfig:
    return TrialConfig.model_validate(
        resolve(
            {
                "data": {
                    "name": "synthetic",
                    "num_train": args.batch * (steps + 2),
                    "num_test": 32,
                    "synthetic_size": 32,
                },
                "model": {"arch": "resnet18", "width": args.width},
                "augment": {"ops": "simclr_cifar"},
                "train": {"batch_size": args.batch, "epochs": 3, "steps_per_epoch": steps},
            }
        )
    )


def worker_for(args: argparse.Namespace, now: bool, steps: int):
    """A worker whose step is the current one (``now``) or the previous one."""
    device = torch.device(args.device)
    worker = build_worker(trial(args, steps), {}, 0, 1, device)
    device_path = now and (device.type != "cpu" or args.device_path)
    worker.parts.device_skip = device_path
    worker.resident = (
        resident_data(worker.data.images, worker.data.labels, device) if device_path else False
    )
    return worker


def counts(args: argparse.Namespace, now: bool) -> dict[str, float]:
    steps = 6
    worker = worker_for(args, now, steps)
    generator = torch.Generator(device=worker.device)
    run_epoch(worker, generator, 1)  # warm-up
    activities = [ProfilerActivity.CPU]
    if worker.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run_epoch(worker, generator, 2)
    tally: Counter[str] = Counter()
    for event in prof.events():
        name = event.name
        if name == "aten::_local_scalar_dense":
            tally["host_reads"] += 1
        if name.startswith("aten::") and (
            event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")
        ):
            tally["ops_dispatched"] += 1
        if name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"):
            tally["kernel_launches"] += 1
        if name.startswith("cudaMemcpy"):
            tally["memcpy_calls"] += 1
        if name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            tally["synchronisations"] += 1
    return {key: round(value / steps, 1) for key, value in sorted(tally.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--device-path",
        action="store_true",
        help="on the CPU too, the accelerator's path (device skip, resident rows)",
    )
    args = parser.parse_args()

    before, now = counts(args, now=False), counts(args, now=True)
    print(json.dumps({"check": "step_counts", "device": args.device, "per_step_before": before,
                      "per_step_now": now}))  # fmt: skip

    sums, weights = {}, {}
    for label, is_now in (("before", False), ("now", True)):
        worker = worker_for(args, is_now, steps=4)
        generator = torch.Generator(device=worker.device)
        sums[label] = [run_epoch(worker, generator, epoch).loss_sum for epoch in (1, 2)]
        weights[label] = [p.detach().float().cpu() for p in worker.parts.model.parameters()]
    max_diff = max(
        (a - b).abs().max().item() for a, b in zip(weights["before"], weights["now"], strict=True)
    )
    print(
        json.dumps(
            {
                "check": "step_same_training",
                "device": args.device,
                "loss_sums": sums,
                "max_weight_difference": max_diff,
                "bit_identical": max_diff == 0.0 and sums["before"] == sums["now"],
            }
        )
    )

    worker = worker_for(args, True, steps=6)
    worker.parts.loss_fn = NaNLossFromCall(worker.parts.loss_fn, at=3)
    result = run_epoch(worker, torch.Generator(device=worker.device), 1)
    print(
        json.dumps(
            {
                "check": "step_divergence",
                "device": args.device,
                "device_skip": worker.parts.device_skip,
                "reason": result.diverged,
                "steps_counted": result.steps,
                "ok": "epoch 1, step 3;" in result.diverged and result.steps == 2,
            }
        )
    )


if __name__ == "__main__":
    main()
