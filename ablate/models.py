"""SimCLR's network: an encoder f(.) and a projection head g(.) (Chen et al., 2020).

The encoder is the one ``model.arch`` names in :data:`ablate.encoders.ENCODERS`: the ResNets
defined here, the ViT of :mod:`ablate.vit`, or a user's ``module.path:factory``.

``h = f(x)`` is the representation (the pooled features before the classifier, which is
removed) and ``z = g(h)`` is what the contrastive loss sees. The head is the axis of the paper's
Figure 8: ``none`` (z = h), ``linear`` and ``nonlinear`` (one hidden layer with BatchNorm/ReLU).

The encoders are torchvision's ResNet-18/34/50 built from torchvision's own ``BasicBlock`` and
``Bottleneck`` with every stage width scaled by ``width / 64`` (torchvision's ``ResNet`` class
hard-codes 64 and its ``width_per_group`` only widens a bottleneck's inner convolutions), so
``width=64`` is exactly torchvision's architecture, with identical parameter names, and loads
its ImageNet weights.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from ablate.config import ModelConfig
from ablate.encoders import ENCODERS, check_instance

#: arch -> (block, blocks per stage, torchvision ImageNet weights).
RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], WeightsEnum]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (BasicBlock, (3, 4, 6, 3), ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (Bottleneck, (3, 4, 6, 3), ResNet50_Weights.IMAGENET1K_V1),
}
TORCHVISION_WIDTH = 64


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier: ``(B, 3, H, W) -> h (B, feat_dim)``.

    Args:
        block: torchvision's ``BasicBlock`` or ``Bottleneck``.
        layers: blocks in each of the four stages, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        width: channels of the first stage (torchvision: 64); stage k has ``width * 2**k``
            planes, so ``feat_dim = 8 * width * block.expansion`` (512 or 2048 at width 64).
        stem: ``imagenet`` is torchvision's 7x7 stride-2 conv1 followed by a 3x3 stride-2
            max-pool; ``cifar`` is a 3x3 stride-1 conv1 with no max-pool (the paper's CIFAR-10
            appendix B.9), which keeps 32x32 inputs at 32x32 into the first stage.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        width: int = TORCHVISION_WIDTH,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"model.stem={stem!r} is not one of 'cifar', 'imagenet'")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feat_dim = 8 * width * block.expansion

        # torchvision's initialisation
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                conv1x1(self._inplanes, out_planes, stride), nn.BatchNorm2d(out_planes)
            )
        # base_width stays 64: a bottleneck's inner width is then `planes`, already scaled.
        stage = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = out_planes
        stage += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of ``arch`` from the torch hub cache (or downloaded)."""
    weights = RESNETS[arch][2]
    hub_checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(hub_checkpoints, os.path.basename(weights.url))
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # offline, proxy, disk, hash: one message that says what to do
        problem = (
            f"are in {cached} but could not be loaded"
            if os.path.exists(cached)
            else f"are missing: looked for {cached}"
        )
        raise RuntimeError(
            f"model.pretrained=true: torchvision's ImageNet weights for {arch} ({weights}) "
            f"{problem} (the torch hub cache, $TORCH_HOME/hub/checkpoints; "
            f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}) and fetching {weights.url} "
            f"failed ({type(error).__name__}: {error}). "
            f"Copy that file to {cached}, or set model.pretrained=false."
        ) from None


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder f that ``cfg.arch`` names in :data:`ablate.encoders.ENCODERS` (a built-in or
    a plugin's ``module.path:factory``): an ``nn.Module`` mapping ``(B, 3, H, W)`` to h
    ``(B, feat_dim)``, with ``.feat_dim`` set (the :class:`ablate.encoders.Encoder` protocol).

    Raises ``UnknownComponentError`` / ``PluginImportError`` for a name the registry does not
    resolve and ``TypeError`` when a plugin's factory builds no encoder.
    """
    encoder = ENCODERS.get(cfg.arch).component(cfg)
    check_instance(f"model.arch={cfg.arch}", encoder)
    return encoder


def build_resnet(cfg: ModelConfig, arch: str | None = None) -> ResNetEncoder:
    """The ResNet ``arch`` (default ``cfg.arch``) at ``cfg.width`` with ``cfg.stem``.

    ``pretrained`` loads torchvision's ImageNet weights (width 64 only). With the ``cifar``
    stem, conv1 has a 3x3 kernel that has no ImageNet counterpart: it keeps its random
    initialisation and every other layer is loaded.
    """
    arch = arch or cfg.arch
    if arch not in RESNETS:
        raise ValueError(f"model.arch={arch!r} is not one of {sorted(RESNETS)}")
    if cfg.pretrained and cfg.width != TORCHVISION_WIDTH:
        raise ValueError(
            f"model.pretrained=true needs model.width={TORCHVISION_WIDTH} (torchvision's "
            f"ImageNet weights), got model.width={cfg.width}"
        )
    block, layers, _ = RESNETS[arch]
    encoder = ResNetEncoder(block, layers, width=cfg.width, stem=cfg.stem)
    if cfg.pretrained:
        state = {k: v for k, v in _imagenet_state_dict(arch).items() if not k.startswith("fc.")}
        if cfg.stem == "cifar":
            del state["conv1.weight"]
            warnings.warn(
                "model.pretrained with model.stem='cifar': conv1 (3x3) is randomly initialised; "
                "the rest of the encoder is loaded from ImageNet weights",
                stacklevel=2,
            )
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"conv1.weight"}:
            raise RuntimeError(
                f"{arch} ImageNet weights do not match the encoder: missing {missing}, "
                f"unexpected {unexpected}"
            )
    return encoder


class ProjectionHead(nn.Module):
    """The projection head g: ``h (B, in_dim) -> z (B, out_dim)`` (the paper's Figure 8).

    ``none``: ``z = h`` (the very same tensor; ``out_dim = in_dim``). ``linear``: one Linear.
    ``nonlinear``: Linear -> BatchNorm1d -> ReLU -> Linear, hidden width ``hidden_dim`` (the
    paper: the width of h). The first Linear has no bias since BatchNorm follows it.
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.kind = kind
        if kind == "none":
            self.layers: nn.Module = nn.Identity()
            self.out_dim = in_dim
        elif kind == "linear":
            self.layers = nn.Linear(in_dim, out_dim)
            self.out_dim = out_dim
        elif kind == "nonlinear":
            hidden = hidden_dim or in_dim
            self.layers = nn.Sequential(
                nn.Linear(in_dim, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, out_dim),
            )
            self.out_dim = out_dim
        else:
            raise ValueError(f"model.head={kind!r} is not one of 'none', 'linear', 'nonlinear'")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


def build_head(cfg: ModelConfig, feat_dim: int) -> ProjectionHead:
    """The projection head of ``cfg`` on top of an encoder whose h has ``feat_dim`` features."""
    return ProjectionHead(cfg.head, feat_dim, cfg.out_dim, cfg.hidden_dim)


class SimCLRModel(nn.Module):
    """Encoder plus head: ``forward(x (B, 3, H, W)) -> (h (B, feat_dim), z (B, head.out_dim))``."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


def build_model(cfg: ModelConfig) -> SimCLRModel:
    """``SimCLRModel(build_encoder(cfg), build_head(cfg, encoder.feat_dim))``."""
    encoder = build_encoder(cfg)
    return SimCLRModel(encoder, build_head(cfg, encoder.feat_dim))


def convert_sync_batchnorm(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Global BatchNorm statistics across workers when ``cfg.sync_batchnorm`` (paper, Sec. 2.2).

    Call it after moving the model to its device and after torch.distributed is initialised.
    With one worker (or none) synchronising changes nothing, so the model is returned as is.
    torch's SyncBatchNorm runs on accelerators only: on CPU workers this is an error.
    """
    if not cfg.sync_batchnorm:
        return model
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cpu":
        raise ValueError(
            "model.sync_batchnorm=true needs GPU workers (torch's SyncBatchNorm has no CPU "
            f"implementation) but the model is on {device} with "
            f"{dist.get_world_size()} workers: set resources.gpus_per_worker > 0 or "
            "model.sync_batchnorm=false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
