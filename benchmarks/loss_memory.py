"""Peak memory of NT-Xent forward+backward at batch 4096 (8192 views x 128) on CPU.

Compares ``ablate.loss.NTXentLoss`` (cross-entropy over the (2N, 2N) logits, diagonal set to
-inf in place) with a naive implementation in the style of the public SimCLR PyTorch ports
(boolean-mask gathers of positives and negatives, which copy the (2N, 2N) matrix several
times). Each implementation runs in a fresh subprocess; the figure is the growth of the
process's peak resident set size (VmHWM, reset through /proc/self/clear_refs where the kernel
allows it, else ru_maxrss) over its resident size just before forward+backward.

Usage: python benchmarks/loss_memory.py [--batch 4096] [--dim 128] [--limit-mb 2048]
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TEMPERATURE = 0.5


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def naive_nt_xent(z1, z2, temperature: float):
    """NT-Xent as the public SimCLR PyTorch ports write it: masks and boolean gathers."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    features = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    image_ids = torch.cat([torch.arange(n), torch.arange(n)])
    same_image = (image_ids[None, :] == image_ids[:, None]).float()
    similarity = features @ features.T
    not_self = ~torch.eye(2 * n, dtype=torch.bool)
    same_image = same_image[not_self].view(2 * n, -1)
    similarity = similarity[not_self].view(2 * n, -1)
    positives = similarity[same_image.bool()].view(2 * n, -1)
    negatives = similarity[~same_image.bool()].view(2 * n, -1)
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long))


def measure(impl: str, batch: int, dim: int) -> dict:
    """Run one forward+backward of ``impl`` in this process and return its memory figures."""
    import torch

    from ablate.loss import NTXentLoss

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(batch, dim, generator=gen, requires_grad=True)
    z2 = torch.randn(batch, dim, generator=gen, requires_grad=True)
    loss_fn = NTXentLoss(TEMPERATURE) if impl == "ours" else None

    rss_before_kb = _status_kb("VmRSS")
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    start = time.perf_counter()
    loss = loss_fn(z1, z2) if loss_fn is not None else naive_nt_xent(z1, z2, TEMPERATURE)
    loss.backward()
    seconds = time.perf_counter() - start
    hwm_kb = _status_kb("VmHWM") if reset else None
    maxrss_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = hwm_kb if hwm_kb is not None else maxrss_after_kb
    return {
        "impl": impl,
        "loss": loss.item(),
        "grad_checksum": float(z1.grad.abs().sum() + z2.grad.abs().sum()),
        "peak_growth_mb": (peak_kb - rss_before_kb) / 1024,
        "rss_before_mb": rss_before_kb / 1024,
        "maxrss_before_mb": maxrss_before_kb / 1024,
        "maxrss_after_mb": maxrss_after_kb / 1024,
        "peak_source": "VmHWM (reset)" if hwm_kb is not None else "ru_maxrss",
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096, help="images; views = 2 * batch")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--limit-mb", type=float, default=2048)
    parser.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.dim)))
        return

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    results = {}
    for impl in ("ours", "naive"):
        child = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                impl,
                "--batch",
                str(args.batch),
                "--dim",
                str(args.dim),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        results[impl] = json.loads(child.stdout.strip().splitlines()[-1])
        r = results[impl]
        print(
            f"{impl:>5}: peak RSS growth {r['peak_growth_mb']:7.1f} MB "
            f"(RSS before {r['rss_before_mb']:.0f} MB, {r['peak_source']}), "
            f"forward+backward {r['seconds']:.2f} s, loss {r['loss']:.6f}"
        )

    ours, naive = results["ours"], results["naive"]
    same = abs(ours["loss"] - naive["loss"]) <= 1e-4 * abs(naive["loss"])
    views = 2 * args.batch
    matrix_mb = views * views * 4 / 2**20
    ratio = ours["peak_growth_mb"] / naive["peak_growth_mb"]
    print(f"views {views} x dim {args.dim}: one (2N, 2N) fp32 matrix is {matrix_mb:.0f} MB")
    print(f"ours/naive peak: {ratio:.2f}; same loss: {same}")
    print(
        json.dumps(
            {
                "benchmark": "loss_memory",
                "views": views,
                "dim": args.dim,
                "peak_mb": round(ours["peak_growth_mb"], 1),
                "limit_mb": args.limit_mb,
                "within_limit": ours["peak_growth_mb"] <= args.limit_mb,
                "naive_peak_mb": round(naive["peak_growth_mb"], 1),
                "seconds": round(ours["seconds"], 3),
                "naive_seconds": round(naive["seconds"], 3),
                "same_loss": same,
                "peak_source": ours["peak_source"],
            }
        )
    )


if __name__ == "__main__":
    main()
