"""Diffusion transformer over the action chunk, conditioned on observation tokens.

Conditioning, chosen once and used everywhere:
- the noise level/time ``t`` plus the mean-pooled observation drive **adaLN-zero** modulation (DiT): every block's
  self-attention and MLP get a shift/scale/gate from ``c``; gates start at zero, so each block starts as identity.
- the observation tokens enter through **cross-attention** in every block (pre-LN, unmodulated). Their keys and
  values depend only on the observation, so :meth:`DiT.prepare` computes them once per chunk and every denoising
  step reuses them: only the ``H`` action tokens are re-run per step.

All attention goes through ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TrunkConfig:
    """Width and depth of the observation encoder and the action transformer."""

    dim: int = 256
    """Token width shared by every encoder and the trunk."""
    depth: int = 6
    """Diffusion-transformer blocks over the action tokens."""
    heads: int = 8
    """Attention heads (``dim`` must be divisible by it)."""
    obs_depth: int = 2
    """Self-attention layers over the observation tokens (run once per chunk; 0 = tokens go straight in)."""
    mlp_ratio: float = 4.0
    """Hidden width of every MLP as a multiple of ``dim``."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"trunk dim {self.dim} must be divisible by heads {self.heads}")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # [B, 1] * [1, half] -> [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # [B, N, D] -> [B, heads, N, D/heads]


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)  # [B, heads, N, Dh] -> [B, N, heads*Dh]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, N] -> [B, 1, 1, N]
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class CrossAttention(nn.Module):
    """Queries from the action tokens, keys/values from the (precomputed) observation tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def kv_cache(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(ctx).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], key_mask: Tensor) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        mask = key_mask[:, None, None, :]  # [B, N] -> [B, 1, 1, N]
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)))


def mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer for the observation tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class DiTBlock(nn.Module):
    """adaLN-zero self-attention + cross-attention to observations + adaLN-zero MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, heads)
        self.norm_x = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = mlp(dim, mlp_ratio)
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor, kv: tuple[Tensor, Tensor], key_mask: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # [B, 6D] -> 6 x [B, D]
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        x = x + self.cross(self.norm_x(x), kv, key_mask)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


@dataclass
class TrunkContext:
    """What :meth:`DiT.prepare` computes once per chunk: the pooled conditioning and every block's K/V."""

    pooled: Tensor
    """``[B, D]`` pooled observation (added to the time embedding)."""
    kv: list[tuple[Tensor, Tensor]]
    """Per block: keys and values ``[B, heads, N, D/heads]``."""
    key_mask: Tensor
    """``[B, N]`` True for real observation tokens."""


class DiT(nn.Module):
    """Observation tokens ``[B, N, D]`` + noisy action tokens ``[B, H, D]`` + time ``[B]`` -> ``[B, H, D]``."""

    def __init__(self, cfg: TrunkConfig, horizon: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.obs_layers = nn.ModuleList(EncoderLayer(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.obs_depth))
        self.obs_norm = nn.LayerNorm(d)
        self.pool = nn.Linear(d, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_pos = nn.Parameter(torch.randn(horizon, d) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Linear(d, 2 * d)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)

    def prepare(self, tokens: Tensor, key_mask: Tensor) -> TrunkContext:
        """Run once per chunk: observation self-attention, pooling and every block's cross-attention K/V."""
        for layer in self.obs_layers:
            tokens = layer(tokens, key_mask)
        tokens = self.obs_norm(tokens)
        w = key_mask.to(tokens.dtype)[..., None]  # [B, N] -> [B, N, 1]
        pooled = self.pool((tokens * w).sum(1) / w.sum(1).clamp(min=1.0))
        kv = [blk.cross.kv_cache(tokens) for blk in self.blocks]
        return TrunkContext(pooled=pooled, kv=kv, key_mask=key_mask)

    def forward(self, x: Tensor, t: Tensor, ctx: TrunkContext) -> Tensor:
        """``x``: action tokens ``[B, H, D]`` (already projected); ``t``: ``[B]`` time/noise level."""
        c = self.time_mlp(timestep_embedding(t, self.cfg.dim)) + ctx.pooled
        x = x + self.action_pos[: x.shape[1]]
        for blk, kv in zip(self.blocks, ctx.kv, strict=True):
            x = blk(x, c, kv, ctx.key_mask)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        return modulate(self.final_norm(x), shift, scale)
