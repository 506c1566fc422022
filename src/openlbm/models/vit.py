"""A small Vision Transformer image trunk (CLIP / SigLIP / open_clip compatible layout).

``ViT`` maps normalized float images ``[N, 3, H, W]`` to final-LayerNorm'd tokens ``[N, L, width]``; ``TokenPool``
turns them into one vector per image (the class token or the mean of the patch tokens), which ``VisionEncoder``
projects to the trunk width, so the rest of the model sees the same ``[N, dim]`` contract as with the ResNet.

The learned position embedding is stored for a square ``pos_grid x pos_grid`` patch grid (the grid the weights
were trained at, e.g. 224 px / 16 = 14) and bicubically resized to whatever grid the (cropped) input gives, so
pretrained weights work at the 92%-crop of 128 px camera images. When the grids agree nothing is resized, which
keeps a pretrained model's outputs bit-for-bit comparable with the original implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Preprocessing statistics of the usual checkpoints (the ResNet path uses ImageNet's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of the ViT camera encoder (used when ``VisionConfig.kind == "vit"``)."""

    patch_size: int = 16
    """Side of the square patches (the stride of the patch-embedding convolution); leftover pixels are dropped."""
    width: int = 192
    """Token width of the transformer (ViT-Tiny: 192, ViT-B: 768)."""
    depth: int = 6
    """Number of pre-LN transformer blocks."""
    heads: int = 3
    """Attention heads per block (``width`` must be divisible by it)."""
    mlp_dim: int = 768
    """Hidden width of each block's MLP."""
    pos_grid: int = 8
    """Side of the patch grid the learned position embedding is stored for (resized to the input grid). For
    pretrained weights it must equal theirs: ``image_size // patch_size`` (CLIP ViT-B/16 at 224 px: 14)."""
    cls_token: bool = True
    """Prepend a learned class token (CLIP, open_clip: yes; SigLIP: no)."""
    pool: Literal["cls", "mean"] = "cls"
    """Image vector: the class token (needs ``cls_token``) or the mean of the patch tokens, after the final LN."""
    pre_norm: bool = False
    """LayerNorm on the embedded tokens before the first block (CLIP's ``pre_layrnorm``, open_clip's ``ln_pre``)."""
    patch_bias: bool = True
    """Bias in the patch-embedding convolution (SigLIP: yes; CLIP, open_clip: no)."""
    act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu"
    """MLP activation: ``quick_gelu`` for OpenAI CLIP, ``gelu_tanh`` for SigLIP, ``gelu`` for most open_clip."""
    eps: float = 1e-6
    """LayerNorm epsilon (CLIP: 1e-5, SigLIP: 1e-6)."""
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean subtracted from [0, 1] pixels (CLIP: ``CLIP_MEAN``, SigLIP: 0.5)."""
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel std dividing the pixels (CLIP: ``CLIP_STD``, SigLIP: 0.5)."""

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"vit width {self.width} must be divisible by heads {self.heads}")
        if self.pool == "cls" and not self.cls_token:
            raise ValueError("vit pool='cls' needs cls_token=True (use pool='mean' without a class token)")
        if min(self.patch_size, self.depth, self.pos_grid, self.mlp_dim) < 1:
            raise ValueError(f"vit patch_size/depth/pos_grid/mlp_dim must be >= 1, got {self}")

    def build(self) -> ViT:
        return ViT(self)

    @property
    def num_prefix(self) -> int:
        return int(self.cls_token)


def _act(name: str, x: Tensor) -> Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown vit activation {name!r}; choose gelu, gelu_tanh or quick_gelu")


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v stacked in that order)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, length, w = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, w // self.heads)  # [N, L, 3W] -> [N, L, 3, h, W/h]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [N, L, 3, h, W/h] -> 3 x [N, h, L, W/h]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, w))  # [N, h, L, W/h] -> [N, L, W]


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(_act(self.act, self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.ln2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Normalized images ``[N, 3, H, W]`` -> final-LN tokens ``[N, cls + (H/p)*(W/p), width]``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(w) * 0.02) if cfg.cls_token else None
        self.pos_embed = nn.Parameter(torch.randn(cfg.num_prefix + cfg.pos_grid**2, w) * 0.02)
        self.ln_pre = nn.LayerNorm(w, eps=cfg.eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w, eps=cfg.eps)
        self.out_channels = w

    def position_embedding(self, gh: int, gw: int) -> Tensor:
        """The stored embedding resized to a ``gh x gw`` grid: ``[prefix + gh*gw, W]``."""
        g, p = self.cfg.pos_grid, self.cfg.num_prefix
        if (gh, gw) == (g, g):
            return self.pos_embed
        grid = self.pos_embed[p:].reshape(g, g, -1).permute(2, 0, 1)[None]  # [g*g, W] -> [1, W, g, g]
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        grid = grid[0].permute(1, 2, 0).reshape(gh * gw, -1)  # [1, W, gh, gw] -> [gh*gw, W]
        return torch.cat([self.pos_embed[:p], grid], dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.cfg.patch_size:
            raise ValueError(f"vit: image {tuple(x.shape[-2:])} is smaller than one {self.cfg.patch_size}px patch")
        feat = self.patch_embed(x)  # [N, 3, H, W] -> [N, W, gh, gw]
        n, _, gh, gw = feat.shape
        tokens = feat.flatten(2).transpose(1, 2)  # [N, W, gh, gw] -> [N, gh*gw, W]
        if self.cls_token is not None:
            cls = self.cls_token.to(tokens.dtype).expand(n, 1, -1)  # [W] -> [N, 1, W]
            tokens = torch.cat([cls, tokens], dim=1)  # [N, 1 + gh*gw, W]
        tokens = self.ln_pre(tokens + self.position_embedding(gh, gw)[None])
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_post(tokens)


class TokenPool(nn.Module):
    """Tokens ``[N, L, W]`` -> one vector per image ``[N, W]`` (class token or mean of the patch tokens)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.pool = cfg.pool
        self.num_prefix = cfg.num_prefix

    def forward(self, tokens: Tensor) -> Tensor:
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix :].mean(dim=1)
