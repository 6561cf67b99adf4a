"""How far ablate's LARS trust ratio is from google-research/simclr's, on a real gradient.

ablate (You et al. 2017, solo-learn): ``eta ||w|| / (||g|| + wd ||w||)``; SimCLR's reference
``lars_optimizer.py``: ``eta ||w|| / ||g + wd w||``. Prints, per weight decay, the ratio
reference / ablate over the weight tensors of a ResNet-18 after one NT-Xent backward pass at
initialisation, and the same with the gradient scaled down (late training: ||g|| shrinks
towards wd ||w||)::

    python benchmarks/lars_trust.py
"""

from __future__ import annotations

import statistics

import torch
import torchvision

from ablate.loss import NTXentLoss


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=128)
    images = torch.rand(64, 3, 32, 32)
    NTXentLoss(0.5)(model(images), model(images.flip(3))).backward()
    weights = [(p.detach(), p.grad) for p in model.parameters() if p.ndim > 1]
    for grad_scale in (1.0, 0.01):
        for wd in (1e-6, 1e-5, 1e-4):
            ratios = []
            for w, g in weights:
                g = g * grad_scale
                ours = w.norm() / (g.norm() + wd * w.norm())
                reference = w.norm() / (g + wd * w).norm()
                ratios.append(float(reference / ours))
            print(
                f"gradient x{grad_scale:g}, wd {wd:g}: reference / ablate trust ratio over "
                f"{len(ratios)} weight tensors: median {statistics.median(ratios):.4f}, "
                f"max {max(ratios):.4f}"
            )


if __name__ == "__main__":
    main()
