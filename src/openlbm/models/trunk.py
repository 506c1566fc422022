"""Diffusion transformer over the action chunk, conditioned on observation tokens.

Conditioning, chosen once and used everywhere:
- the noise level/time ``t`` plus the mean-pooled observation drive **adaLN-zero** modulation (DiT): every block's
  self-attention and MLP get a shift/scale/gate from ``c``; gates start at zero, so each block starts as identity.
- the observation tokens enter through **cross-attention** in every block (pre-LN, unmodulated). Their keys and
  values depend only on the observation, so :meth:`DiT.prepare` computes them once per chunk and every denoising
  step reuses them: only the ``H`` action tokens are re-run per step.

Per-step cost matters at batch 1 (a handful of 16-token matmuls, so dispatch overhead dominates): one linear
computes every block's modulation (and the final layer's) from ``c`` at once, modulation and gating are single
fused ``addcmul`` ops (the ``+1`` of ``x * (1 + scale)`` lives in the ada bias, initialised to 1 on the scale
slots), the attention mask is built once per chunk and dropped when every observation token is real.

All attention goes through ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def timestep_frequencies(dim: int, device: torch.device | str | None = None, max_period: float = 10_000.0) -> Tensor:
    """float32 ``[dim // 2]`` frequencies of :func:`timestep_embedding`."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float32) / half)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0, freqs: Tensor | None = None) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[B] -> [B, dim]`` (``freqs``: precomputed
    :func:`timestep_frequencies`, saves rebuilding them at every call)."""
    if freqs is None:
        freqs = timestep_frequencies(dim, t.device, max_period)
    args = t.float()[:, None] * freqs[None]  # [B, 1] * [1, half] -> [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2)) if dim % 2 else emb


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

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``attn_mask``: bool ``[B, 1, 1, N]`` (True = attend) or None (all keys real)."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B, N, 3D] -> [3, B, heads, N, Dh]
        q, k, v = qkv.unbind(0)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)))


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

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], attn_mask: Tensor | None) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)))


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

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


MODS_PER_BLOCK = 6
"""shift, scale, gate for self-attention, then shift, scale, gate for the MLP."""


class DiTBlock(nn.Module):
    """adaLN-zero self-attention + cross-attention to observations + adaLN-zero MLP.

    The modulation comes from :class:`DiT`'s shared ``ada`` linear (one matmul per step for all blocks)."""

    outside_forward = ("kv_cache",)
    """Methods besides ``forward`` that use this block's parameters: a wrapper that shards parameters per block
    (FSDP2) must gather them for these calls too."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.dim = dim
        self.attn = SelfAttention(dim, heads)
        self.norm_x = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.mlp = mlp(dim, mlp_ratio)

    def kv_cache(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """This block's cross-attention keys and values of the observation tokens (once per chunk)."""
        return self.cross.kv_cache(ctx)

    def forward(
        self, x: Tensor, mods: Sequence[Tensor], kv: tuple[Tensor, Tensor], attn_mask: Tensor | None
    ) -> Tensor:
        """``mods``: this block's 6 ``[B, 1, D]`` shift / scale (``1 +`` already in) / gate tensors."""
        sh1, sc1, g1, sh2, sc2, g2 = mods
        shape = (self.dim,)
        x = torch.addcmul(x, g1, self.attn(torch.addcmul(sh1, F.layer_norm(x, shape), sc1)))
        x = x + self.cross(self.norm_x(x), kv, attn_mask)
        return torch.addcmul(x, g2, self.mlp(torch.addcmul(sh2, F.layer_norm(x, shape), sc2)))


@dataclass
class TrunkContext:
    """What :meth:`DiT.prepare` computes once per chunk: the pooled conditioning, every block's K/V, the mask."""

    pooled: Tensor
    """``[B, D]`` pooled observation (added to the time embedding)."""
    kv: list[tuple[Tensor, Tensor]]
    """Per block: keys and values ``[B, heads, N, D/heads]``."""
    attn_mask: Tensor | None
    """bool ``[B, 1, 1, N]``, True for real observation tokens; None when all are real (no masking work)."""


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
        self.n_mods = MODS_PER_BLOCK * cfg.depth + 2
        # adaLN-zero for every block + the final layer in one linear: [B, D] -> [B, n_mods * D], laid out
        # (block 0: shift, scale, gate, shift, scale, gate), (block 1: ...), ..., final shift, final scale.
        # Zero weights; bias 1 on the scale slots (the "1 +" of x * (1 + scale)), 0 elsewhere: every gate
        # starts closed, so each block's self-attention and MLP branches start as the identity (adaLN-zero).
        self.ada = nn.Linear(d, self.n_mods * d)
        nn.init.zeros_(self.ada.weight)
        with torch.no_grad():
            is_scale = torch.zeros(self.n_mods, dtype=torch.bool)
            is_scale[1 : MODS_PER_BLOCK * cfg.depth : 3] = True  # every block's two scale slots
            is_scale[-1] = True
            self.ada.bias.copy_(is_scale.float().repeat_interleave(d))  # [n_mods] -> [n_mods * D]
        self._freqs: dict[torch.device, Tensor] = {}

    def _time_freqs(self, device: torch.device) -> Tensor:
        # A cache, not a buffer: the frequencies must stay float32 even if the module is cast to bf16.
        if torch.compiler.is_compiling():
            return timestep_frequencies(self.cfg.dim, device)  # part of the graph (filling a cache would recompile)
        freqs = self._freqs.get(device)
        if freqs is None:
            freqs = self._freqs[device] = timestep_frequencies(self.cfg.dim, device)
        return freqs

    def prepare(self, tokens: Tensor, key_mask: Tensor | None) -> TrunkContext:
        """Run once per chunk: observation self-attention, pooling and every block's cross-attention K/V.

        ``key_mask``: bool ``[B, N]`` True for real tokens, or None when all are (a single embodiment)."""
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, N] -> [B, 1, 1, N]
        for layer in self.obs_layers:
            tokens = layer(tokens, attn_mask)
        tokens = self.obs_norm(tokens)
        if key_mask is None:
            pooled = self.pool(tokens.mean(1))
        else:
            w = key_mask.to(tokens.dtype)[..., None]  # [B, N] -> [B, N, 1]
            pooled = self.pool((tokens * w).sum(1) / w.sum(1).clamp(min=1.0))
        kv = [blk.kv_cache(tokens) for blk in self.blocks]
        return TrunkContext(pooled=pooled, kv=kv, attn_mask=attn_mask)

    def forward(self, x: Tensor, t: Tensor, ctx: TrunkContext) -> Tensor:
        """``x``: action tokens ``[B, H, D]`` (already projected); ``t``: ``[B]`` time/noise level."""
        b, h, d = x.shape
        c = self.time_mlp(timestep_embedding(t, d, freqs=self._time_freqs(t.device))) + ctx.pooled
        mods = self.ada(F.silu(c)).view(b, self.n_mods, 1, d).unbind(1)  # [B, n_mods*D] -> n_mods x [B, 1, D]
        x = x + self.action_pos[:h]
        for i, (blk, kv) in enumerate(zip(self.blocks, ctx.kv, strict=True)):
            x = blk(x, mods[MODS_PER_BLOCK * i : MODS_PER_BLOCK * (i + 1)], kv, ctx.attn_mask)
        return torch.addcmul(mods[-2], F.layer_norm(x, (d,)), mods[-1])
