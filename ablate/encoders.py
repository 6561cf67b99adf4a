"""Encoders by name: the registry of the ``model.arch`` axis, and the :class:`Encoder` protocol.

Each entry is a factory ``factory(cfg: ModelConfig) -> Encoder``: a ``torch.nn.Module`` that
maps images ``(N, 3, H, W)`` (normalised floats) to features ``h (N, feat_dim)`` and declares
``feat_dim``, the width of ``h`` that the projection head, the kNN monitor and the probes are
built on. The built-ins are the ResNets of :mod:`ablate.models` and the small Vision
Transformer of :mod:`ablate.vit`; they import their implementation when called, so that this
module, and the trial-config schema that validates ``model.arch`` against it, import no torch.

A user's encoder is named ``module.path:factory``; ``factory`` receives the whole ``model``
section and returns an ``nn.Module`` that satisfies :class:`Encoder`. Preflight builds it once
and runs a two-image batch through it (:func:`check_instance`).

Entry meta: ``pretrained`` (torchvision ImageNet weights exist for it), ``knobs`` (the
``model.*`` keys it reads besides the head's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ablate.registry import Entry, Registry

if TYPE_CHECKING:
    from torch import Tensor

    from ablate.config import ModelConfig


@runtime_checkable
class Encoder(Protocol):
    """What every encoder is: ``forward(images (N, 3, H, W)) -> h (N, feat_dim)``."""

    feat_dim: int

    def forward(self, images: Tensor) -> Tensor: ...


def check_instance(name: str, encoder: Any, images: Tensor | None = None) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``encoder`` is an ``nn.Module`` satisfying
    :class:`Encoder` (a positive int ``feat_dim``) and, when ``images (N, 3, H, W)`` are given,
    its output on them is ``(N, feat_dim)``."""
    from torch import nn

    if not isinstance(encoder, nn.Module) or not isinstance(encoder, Encoder):
        raise TypeError(
            f"{name} built {type(encoder).__name__}, not an encoder: it must return a "
            "torch.nn.Module with an int attribute feat_dim whose forward maps images "
            "(N, 3, H, W) to features (N, feat_dim)"
        )
    feat_dim = encoder.feat_dim
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
        raise TypeError(f"{name}: feat_dim must be a positive int, got {feat_dim!r}")
    if images is None:
        return
    out = encoder(images)
    expected = (images.shape[0], feat_dim)
    if not hasattr(out, "shape") or tuple(out.shape) != expected:
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise TypeError(
            f"{name}: forward of images {tuple(images.shape)} returned {got}, expected "
            f"(N, feat_dim) = {expected}"
        )


def _check_plugin(name: str, component: Any) -> Entry[Any]:
    """A plugin encoder must be a callable factory ``factory(cfg: ModelConfig) -> Encoder``."""
    if not callable(component):
        raise TypeError(
            f"{name} is {type(component).__name__} {component!r}, not an encoder factory: "
            "factory(cfg: ModelConfig) -> nn.Module with feat_dim, (N, 3, H, W) -> (N, feat_dim)"
        )
    description = " ".join(((component.__doc__ or "").strip().split("\n\n") or [""])[0].split())
    return Entry(name, component, description, {"pretrained": False, "knobs": ()}, plugin=True)


ENCODERS: Registry[Any] = Registry("encoder", "model.arch", check=_check_plugin)


def _resnet(arch: str, depth: int) -> None:
    def factory(cfg: ModelConfig) -> Encoder:
        from ablate.models import build_resnet

        return build_resnet(cfg, arch)

    factory.__name__ = factory.__qualname__ = arch
    ENCODERS.add(
        arch,
        factory,
        f"ResNet-{depth} (He et al., 2016) at base width `model.width`, stem `model.stem`.",
        pretrained=True,
        knobs=("stem", "width", "pretrained"),
    )


for _arch, _depth in (("resnet18", 18), ("resnet34", 34), ("resnet50", 50)):
    _resnet(_arch, _depth)


@ENCODERS.register(
    "vit_tiny",
    "Vision Transformer (Dosovitskiy et al., 2021) sized by `model.vit` (patch, dim, depth, "
    "heads); default ViT-Ti/4 (dim 192, depth 12, 3 heads).",
    pretrained=False,
    knobs=("vit",),
)
def vit_tiny(cfg: ModelConfig) -> Encoder:
    from ablate.vit import build_vit

    return build_vit(cfg.vit)
