"""An augmentation op written outside the package: random solarization, swept as a plugin.

Solarization inverts every pixel above a threshold, ``x -> 1 - x where x >= threshold``. It is
one of the augmentations of BYOL (Grill et al., 2020, arXiv:2006.07733, Appendix B:
probability 0 for the first view, 0.2 for the second, threshold 0.5), kept by MoCo v3 (Chen,
Xie and He, 2021); SimCLR itself (Chen et al., 2020) does not use it. Name it in a spec as
``examples.my_op:solarize`` (the sweep runs from the repository root, so ``examples`` imports)::

    augment:
      ops: [crop, color, examples.my_op:solarize]
      params:
        examples.my_op:solarize: {p: 0.2, threshold: 0.5}

The op follows the contract of ``ablate.ops``: ``op(x, generator, params) -> y`` on a batch
``x: (B, C, H, W)`` float in [0, 1], all random draws from ``generator``, ``x`` untouched, each
sample solarized independently with probability ``params.p``; ``solarize.params_model``
validates ``augment.params["examples.my_op:solarize"]`` when the spec is read.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


class SolarizeParams(BaseModel):
    """Parameters of :func:`solarize`."""

    model_config = ConfigDict(extra="forbid")

    p: float = Field(0.2, ge=0.0, le=1.0, description="Probability of solarizing a sample.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Pixels at or above it are inverted (1 - x)."
    )


def solarize(x: torch.Tensor, generator: torch.Generator, params: SolarizeParams) -> torch.Tensor:
    """Random solarization (BYOL, Grill et al., 2020): each sample, with probability ``params.p``,
    gets ``1 - x`` wherever ``x >= params.threshold``. ``(B, C, H, W) -> (B, C, H, W)``."""
    chosen = torch.rand(x.shape[0], generator=generator, device=generator.device) < params.p
    chosen = chosen.to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen & (x >= params.threshold), 1.0 - x, x)


solarize.params_model = SolarizeParams
