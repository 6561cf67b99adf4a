"""A small Vision Transformer encoder (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words",
arXiv:2010.11929), the second encoder family of ``model.arch`` (``vit_tiny``).

The image is cut into ``patch_size`` x ``patch_size`` patches, each linearly embedded to
``dim`` (a strided convolution); a learned [CLS] token is prepended, position embeddings are
added, and ``depth`` pre-norm Transformer blocks (multi-head self-attention with ``heads``
heads, then an MLP of ``mlp_ratio * dim`` with GELU; each with a residual) run over the
tokens; a final LayerNorm, then ``h`` is the [CLS] token (``pool: cls``, the paper's) or the
mean of the patch tokens (``pool: mean``). ``feat_dim = dim``.

Position embeddings are the fixed 2-D sine-cosine ones of MoCo v3 (Chen, Xie and He, 2021,
arXiv:2104.02057), which found them as good as learned ones for self-supervised ViTs; being
computed for whatever grid the input makes, they let one encoder take any image side that
``patch_size`` divides, so the encoder is built without knowing the dataset. The defaults
(dim 192, depth 12, 3 heads, MLP ratio 4) are ViT-Ti (Touvron et al., 2021, DeiT), with 4-px
patches for 32-px images (an 8 x 8 grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import ViTConfig


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(grid_h * grid_w, dim)``, row-major.

    Half the channels encode the row, half the column; each half is sin and cos of the
    position at ``dim / 4`` frequencies ``1 / 10000 ** (k / (dim / 4))``. ``dim`` must be a
    multiple of 4 (``ValueError`` otherwise).
    """
    if dim % 4:
        raise ValueError(f"model.vit.dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for position in (rows.reshape(-1), cols.reshape(-1)):
        angles = position[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    ``x: (N, T, dim) -> (N, T, dim)``; attention is ``F.scaled_dot_product_attention`` over
    ``heads`` heads of ``dim / heads`` channels.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, dim / heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT encoder f: ``images (N, 3, H, W) -> h (N, feat_dim)`` with ``feat_dim = dim``.

    ``H`` and ``W`` must be multiples of ``patch_size`` (``ValueError`` naming
    ``model.vit.patch_size`` otherwise); any such size works with the same weights.
    """

    def __init__(
        self,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.vit.dim={dim} must be a multiple of model.vit.heads={heads}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"model.vit.pool={pool!r} is not one of 'cls', 'mean'")
        self.patch_size, self.dim, self.pool = patch_size, dim, pool
        self.feat_dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._position: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        sincos_position_embedding(1, 1, dim)  # a dim that is no multiple of 4 fails here
        # Initialisation of the ViT/MAE reference code: the patch projection like a Linear,
        # truncated-normal Linear weights and [CLS] token.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def _position_embedding(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        key = (grid_h, grid_w, like.device, like.dtype)
        if key not in self._position:
            table = sincos_position_embedding(grid_h, grid_w, self.dim)
            self._position[key] = table.to(device=like.device, dtype=like.dtype)
        return self._position[key]

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"model.vit.patch_size={self.patch_size} must divide the image side, got "
                f"{height}x{width} images (set data.image_size or another patch size)"
            )
        patches = self.patch_embed(images)  # (N, dim, H / p, W / p)
        grid_h, grid_w = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)  # (N, T, dim)
        tokens = tokens + self._position_embedding(grid_h, grid_w, tokens)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = self.norm(self.blocks(torch.cat([cls, tokens], dim=1)))
        return x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)


def build_vit(cfg: ViTConfig) -> ViTEncoder:
    """The ViT of the ``model.vit`` section."""
    return ViTEncoder(cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.pool)
