"""Two-view augmentation throughput: batched on-device ops vs per-image torchvision transforms.

"Ours": ``ablate.augment.build_pipeline`` with the ``simclr`` preset (crop, flip, colour
distortion of strength 1, blur), normalisation on, called on whole uint8 batches held as one
tensor on the device (each batch gathered by a shuffled index, as the training loop does).

"Theirs": the public SimCLR repositories' approach: a ``torch.utils.data.DataLoader`` with
``num_workers`` = the number of CPU cores over a dataset that makes a PIL image per index and
applies ``RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter(0.8s, 0.8s, 0.8s,
0.2s), p=0.8), RandomGrayscale(0.2), RandomApply(GaussianBlur(10% of the side), p=0.5),
ToTensor, Normalize`` twice per image.

The batched side is measured with one torch thread and with as many threads as the per-image
side has workers (all cores by default); the headline ratio uses the latter, so both sides get
the same cores. ``OMP_WAIT_POLICY`` is left as the environment sets it (it is reported). On
an idle 2-core machine OpenMP's default (busy waiting) ran 2 threads 1.6x faster than one
thread and ``PASSIVE`` 2x slower; on a shared, oversubscribed CPU it was the other way round
(the spinning threads compete with the other processes), and ``OMP_WAIT_POLICY=PASSIVE``
made 2 threads 4-10x faster.

Both sides run on the same images (the first rows of CIFAR-10 from ``../shared/data/cifar10``,
relative to the repository root, when present, else synthetic 32 px images), the same batch
size, interleaved repetitions of one pass over the images each; figures are medians. Usage::

    python benchmarks/augment_throughput.py [--images 2048] [--batch-size 512] [--repeats 5]

Last line: ``{"benchmark": "augment_throughput", "ratio": ours / theirs, ...}``.
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
import torchvision.transforms as T
from PIL import Image

from ablate.augment import blur_kernel_size, build_pipeline
from ablate.config import AugmentConfig, DataConfig
from ablate.data import load_dataset

CIFAR_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10"


def load_images(count: int) -> tuple[np.ndarray, tuple, tuple, str]:
    """(N, H, W, 3) uint8 images, their mean/std and a description of where they came from."""
    if (CIFAR_DIR / "train.parquet").is_file():
        cfg = DataConfig(
            name="parquet",
            train_path=str(CIFAR_DIR / "train.parquet"),
            test_path=str(CIFAR_DIR / "test.parquet"),
            limit_train=count,
            limit_test=8,
        )
        source = f"CIFAR-10 ({CIFAR_DIR.resolve()})"
    else:
        cfg = DataConfig(name="synthetic", num_train=count, synthetic_size=32)
        source = "synthetic 32 px"
    data = load_dataset(cfg)
    return np.ascontiguousarray(data.train.images), data.mean, data.std, source


class TwoViewImages(torch.utils.data.Dataset):
    """Per-image two-view dataset of the public SimCLR code (a PIL image per index)."""

    def __init__(self, images: np.ndarray, transform: T.Compose):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def torchvision_transform(cfg: AugmentConfig, side: int, mean: tuple, std: tuple) -> T.Compose:
    s = cfg.color.strength
    kernel = blur_kernel_size(side, cfg.blur.kernel_fraction)
    return T.Compose(
        [
            T.RandomResizedCrop(side, scale=cfg.crop.scale, ratio=cfg.crop.ratio),
            T.RandomHorizontalFlip(cfg.flip.p),
            T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=cfg.color.p),
            T.RandomGrayscale(cfg.color.grayscale_p),
            T.RandomApply([T.GaussianBlur(kernel, cfg.blur.sigma)], p=cfg.blur.p),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per pass")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, batched side (default: workers)"
    )
    args = parser.parse_args()
    threads = args.threads or max(1, args.workers)

    images, mean, std, source = load_images(args.images)
    side = images.shape[1]
    cfg = AugmentConfig(ops="simclr")
    device = torch.device(args.device)

    views = build_pipeline(cfg, mean, std)
    on_device = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batched_pass(num_threads: int) -> float:
        torch.set_num_threads(num_threads)
        sync()
        start = time.perf_counter()
        order = torch.randperm(len(on_device), generator=generator, device=device)
        for first in range(0, len(order), args.batch_size):
            views(on_device[order[first : first + args.batch_size]], generator)
        sync()
        return 2 * len(order) / (time.perf_counter() - start)

    loader = torch.utils.data.DataLoader(
        TwoViewImages(images, torchvision_transform(cfg, side, mean, std)),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )

    def per_image_pass() -> float:
        start = time.perf_counter()
        count = 0
        for first_view, second_view in loader:
            count += len(first_view) + len(second_view)
        return count / (time.perf_counter() - start)

    per_image_pass()  # start the workers, warm caches
    batched_pass(threads)
    ours, ours_one, theirs = [], [], []
    for repeat in range(args.repeats):
        theirs.append(per_image_pass())
        ours.append(batched_pass(threads))
        ours_one.append(batched_pass(1))
        print(
            f"repeat {repeat}: per-image {theirs[-1]:,.0f} views/s, batched {ours[-1]:,.0f} "
            f"views/s ({threads} threads), {ours_one[-1]:,.0f} views/s (1 thread)"
        )
    batched, one_thread = statistics.median(ours), statistics.median(ours_one)
    per_image = statistics.median(theirs)
    print(f"images: {len(images)} x {side}px from {source}; batch {args.batch_size}; medians")
    print(f"per-image torchvision, DataLoader, {args.workers} workers: {per_image:,.0f} views/s")
    print(f"batched on {device}, {threads} threads: {batched:,.0f} views/s")
    print(f"batched on {device}, 1 thread: {one_thread:,.0f} views/s")
    print(f"ratio: {batched / per_image:.1f}x ({one_thread / per_image:.1f}x with 1 thread)")
    print(
        json.dumps(
            {
                "benchmark": "augment_throughput",
                "ratio": round(batched / per_image, 2),
                "batched_views_per_s": round(batched, 1),
                "per_image_views_per_s": round(per_image, 1),
                "ratio_one_thread": round(one_thread / per_image, 2),
                "batched_one_thread_views_per_s": round(one_thread, 1),
                "device": str(device),
                "threads": threads,
                "workers": args.workers,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "images": len(images),
                "side": side,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "ops": cfg.ops,
                "source": source,
            }
        )
    )


if __name__ == "__main__":
    main()
