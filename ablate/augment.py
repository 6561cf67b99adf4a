"""Batched, on-device image augmentations for SimCLR (Chen et al., 2020, Sec. 3 and Figure 5).

Public SimCLR code augments one PIL image at a time in DataLoader workers. Here every op works
on a whole batch ``x: (B, C, H, W)`` float in [0, 1], on whatever device ``x`` lives on, with
per-sample random parameters drawn from a ``torch.Generator`` that the caller passes in (drawn
on the generator's device, then moved to ``x``'s device). Each op is called as
``op(x, generator, params=None) -> (B, C, H, W)``, a pure function (``x`` is not modified),
where ``params`` is the op's section of :class:`ablate.config.AugmentConfig` (the single source
of defaults); each op applies to each sample independently with probability ``params.p``.

The ops are the seven of the paper's Figure 5 (crop, cutout, color, sobel, noise, blur, rotate)
plus horizontal flip and a standalone grayscale, registered by name in :data:`ablate.ops.OPS`,
which also opens the door to a user's op (``module.path:attr``, adapted by
:func:`as_augment_op`). :func:`build_pipeline` turns an
``AugmentConfig`` into a :class:`TwoViewAugment` that produces the two views of a batch, either
``symmetric`` (both views get ``base + ops``) or ``asymmetric`` (the Figure 5 protocol: only the
first view gets ``ops``; both get ``base``).

Each op is split into ``sample`` (all random draws for the batch, made up front) and ``apply``
(deterministic). ``apply`` may overwrite a tensor that the pipeline itself allocated
(``inplace``), which matters on CPU, where fresh large buffers cost page faults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ablate import ops as op_registry
from ablate.config import (
    AUGMENTATION_PRESETS,
    AugmentConfig,
    BlurParams,
    ColorParams,
    CropParams,
    CutoutParams,
    FlipParams,
    GrayscaleParams,
    NoiseParams,
    RotateParams,
    SobelParams,
)
from ablate.registry import UnknownComponentError

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale``.
LUMA: tuple[float, float, float] = (0.2989, 0.587, 0.114)
#: Column order of the colour-jitter factors drawn by :func:`sample_color_params`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)

Shape = tuple[int, ...]
#: Per-sample random draws of one op: tensors whose first dimension is the batch.
Draws = dict[str, Tensor]
#: ``fn(rows, index, owned)``: the op on some rows; ``owned``: it may overwrite ``rows``.
RowsFn = Callable[[Tensor, Any, bool], Tensor]


# ----------------------------------------------------------------------------- helpers


def to_float(images: Tensor) -> Tensor:
    """uint8 ``(B, C, H, W)`` in [0, 255] -> float32 in [0, 1]; float input is returned as is."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or float images, got dtype {images.dtype}")
    return images


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel; ``x: (B, C, H, W)``, mean/std: C values, [0, 1] scale."""
    return _normalize(x, mean, std, inplace=False)


def _normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool) -> Tensor:
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values, got {list(mean)} / {list(std)}")
    inv_std = 1.0 / torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1)
    shift = -torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1) * inv_std
    flat, shape = _flat3(x)
    # One pass (x * inv_std + shift) instead of a subtract and a divide.
    out = torch.addcmul(
        shift.expand(shape), flat, inv_std.expand(shape), out=flat if inplace else None
    )
    return out.view(x.shape)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma of ``x: (B, 3, H, W)`` -> ``(B, 1, H, W)`` (torchvision's weights)."""
    _require_rgb(x, "grayscale")
    r, g, b = x.unbind(1)
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _require_rgb(x: Tensor, op: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"augment op {op!r} needs RGB batches (B, 3, H, W), got {tuple(x.shape)}")


def _rand(generator: torch.Generator, shape: Sequence[int], device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device, then moved to ``device``."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)


def _uniform(
    generator: torch.Generator, n: int, bounds: Sequence[float], device: torch.device
) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * _rand(generator, (n,), device)


def _coin(generator: torch.Generator, n: int, p: float, device: torch.device) -> Tensor:
    """(n,) bool, each True with probability ``p`` (exactly never for 0, always for 1)."""
    return _rand(generator, (n,), device) < p


def _use_row_subsets(device: torch.device) -> bool:
    """Compute masked ops on the selected rows only (CPU), or on all rows and select (else)?"""
    return device.type == "cpu"


def _apply_masked(x: Tensor, mask: Tensor, fn: RowsFn, inplace: bool = False) -> Tensor:
    """``fn(rows, index, owned)`` on the samples where ``mask`` holds; others pass unchanged.

    ``index`` selects the per-sample parameters of those rows. On CPU only the selected rows
    are computed and written back (into ``x`` itself when ``inplace``, else into a copy);
    elsewhere all rows are computed and ``torch.where`` picks, which avoids a host sync.
    """
    if _use_row_subsets(x.device):
        index = mask.nonzero().squeeze(1)
        if index.numel() == 0:
            return x
        if index.numel() == x.shape[0]:
            return fn(x, slice(None), inplace)
        out = x if inplace else x.clone()
        return out.index_copy_(0, index, fn(x.index_select(0, index), index, True))
    picked = torch.where(mask.view(-1, 1, 1, 1), fn(x, slice(None), False), x)
    return x.copy_(picked) if inplace else picked


def _flat3(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``(B, C, H, W)`` -> its ``(B, C, H*W)`` view and that shape."""
    shape = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    return x.reshape(shape), shape


# ----------------------------------------------------------------------------- crop and flip


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    params: CropParams,
    generator: torch.Generator,
    attempts: int = 10,
) -> Tensor:
    """Random-resized-crop boxes ``(B, 4)`` as (top, left, box_height, box_width) in pixels.

    torchvision's ``RandomResizedCrop.get_params``, batched: area fraction ~ U(scale), log
    aspect ratio ~ U(log ratio); the first of ``attempts`` candidates that fits is kept, else
    the central crop of the clamped ratio. Boxes are continuous (sub-pixel), which bilinear
    resampling handles directly. Returned on the generator's device.
    """
    device = generator.device
    area = torch.empty(batch, attempts, device=device).uniform_(*params.scale, generator=generator)
    log_lo, log_hi = math.log(params.ratio[0]), math.log(params.ratio[1])
    log_ratio = torch.empty(batch, attempts, device=device).uniform_(
        log_lo, log_hi, generator=generator
    )
    ratio = log_ratio.exp()
    target = area * (height * width)
    box_w, box_h = (target * ratio).sqrt(), (target / ratio).sqrt()
    fits = (box_w <= width) & (box_h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    box_w, box_h = box_w.gather(1, first).squeeze(1), box_h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)

    in_ratio = width / height
    if in_ratio < params.ratio[0]:
        fallback_w, fallback_h = float(width), width / params.ratio[0]
    elif in_ratio > params.ratio[1]:
        fallback_w, fallback_h = height * params.ratio[1], float(height)
    else:
        fallback_w, fallback_h = float(width), float(height)
    box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
    box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
    position = torch.rand(batch, 2, generator=generator, device=device)
    top = torch.where(found, position[:, 0] * (height - box_h), (height - box_h) / 2)
    left = torch.where(found, position[:, 1] * (width - box_w), (width - box_w) / 2)
    return torch.stack([top, left, box_h, box_w], dim=1)


def crop_grid(boxes: Tensor, height: int, width: int, mirror: Tensor | None = None) -> Tensor:
    """``grid_sample`` grid ``(B, H, W, 2)`` that maps each box onto the whole output.

    The ``affine_grid`` of a per-sample scale-and-shift, built from its two separable axes;
    box edges map onto the output's pixel edges (``align_corners=False``), as torchvision's
    resize does. ``mirror (B,)`` bool: those rows sample their box right to left, which is
    exactly a horizontal flip of the crop.
    """
    batch = boxes.shape[0]
    top, left, box_h, box_w = boxes.unbind(1)
    scale_x = box_w / width
    if mirror is not None:
        scale_x = torch.where(mirror, -scale_x, scale_x)
    grid_x = torch.addcmul(
        ((2 * left + box_w) / width - 1).view(-1, 1), scale_x.view(-1, 1), _centres(boxes, width)
    )
    grid_y = torch.addcmul(
        ((2 * top + box_h) / height - 1).view(-1, 1),
        (box_h / height).view(-1, 1),
        _centres(boxes, height),
    )
    return torch.stack(
        [
            grid_x.view(batch, 1, width).expand(batch, height, width),
            grid_y.view(batch, height, 1).expand(batch, height, width),
        ],
        dim=-1,
    )


def _centres(like: Tensor, size: int) -> Tensor:
    """Pixel centres ``(2j + 1 - size) / size`` in [-1, 1]; exactly antisymmetric."""
    steps = torch.arange(size, device=like.device, dtype=like.dtype)
    return (steps * 2 + (1 - size)) / size


def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop box ``boxes[i]`` (top, left, h, w; pixels) of each sample of ``x: (B, C, H, W)``
    and resize it to (H, W): one bilinear ``grid_sample`` for the whole batch."""
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    return _resample(x, crop_grid(boxes, x.shape[2], x.shape[3]))


def _resample(x: Tensor, grid: Tensor) -> Tensor:
    grid = grid.to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _sample_crop(shape: Shape, params: CropParams, generator: torch.Generator, device) -> Draws:
    batch, _, height, width = shape
    boxes = sample_crop_boxes(batch, height, width, params, generator).to(device)
    return {"boxes": boxes, "apply": _coin(generator, batch, params.p, device)}


def _apply_crop(
    x: Tensor,
    draws: Draws,
    params: CropParams,
    inplace: bool = False,
    mirror: Tensor | None = None,
) -> Tensor:
    """Crop; with ``mirror`` (the draws of a flip that follows, crop ``p`` = 1) flip too."""
    grid = crop_grid(draws["boxes"].to(x.dtype), x.shape[2], x.shape[3], mirror)
    return _apply_masked(
        x, draws["apply"], lambda rows, index, owned: _resample(rows, grid[index]), inplace
    )


def _sample_coin(shape: Shape, params: Any, generator: torch.Generator, device) -> Draws:
    return {"apply": _coin(generator, shape[0], params.p, device)}


def _apply_flip(x: Tensor, draws: Draws, params: FlipParams, inplace: bool = False) -> Tensor:
    return _apply_masked(x, draws["apply"], lambda rows, index, owned: rows.flip(-1), inplace)


# ----------------------------------------------------------------------------- colour


def adjust_hue(x: Tensor, shift: Tensor, inplace: bool = False) -> Tensor:
    """Rotate the HSV hue of ``x: (N, 3, H, W)`` by ``shift: (N,)`` turns (torchvision semantics).

    Closed form instead of a full RGB->HSV->RGB round trip: a hue shift keeps each pixel's max
    and min channel, and HSV->RGB with hue ``h`` in sixths of a turn, ``h`` in [0, 6), is
    ``c = max - chroma * ramp_c(h)`` where ``ramp_c = clamp(s_c * |h - a_c| + t_c, 0, 1)``,
    (a, s, t) = (3, -1, 2), (2, 1, -1), (4, 1, -1) for (r, g, b). ``inplace``: write into ``x``.
    """
    _require_rgb(x, "hue")
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    maxc = torch.maximum(maxc, b, out=maxc)
    chroma = torch.minimum(r, g)
    chroma = torch.sub(maxc, torch.minimum(chroma, b, out=chroma), out=chroma)
    inv_chroma = chroma.clamp_min(1e-12).reciprocal_()  # grey pixels: numerators are 0 too
    # Hue in sixths of a turn, as torchvision's _rgb2hsv (ties: red, then green, then blue).
    hue6 = (r - g).mul_(inv_chroma).add_(4.0)
    hue6 = torch.where(maxc == g, (b - r).mul_(inv_chroma).add_(2.0), hue6, out=hue6)
    hue6 = torch.where(maxc == r, (g - b).mul_(inv_chroma), hue6, out=hue6)
    hue6 = hue6.add_((6.0 * shift.to(x.dtype)).view(-1, 1, 1)).remainder_(6.0)
    centre, slope, offset = (
        torch.tensor(values, device=x.device, dtype=x.dtype).view(1, 3, 1)
        for values in ((3.0, 2.0, 4.0), (-1.0, 1.0, 1.0), (2.0, -1.0, -1.0))
    )
    batch = x.shape[0]
    flat, shape = _flat3(x)
    ramp = torch.sub(hue6.view(batch, 1, -1), centre).abs_()
    ramp = torch.addcmul(offset.expand(shape), ramp, slope.expand(shape), out=ramp).clamp_(0, 1)
    out = torch.addcmul(
        maxc.view(batch, 1, -1).expand(shape),
        ramp,
        chroma.view(batch, 1, -1).expand(shape),
        value=-1.0,
        out=flat if inplace else ramp,
    )
    return out.view(x.shape)


def sample_color_params(
    batch: int, params: ColorParams, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample draws of the colour distortion of strength ``s`` (the paper's Appendix A).

    Returns ``factors (B, 4)`` (brightness, contrast, saturation ~ U[max(0, 1-0.8s), 1+0.8s],
    hue ~ U[-0.2s, 0.2s]), ``order (B, 4)`` (a random permutation of the four per sample),
    ``jitter (B,)`` (jitter applied, probability ``p``) and ``gray (B,)`` (grayscale after,
    probability ``grayscale_p``).
    """
    strength = params.strength
    jitter_amount = 0.8 * strength
    hue_amount = min(0.2 * strength, 0.5)  # hue is periodic: 0.5 already spans the circle
    lows = torch.tensor([max(0.0, 1.0 - jitter_amount)] * 3 + [-hue_amount])
    highs = torch.tensor([1.0 + jitter_amount] * 3 + [hue_amount])
    lows, highs = lows.to(generator.device), highs.to(generator.device)
    factors = lows + (highs - lows) * torch.rand(
        batch, 4, generator=generator, device=generator.device
    )
    order = torch.rand(batch, 4, generator=generator, device=generator.device).argsort(dim=1)
    jitter = _coin(generator, batch, params.p, device)
    gray = _coin(generator, batch, params.grayscale_p, device)
    return factors.to(device), order.to(device), jitter, gray


def jitter_rounds(factors: Tensor, order: Tensor, jitter: Tensor) -> dict[str, Tensor]:
    """Per-sample coefficients of the jitter, as three blend rounds and four hue slots.

    Each sample runs its three blends (brightness: with black, contrast: with the mean luma,
    saturation: with the luma image) in its order, each as ``clamp(scale * rgb + to_gray *
    luma + contrast * mean_luma, 0, 1)``: columns of ``scale``, ``to_gray``, ``contrast``
    ``(B, 3)``. Its hue shift ``hue (B,)`` runs before blend ``hue_slot (B,)`` (3: after the
    last; -1: no jitter). Samples without jitter get identity blends.
    """
    batch = order.shape[0]
    is_hue = order == HUE
    hue_slot = is_hue.to(torch.int64).argmax(dim=1)
    blend_ops = order[~is_hue].view(batch, 3)  # the order without hue
    blends = factors.gather(1, blend_ops)
    active = jitter.view(-1, 1)
    zero = torch.zeros_like(blends)
    return {
        "scale": torch.where(active, blends, torch.ones_like(blends)),
        "to_gray": torch.where(active & (blend_ops == SATURATION), 1.0 - blends, zero),
        "contrast": torch.where(active & (blend_ops == CONTRAST), 1.0 - blends, zero),
        "hue": factors[:, HUE],
        "hue_slot": torch.where(jitter, hue_slot, -1),
    }


def apply_jitter_rounds(x: Tensor, rounds: dict[str, Tensor], inplace: bool = False) -> Tensor:
    """Run the jitter of :func:`jitter_rounds` on ``x: (B, 3, H, W)`` (into ``x`` if inplace).

    A blend round is a few passes over the whole batch, whichever blend each sample runs;
    a hue slot runs only on the samples whose hue falls there.
    """
    _require_rgb(x, "color")
    batch = x.shape[0]
    luma_weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    luma = torch.empty((batch, 1, x.shape[2] * x.shape[3]), device=x.device, dtype=x.dtype)
    shift = rounds["hue"]
    out, owned = x, inplace
    for step in range(4):
        hue = _apply_masked(
            out,
            rounds["hue_slot"] == step,
            lambda rows, index, owned: adjust_hue(rows, shift[index], owned),
            inplace=owned,
        )
        out, owned = hue, owned or hue is not out
        if step == 3:
            break
        source, shape = _flat3(out)
        torch.matmul(luma_weights, source, out=luma.view(batch, -1))
        bias = rounds["contrast"][:, step].to(x.dtype) * luma.mean(dim=(1, 2))
        to_gray = rounds["to_gray"][:, step].to(x.dtype).view(-1, 1, 1)
        offset = torch.addcmul(bias.view(-1, 1, 1).expand_as(luma), luma, to_gray, out=luma)
        scale = rounds["scale"][:, step].to(x.dtype).view(-1, 1, 1).expand(shape)
        target = source if owned else torch.empty_like(source)
        # Explicitly expanded operands: broadcasting over two middle dims is slow on CPU.
        torch.addcmul(offset.expand(shape), source, scale, out=target).clamp_(0.0, 1.0)
        out, owned = target.view(x.shape), True
    return out


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, jitter: Tensor) -> Tensor:
    """torchvision's ``ColorJitter`` on a batch, each sample with its own factors and order.

    ``x: (B, 3, H, W)``; ``factors``/``order``: see :func:`sample_color_params`; samples whose
    ``jitter`` is False pass unchanged. Sample i runs brightness, contrast, saturation and hue
    in the order ``order[i]``, clamping to [0, 1] after each (torchvision's tensor semantics);
    batched as three blend rounds with the hue in between (:func:`jitter_rounds`).
    """
    return apply_jitter_rounds(x, jitter_rounds(factors, order, jitter))


def _grayscale3(rows: Tensor) -> Tensor:
    return rgb_to_grayscale(rows).expand(-1, 3, -1, -1).contiguous()


def _sample_color(shape: Shape, params: ColorParams, generator: torch.Generator, device) -> Draws:
    factors, order, jitter, gray = sample_color_params(shape[0], params, generator, device)
    return {**jitter_rounds(factors, order, jitter), "gray": gray}


def _apply_color(x: Tensor, draws: Draws, params: ColorParams, inplace: bool = False) -> Tensor:
    out = apply_jitter_rounds(x, draws, inplace)
    return _apply_masked(out, draws["gray"], lambda rows, index, owned: _grayscale3(rows), True)


def _apply_grayscale(
    x: Tensor, draws: Draws, params: GrayscaleParams, inplace: bool = False
) -> Tensor:
    _require_rgb(x, "grayscale")
    return _apply_masked(x, draws["apply"], lambda rows, index, owned: _grayscale3(rows), inplace)


# ----------------------------------------------------------------------------- blur


def blur_kernel_size(side: int, fraction: float) -> int:
    """Odd kernel size, ``fraction`` of the image side, at least 3 (23 for 224, 3 for 32)."""
    size = int(fraction * side)
    size = size if size % 2 else size + 1
    return max(3, size)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """Normalised 1-D gaussian kernels ``(B, size)`` for ``sigma: (B,)``."""
    taps = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - (size - 1) / 2
    kernels = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Separable gaussian blur of ``x: (B, C, H, W)``, per-sample ``sigma: (B,)``, odd ``size``.

    Reflect padding as torchvision's ``gaussian_blur``. Small kernels on CPU run as shifted
    multiply-adds over symmetric tap pairs (depthwise convolution is slow there); otherwise
    the per-sample kernels run as one grouped convolution per axis over the ``B * C`` planes.
    """
    return _blur(x, gaussian_kernels(sigma.to(x.dtype), size))


def _blur(x: Tensor, kernels: Tensor, grouped_conv: bool | None = None) -> Tensor:
    batch, channels, height, width = x.shape
    size = kernels.shape[1]
    pad = size // 2
    if size % 2 == 0 or pad >= min(height, width):
        raise ValueError(
            f"blur kernel size must be odd and < the side, got {size} for {height}x{width}"
        )
    kernels = kernels.to(x.dtype)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if grouped_conv is None:
        grouped_conv = x.device.type != "cpu" or size > 7
    if not grouped_conv:
        return _blur_shifted(padded, kernels, height, width)
    groups = batch * channels
    planes = padded.reshape(1, groups, height + 2 * pad, width + 2 * pad)
    weight = kernels.repeat_interleave(channels, dim=0)
    planes = F.conv2d(planes, weight.view(groups, 1, 1, size), groups=groups)
    planes = F.conv2d(planes, weight.view(groups, 1, size, 1), groups=groups)
    return planes.view(batch, channels, height, width)


def _blur_shifted(padded: Tensor, kernels: Tensor, height: int, width: int) -> Tensor:
    """Both blur passes of :func:`_blur` as multiply-adds of shifted views.

    ``kernels: (B, size)`` symmetric, so tap pairs ``(pad - j, pad + j)`` share a weight.
    """
    pad = kernels.shape[1] // 2
    weights = kernels.view(-1, 1, 1, 1, kernels.shape[1])
    rows = padded[..., pad + 1 : pad + 1 + width] + padded[..., pad - 1 : pad - 1 + width]
    rows.mul_(weights[..., pad + 1])
    pair = torch.empty_like(rows) if pad > 1 else None
    for j in range(2, pad + 1):
        torch.add(
            padded[..., pad - j : pad - j + width], padded[..., pad + j : pad + j + width], out=pair
        )
        rows.addcmul_(pair, weights[..., pad + j])
    rows.addcmul_(padded[..., pad : pad + width], weights[..., pad])
    out = rows[..., pad + 1 : pad + 1 + height, :] + rows[..., pad - 1 : pad - 1 + height, :]
    out.mul_(weights[..., pad + 1])
    for j in range(2, pad + 1):
        pair = rows[..., pad - j : pad - j + height, :] + rows[..., pad + j : pad + j + height, :]
        out.addcmul_(pair, weights[..., pad + j])
    return out.addcmul_(rows[..., pad : pad + height, :], weights[..., pad])


def _sample_blur(shape: Shape, params: BlurParams, generator: torch.Generator, device) -> Draws:
    sigma = _uniform(generator, shape[0], params.sigma, device)
    size = blur_kernel_size(min(shape[2], shape[3]), params.kernel_fraction)
    return {
        "kernels": gaussian_kernels(sigma, size),
        "apply": _coin(generator, shape[0], params.p, device),
    }


def _apply_blur(x: Tensor, draws: Draws, params: BlurParams, inplace: bool = False) -> Tensor:
    kernels = draws["kernels"]
    return _apply_masked(
        x, draws["apply"], lambda rows, index, owned: _blur(rows, kernels[index]), inplace
    )


# ----------------------------------------------------------------------------- the rest


def _sample_cutout(shape: Shape, params: CutoutParams, generator: torch.Generator, device) -> Draws:
    batch, _, height, width = shape
    fraction = _uniform(generator, batch, params.size, device)
    position = _rand(generator, (batch, 2), device)
    applied = _coin(generator, batch, params.p, device).view(-1, 1)
    side_h = (fraction * height).round().clamp(1, height).view(-1, 1)
    side_w = (fraction * width).round().clamp(1, width).view(-1, 1)
    top = (position[:, :1] * (height - side_h + 1)).floor()
    left = (position[:, 1:] * (width - side_w + 1)).floor()
    rows = torch.arange(height, device=device).view(1, -1)
    cols = torch.arange(width, device=device).view(1, -1)
    in_rows = (rows >= top) & (rows < top + side_h) & applied
    in_cols = (cols >= left) & (cols < left + side_w)
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))
    return {"keep": keep.view(batch, 1, height * width).to(torch.float32)}


def _apply_cutout(x: Tensor, draws: Draws, params: CutoutParams, inplace: bool = False) -> Tensor:
    flat, shape = _flat3(x)
    keep = draws["keep"].to(x.dtype).expand(shape)
    return torch.mul(flat, keep, out=flat if inplace else None).view(x.shape)


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luma, scaled by its per-sample max, copied to C channels.

    ``x: (B, C, H, W)`` -> same shape in [0, 1]. Replicate padding and a separable
    difference-then-smooth form make a constant image exactly zero.
    """
    channels = x.shape[1]
    gray = rgb_to_grayscale(x) if channels == 3 else x.mean(dim=1, keepdim=True)
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    dx = padded[..., :, 2:] - padded[..., :, :-2]
    dy = padded[..., 2:, :] - padded[..., :-2, :]
    grad_x = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    grad_y = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    magnitude = torch.hypot(grad_x, grad_y)
    magnitude = magnitude / magnitude.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return magnitude.expand(-1, channels, -1, -1).contiguous()


def _apply_sobel(x: Tensor, draws: Draws, params: SobelParams, inplace: bool = False) -> Tensor:
    return _apply_masked(
        x, draws["apply"], lambda rows, index, owned: sobel_magnitude(rows), inplace
    )


def _sample_noise(shape: Shape, params: NoiseParams, generator: torch.Generator, device) -> Draws:
    std = _uniform(generator, shape[0], params.std, device)
    applied = _coin(generator, shape[0], params.p, device)
    gauss = torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    return {"std": std * applied, "noise": gauss}


def _apply_noise(x: Tensor, draws: Draws, params: NoiseParams, inplace: bool = False) -> Tensor:
    flat, shape = _flat3(x)
    std = draws["std"].to(x.dtype).view(-1, 1, 1).expand(shape)
    noisy = torch.addcmul(
        flat, draws["noise"].to(x.dtype).reshape(shape), std, out=flat if inplace else None
    )
    return noisy.clamp_(0.0, 1.0).view(x.shape)


def _sample_rotate(shape: Shape, params: RotateParams, generator: torch.Generator, device) -> Draws:
    batch, _, height, width = shape
    quarters = [(angle // 90) % 4 for angle in params.angles]
    if height != width and any(q % 2 for q in quarters):
        raise ValueError(
            f"augment.rotate: 90/270-degree rotations need square images, got {height}x{width}; "
            "set augment.rotate.angles to [180]"
        )
    choice = torch.randint(len(quarters), (batch,), generator=generator, device=generator.device)
    turns = torch.tensor(quarters, device=generator.device)[choice].to(device)
    applied = _coin(generator, batch, params.p, device)
    return {"turns": turns * applied}


def _apply_rotate(x: Tensor, draws: Draws, params: RotateParams, inplace: bool = False) -> Tensor:
    out = x
    for quarter in (1, 2, 3):
        out = _apply_masked(
            out,
            draws["turns"] == quarter,
            lambda rows, index, owned, q=quarter: torch.rot90(rows, q, dims=(-2, -1)).contiguous(),
            inplace=inplace or out is not x,
        )
    return out


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AugmentOp:
    """A batched op in two halves: ``sample`` draws per-sample parameters, ``apply`` uses them.

    ``sample(shape, params, generator, device) -> draws``: a dict of tensors on ``device``,
    each with the batch as its first dimension, so any slice of the rows can be applied on its
    own. ``apply(x, draws, params, inplace=False)`` is deterministic; with ``inplace`` it may
    overwrite ``x``. Calling the op, ``op(x, generator, params=None)``, samples then applies,
    leaving ``x`` untouched (``params`` default: the config's defaults).
    """

    name: str
    sample: Callable[[Shape, Any, torch.Generator, torch.device], Draws]
    apply: Callable[..., Tensor]
    params_type: type

    def __call__(self, x: Tensor, generator: torch.Generator, params: Any = None) -> Tensor:
        params = self.params_type() if params is None else params
        return self.apply(x, self.sample(tuple(x.shape), params, generator, x.device), params)


crop = AugmentOp("crop", _sample_crop, _apply_crop, CropParams)
flip = AugmentOp("flip", _sample_coin, _apply_flip, FlipParams)
color = AugmentOp("color", _sample_color, _apply_color, ColorParams)
grayscale = AugmentOp("grayscale", _sample_coin, _apply_grayscale, GrayscaleParams)
cutout = AugmentOp("cutout", _sample_cutout, _apply_cutout, CutoutParams)
sobel = AugmentOp("sobel", _sample_coin, _apply_sobel, SobelParams)
noise = AugmentOp("noise", _sample_noise, _apply_noise, NoiseParams)
blur = AugmentOp("blur", _sample_blur, _apply_blur, BlurParams)
rotate = AugmentOp("rotate", _sample_rotate, _apply_rotate, RotateParams)


def as_augment_op(name: str, op: Any, params_type: type | None) -> AugmentOp:
    """``op`` as an :class:`AugmentOp`: itself if it is one, else a plain batched op
    ``op(x, generator, params) -> y`` (the plugin form of :mod:`ablate.ops`) in two halves.

    ``sample`` draws one 62-bit seed per row from the pipeline's generator (on the CPU, where
    ``apply`` reads it); ``apply`` calls ``op`` on the rows it is given with a fresh generator
    on ``x``'s device seeded from the first row's seed, so a run is reproducible and the op's
    draws follow the pipeline's seed. Raises ``ValueError`` naming the op when it returns
    anything but a tensor of ``x``'s shape.
    """
    if isinstance(op, AugmentOp):
        return op

    def sample(shape: Shape, params: Any, generator: torch.Generator, device) -> Draws:
        seeds = torch.randint(2**62, (shape[0],), generator=generator, device=generator.device)
        return {"seed": seeds.cpu()}

    def apply(x: Tensor, draws: Draws, params: Any, inplace: bool = False) -> Tensor:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(draws["seed"][0]))
        out = op(x, generator, params)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"augmentation op {name} returned {got} for a batch of shape {tuple(x.shape)}; "
                "an op returns a tensor of its input's shape (B, C, H, W)"
            )
        return out

    return AugmentOp(name, sample, apply, params_type or type(None))


# ----------------------------------------------------------------------------- composition


def _rows(draws: Draws, rows: slice) -> Draws:
    return {key: value[rows] for key, value in draws.items()}


def _fuses_with_flip(steps: Sequence[tuple[AugmentOp, Any]], step: int) -> bool:
    """Is ``steps[step]`` a crop applied to every row and directly followed by a flip?"""
    return (
        steps[step][0] is crop
        and steps[step][1].p == 1.0
        and step + 1 < len(steps)
        and steps[step + 1][0] is flip
    )


@dataclass(frozen=True)
class Compose:
    """An ordered list of ops with their params: ``compose(x, generator) -> x``."""

    steps: tuple[tuple[AugmentOp, Any], ...]

    @property
    def names(self) -> list[str]:
        return [op.name for op, _ in self.steps]

    def sample(self, shape: Shape, generator: torch.Generator, device: torch.device) -> list[Draws]:
        """Every op's draws for a batch of ``shape``, in op order."""
        return [op.sample(shape, params, generator, device) for op, params in self.steps]

    def apply(
        self, x: Tensor, draws: Sequence[Draws], rows: slice = slice(None), inplace: bool = False
    ) -> Tensor:
        """Apply the ops to ``x``, the rows ``rows`` of the batch that ``draws`` were made for.

        ``inplace``: ``x`` may be overwritten. Either way, once an op has returned a new
        tensor, the ops after it work in place on it.
        """
        owned, step = inplace, 0
        while step < len(self.steps):
            (op, params), op_draws = self.steps[step], _rows(draws[step], rows)
            if _fuses_with_flip(self.steps, step):
                # crop then flip: one resampling with the flipped rows' grids mirrored.
                mirror = _rows(draws[step + 1], rows)["apply"]
                out = _apply_crop(x, op_draws, params, owned, mirror=mirror)
                step += 1
            else:
                out = op.apply(x, op_draws, params, owned)
            owned = owned or out is not x
            x, step = out, step + 1
        return x

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Sample and apply every op; ``x`` itself is left untouched."""
        return self.apply(x, self.sample(tuple(x.shape), generator, x.device))


def build_ops(names: Sequence[str], cfg: AugmentConfig | None = None) -> Compose:
    """The ops ``names`` in order, each with its params from ``cfg`` (defaults if None).

    A built-in op's params are its section ``cfg.<name>``; a plugin op's are
    ``cfg.params[name]`` validated by its ``params_model``. Raises ``ValueError`` naming the
    op, its position and the valid names for an unknown op (and what the registry raises for a
    plugin that does not import or fit).
    """
    cfg = cfg or AugmentConfig()
    steps = []
    for position, name in enumerate(names):
        try:
            entry = op_registry.OPS.get(name)
        except UnknownComponentError as error:
            raise ValueError(
                f"{error} (at position {position} of {list(names)}; presets, expanded by "
                f"AugmentConfig: {', '.join(AUGMENTATION_PRESETS)})"
            ) from None
        section = entry.meta.get("section")
        model = entry.meta.get("params")
        if section is not None:
            params = getattr(cfg, section)
        elif model is not None:
            params = model.model_validate(cfg.params.get(name, {}))
        else:
            params = None
        steps.append((as_augment_op(name, op_registry.load(name), model), params))
    return Compose(tuple(steps))


#: CPU only: the rows of a batch run in chunks of about this many bytes (float32), so that
#: temporaries are small: they stay in cache and are recycled by malloc instead of being
#: returned to the OS and page-faulted in again on every call.
CPU_CHUNK_BYTES = 3 * 1024 * 1024


def _chunk_rows(shape: Shape, device: torch.device) -> int:
    """Rows per chunk: cache-sized on CPU, the whole batch elsewhere."""
    if device.type != "cpu":
        return max(1, shape[0])
    return max(1, CPU_CHUNK_BYTES // (4 * math.prod(shape[1:])))


@dataclass(frozen=True)
class TwoViewAugment:
    """Two augmented views of a batch: ``views(images (B, C, H, W), generator) -> (v1, v2)``.

    ``images`` uint8 in [0, 255] or float in [0, 1] (left untouched); the views are float,
    normalised with ``mean``/``std`` when those are set, on the images' device, and are the two
    halves of one ``(2B, C, H, W)`` buffer (row i and row B + i: image i). ``symmetric``: both
    views are ``base + ops`` with independent draws; ``asymmetric``: the first view is
    ``base + ops``, the second only ``base``. All draws are made up front for the whole batch;
    on CPU the rows then run in cache-sized chunks (same results up to float rounding).
    """

    base: Compose
    ops: Compose
    mode: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if images.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        batch = images.shape[0]
        dtype = images.dtype if images.is_floating_point() else torch.float32
        both = torch.empty((2 * batch, *images.shape[1:]), dtype=dtype, device=images.device)
        if images.dtype == torch.uint8:
            torch.div(images, 255.0, out=both[:batch])
        else:
            both[:batch] = to_float(images)
        both[batch:] = both[:batch]
        shape = tuple(both.shape)
        # Draw order: base for both views, then ops (for both views, or the first only).
        base_draws = self.base.sample(shape, generator, both.device)
        with_ops = 2 * batch if self.mode == "symmetric" else batch
        ops_draws = self.ops.sample((with_ops, *shape[1:]), generator, both.device)
        step = _chunk_rows(shape, both.device)
        # Asymmetric: a chunk never straddles the two views.
        spans = [(0, 2 * batch)] if self.mode == "symmetric" else [(0, batch), (batch, 2 * batch)]
        for start, stop in spans:
            for first in range(start, stop, step):
                rows = slice(first, min(first + step, stop))
                chunk = both[rows]
                out = self.base.apply(chunk, base_draws, rows, inplace=True)
                if rows.stop <= with_ops:
                    out = self.ops.apply(out, ops_draws, rows, inplace=True)
                if self.mean is not None and self.std is not None:
                    out = _normalize(out, self.mean, self.std, inplace=True)
                if out is not chunk:
                    chunk.copy_(out)
        return both[:batch], both[batch:]


def build_pipeline(
    cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float]
) -> TwoViewAugment:
    """The two-view pipeline of ``cfg``; normalises with ``mean``/``std`` if ``cfg.normalize``."""
    return TwoViewAugment(
        base=build_ops(cfg.base, cfg),
        ops=build_ops(cfg.ops, cfg),
        mode=cfg.mode,
        mean=tuple(mean) if cfg.normalize else None,
        std=tuple(std) if cfg.normalize else None,
    )


# ----------------------------------------------------------------------------- preview


def save_view_grid(
    rows: Sequence[Tensor],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid: one row per ``(N, C, H, W)`` float [0, 1] batch, N images each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = rows[0].shape[0]
    margin = 0.0 if labels is None else 0.09 * max(len(label) for label in labels) + 0.3
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.2 * count + margin, 1.2 * len(rows) + 0.5), squeeze=False
    )
    for r, batch in enumerate(rows):
        images = batch.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        for c in range(count):
            ax = axes[r][c]
            image = images[c, :, :, 0] if images.shape[-1] == 1 else images[c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and labels is not None:
                ax.set_ylabel(labels[r], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
