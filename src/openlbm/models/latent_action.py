"""Latent action model (LAM): what changed between two frames, as a few discrete codes learned from video alone.

::

    o_t ─────┬──────────────────────────────────────────────┐
             ├─► inverse dynamics ─► z [B, G, D] ─► VQ ─► q ─┴─► forward decoder ─► ô_{t+k} = o_t + Δ̂
    o_{t+k} ─┘                    (G groups, each one of K codes)

The forward decoder sees ``o_t`` and the code only, so everything it knows about ``o_{t+k}`` has passed through
``G * log2(K)`` bits: to reconstruct the change it must encode *what moved*, not what the scene looks like. It
predicts the frame difference, so the static background costs the code nothing.

Vector quantisation: codes and encoder outputs are L2-normalised per group (cosine-similarity lookup), the
straight-through estimator passes the decoder's gradient to the encoder, a commitment loss pulls the encoder
towards its code, and the codebook follows an exponential moving average of the encoder outputs assigned to each
code (no codebook gradient). Codebook collapse, most codes never chosen, is the known failure of LAMs: a code
that no batch has chosen for ``dead_after`` steps is re-initialised from a random encoder output of the current
batch (all codes start dead: the first batch initialises the codebook), and ``perplexity`` / ``usage`` are
reported every step. A restarted code sits at one encoder output, nearer to its neighbours than the code at the
cluster's centre, so it takes part of the cluster over at once. Under ``torch.distributed`` the codebook statistics are summed
over ranks and re-initialised codes come from rank 0, so every rank keeps the same codebook.

Images are uint8 ``[B, C, H, W]`` (``C = 3 x cameras``, cameras stacked on channels) and become floats only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentActionConfig:
    """Sizes of the latent action model (defaults: ~1 M parameters, CPU-trainable at 64 px)."""

    groups: int = 2
    """Code groups ``G``: each frame pair gets ``G`` code indices (one per group)."""
    codebook_size: int = 8
    """Codes per group ``K``; the pair's information is at most ``G * log2(K)`` bits."""
    code_dim: int = 16
    """Dimension ``D`` of each group's code vector; the latent action is ``L = G * D`` floats."""
    encoder_widths: tuple[int, ...] = (32, 64, 96, 128)
    """Channels of the inverse-dynamics encoder's stride-2 conv stages."""
    encoder_hidden: int = 256
    """Width of the MLP between the pooled conv features and the ``G * D`` encoder output."""
    pool_size: int = 4
    """The encoder's last feature map is average-pooled to ``pool_size x pool_size`` (keeps where things moved)."""
    decoder_widths: tuple[int, ...] = (24, 48, 96)
    """Channels of the forward decoder's U-Net levels, the first at half the image resolution and each next one
    halving it again, so image sides must be divisible by ``2 ** len(decoder_widths)``."""
    decoder_blocks: int = 2
    """Code-modulated residual blocks at the decoder's lowest resolution."""
    group_size: int = 8
    """Channels per GroupNorm group (at least one group)."""
    commitment: float = 0.25
    """Weight of the commitment loss ``|z - sg(q)|^2`` (VQ-VAE's beta). As in VQ-VAE, reconstruction and
    commitment errors are sums per sample (over pixels, over code elements); both are divided by the number of
    pixels, so ``recon`` reads as a per-pixel MSE and this weight does not depend on the image size."""
    ema_decay: float = 0.99
    """Decay of the codebook's moving averages (assignment counts and summed encoder outputs)."""
    dead_after: int = 20
    """A code no training batch has chosen for this many steps is dead and gets re-initialised from an encoder
    output of the current batch (0 disables re-initialisation)."""

    def __post_init__(self) -> None:
        if min(self.groups, self.codebook_size, self.code_dim, self.encoder_hidden, self.pool_size) < 1:
            raise ValueError(f"latent action sizes must be >= 1, got {self}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2 (one code carries no information), got {self.codebook_size}")
        if not self.encoder_widths or not self.decoder_widths or self.decoder_blocks < 0:
            raise ValueError(f"encoder_widths and decoder_widths must be non-empty, decoder_blocks >= 0: {self}")
        if not 0.0 <= self.ema_decay < 1.0 or self.dead_after < 0 or self.commitment < 0:
            raise ValueError(f"ema_decay must be in [0, 1), dead_after and commitment >= 0: {self}")

    @property
    def latent_dim(self) -> int:
        """``L = groups * code_dim``, the width of one latent action vector."""
        return self.groups * self.code_dim

    def build(self, num_cameras: int = 1) -> LatentActionModel:
        """A freshly initialised model for frames of ``num_cameras`` stacked RGB images."""
        return LatentActionModel(self, 3 * num_cameras)


@dataclass
class LatentActionOutput:
    """What :meth:`LatentActionModel.forward` returns."""

    loss: Tensor
    """Scalar training loss ``recon + commitment * commit * L / pixels`` (``pixels = C * H * W``)."""
    recon: Tensor
    """Scalar MSE of the reconstructed ``o_{t+k}`` (pixels on the ``[0, 1]`` scale)."""
    commit: Tensor
    """Scalar commitment loss, the mean over code elements (unweighted)."""
    codes: Tensor
    """Quantised code vectors ``[B, L]`` (what labelling writes)."""
    indices: Tensor
    """Code indices ``[B, G]`` int64."""
    pred: Tensor
    """Reconstructed ``o_{t+k}``, float ``[B, C, H, W]`` on the ``[0, 1]`` scale."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """0-d tensors on the model's device (read them when needed: the trainer does once per log step): ``recon``,
    ``recon_static`` (MSE of copying ``o_t``: the bar the decoder must beat), ``commit``,
    ``perplexity`` (exp entropy of this batch's code use, mean over groups; K = all codes used equally),
    ``usage`` (fraction of codes used in this batch), ``dead_reset`` (codes re-initialised this step)."""


def _groups(channels: int, group_size: int) -> int:
    g = max(1, channels // group_size)
    while channels % g:
        g -= 1
    return g


def _conv_block(c_in: int, c_out: int, stride: int, group_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(_groups(c_out, group_size), c_out), nn.SiLU())


class InverseDynamics(nn.Module):
    """``(o_t, o_{t+k}) -> z [B, G, D]``: a conv net over both frames and their difference."""

    def __init__(self, cfg: LatentActionConfig, channels: int) -> None:
        super().__init__()
        widths = (3 * channels, *cfg.encoder_widths)
        self.convs = nn.Sequential(*[_conv_block(a, b, 2, cfg.group_size) for a, b in zip(widths, widths[1:], strict=False)])
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool_size)
        self.mlp = nn.Sequential(
            nn.Linear(widths[-1] * cfg.pool_size**2, cfg.encoder_hidden), nn.SiLU(), nn.Linear(cfg.encoder_hidden, cfg.latent_dim)
        )
        self.groups, self.code_dim = cfg.groups, cfg.code_dim

    def forward(self, x_t: Tensor, x_tk: Tensor) -> Tensor:
        h = self.pool(self.convs(torch.cat([x_t, x_tk, x_tk - x_t], dim=1) * 2 - 1))  # [B, W, P, P]
        z = self.mlp(h.flatten(1))  # [B, W, P, P] -> [B, W*P*P] -> [B, G*D]
        return z.view(-1, self.groups, self.code_dim)  # [B, G*D] -> [B, G, D]


class _FiLMBlock(nn.Module):
    """Conv + GroupNorm whose output is scaled and shifted by the code (identity modulation at init)."""

    def __init__(self, c_in: int, c_out: int, code: int, group_size: int, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm = nn.GroupNorm(_groups(c_out, group_size), c_out)
        self.film = nn.Linear(code, 2 * c_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.residual = residual and c_in == c_out

    def forward(self, h: Tensor, code: Tensor) -> Tensor:
        scale, shift = self.film(code)[:, :, None, None].chunk(2, dim=1)  # [B, 2C] -> 2 x [B, C, 1, 1]
        out = F.silu(self.norm(self.conv(h)) * (1 + scale) + shift)
        return h + out if self.residual else out


class ForwardDecoder(nn.Module):
    """``(o_t, code) -> Δ`` with ``o_{t+k} ≈ o_t + Δ``: a small U-Net over ``o_t`` modulated by the code.

    It works from half resolution down (a stride-2 stem) and returns to full resolution by a pixel shuffle, so the
    costly convolutions never run at the input size; ``o_t``'s full-resolution detail reaches the output through
    ``o_t + Δ``."""

    def __init__(self, cfg: LatentActionConfig, channels: int) -> None:
        super().__init__()
        w, gs, code = cfg.decoder_widths, cfg.group_size, cfg.latent_dim
        self.stem = _conv_block(channels, w[0], 2, gs)
        self.down = nn.ModuleList(_conv_block(a, b, 2, gs) for a, b in zip(w, w[1:], strict=False))
        self.mid = nn.ModuleList(_FiLMBlock(w[-1], w[-1], code, gs, residual=True) for _ in range(cfg.decoder_blocks))
        self.up = nn.ModuleList(_FiLMBlock(w[i + 1] + w[i], w[i], code, gs, residual=False) for i in range(len(w) - 1))
        self.out = nn.Conv2d(w[0], 4 * channels, 3, 1, 1)
        # Δ = 0 at init: the untrained decoder predicts "nothing moves" (the recon_static baseline).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: Tensor, code: Tensor) -> Tensor:
        h = self.stem(x_t * 2 - 1)  # [B, w0, H/2, W/2]
        skips = [h]
        for down in self.down:
            h = down(h)
            skips.append(h)
        skips.pop()
        for block in self.mid:
            h = block(h, code)
        for up in reversed(self.up):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = up(torch.cat([h, skip], dim=1), code)
        return F.pixel_shuffle(self.out(h), 2)  # [B, 4C, H/2, W/2] -> [B, C, H, W]


def _all_reduce_sum(*tensors: Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for t in tensors:
            torch.distributed.all_reduce(t)


def _broadcast_from_rank0(t: Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast(t, src=0)


class VectorQuantizer(nn.Module):
    """``G`` codebooks of ``K`` unit vectors of size ``D``; EMA updates and dead-code re-initialisation in training."""

    def __init__(self, cfg: LatentActionConfig) -> None:
        super().__init__()
        g, k, d = cfg.groups, cfg.codebook_size, cfg.code_dim
        self.cfg = cfg
        self.register_buffer("codebook", F.normalize(torch.randn(g, k, d), dim=-1))
        self.register_buffer("cluster_size", torch.zeros(g, k))
        self.register_buffer("embed_sum", torch.zeros(g, k, d))
        # steps since each code was last chosen; every code starts dead, so the first batch initialises them
        self.register_buffer("unused", torch.full((g, k), cfg.dead_after, dtype=torch.int64))

    def lookup(self, indices: Tensor) -> Tensor:
        """Code indices ``[B, G]`` -> code vectors ``[B, G, D]``."""
        return self.codebook[torch.arange(self.cfg.groups, device=indices.device), indices]  # [B, G] -> [B, G, D]

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``z [B, G, D]`` -> (straight-through codes ``[B, G, D]``, indices ``[B, G]``, commitment loss, stats).

        Always in fp32, also under bf16 autocast: the codebook's moving averages are fp32 buffers that bf16
        counts and sums would round (or fail to update in place), and nearby codes' similarities would tie."""
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        z = F.normalize(z, dim=-1)
        sim = torch.einsum("bgd,gkd->bgk", z, self.codebook)  # [B, G, K]
        indices = sim.argmax(dim=-1)  # [B, G]
        q = self.lookup(indices)
        commit = F.mse_loss(z, q.detach())
        counts = self._one_hot(indices, z.dtype).sum(0)  # [B, G, K] -> [G, K]
        reset = torch.zeros((), device=z.device)
        if self.training:
            counts, reset = self._update(z.detach(), indices)
        p = counts / counts.sum(-1, keepdim=True).clamp(min=1)  # [G, K]
        entropy = -(p * p.clamp(min=1e-12).log()).sum(-1)  # [G]
        # 0-d tensors, left on the device: the trainer reads its metrics only at logging steps
        stats = {"perplexity": entropy.exp().mean().detach(), "usage": (counts > 0).float().mean(),
                 "dead_reset": reset.float()}
        return z + (q - z).detach(), indices, commit, stats

    def _one_hot(self, indices: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, G]`` -> ``[B, G, K]``; unlike ``F.one_hot``, which reads the indices' range back on CPU devices."""
        k = torch.arange(self.cfg.codebook_size, device=indices.device)
        return (indices[..., None] == k).to(dtype)

    @torch.no_grad()
    def _update(self, z: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """EMA step of the codebook over this (global) batch, then re-initialise dead codes; returns the global
        per-code counts ``[G, K]`` and the number of codes re-initialised (a 0-d tensor)."""
        onehot = self._one_hot(indices, z.dtype)  # [B, G, K]
        counts = onehot.sum(0)  # [G, K]
        sums = torch.einsum("bgk,bgd->gkd", onehot, z)  # [G, K, D]
        _all_reduce_sum(counts, sums)
        w = 1.0 - self.cfg.ema_decay
        self.cluster_size.lerp_(counts, w)
        self.embed_sum.lerp_(sums, w)
        self.codebook.copy_(F.normalize(self.embed_sum, dim=-1, eps=1e-12))
        self.unused.add_(1).masked_fill_(counts > 0, 0)
        if self.cfg.dead_after <= 0:
            return counts, torch.zeros((), device=z.device)
        return counts, self._restart_dead(z, counts)

    def _restart_dead(self, z: Tensor, counts: Tensor) -> Tensor:
        """Re-initialise the dead codes from rows of ``z`` (rank 0's); returns how many (a 0-d tensor).

        Candidates are drawn and broadcast every training step, dead codes or not, and swapped in with ``where``:
        asking whether any code is dead would read the device every step (a stall on a GPU), the draw is tiny."""
        share = counts[0].sum() / self.cfg.codebook_size  # uniform assignments per code in the global batch
        dead = self.unused >= self.cfg.dead_after  # [G, K]
        g, k, d = self.codebook.shape
        pick = torch.randint(0, z.shape[0], (g, k), device=z.device)  # a batch row per (group, code)
        cand = z[pick, torch.arange(g, device=z.device)[:, None]]  # [G, K, D]
        # a little noise keeps codes drawn from the same row apart (tiny batches, first step)
        cand = F.normalize(cand + 0.01 * torch.randn_like(cand), dim=-1)
        _broadcast_from_rank0(cand)
        self.codebook.copy_(torch.where(dead[..., None], cand, self.codebook))
        self.embed_sum.copy_(torch.where(dead[..., None], cand * share, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, share, self.cluster_size))
        self.unused.masked_fill_(dead, 0)
        return dead.sum()


class LatentActionModel(nn.Module):
    """Inverse dynamics -> vector quantiser -> forward decoder (see the module docstring)."""

    def __init__(self, cfg: LatentActionConfig, channels: int) -> None:
        super().__init__()
        self.cfg, self.channels = cfg, channels
        self.encoder = InverseDynamics(cfg, channels)
        self.quantizer = VectorQuantizer(cfg)
        self.decoder = ForwardDecoder(cfg, channels)

    def _floats(self, images: Tensor, name: str) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"{name} must be uint8 [B, {self.channels}, H, W], got {images.dtype} {tuple(images.shape)}")
        step = 2 ** len(self.cfg.decoder_widths)
        if images.shape[-2] % step or images.shape[-1] % step:
            raise ValueError(f"{name}: image size {tuple(images.shape[-2:])} must be divisible by {step} "
                             f"(2 ** len(decoder_widths))")
        return images.float() / 255.0

    def quantize(self, o_t: Tensor, o_tk: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """(straight-through code vectors ``[B, L]``, indices ``[B, G]``, commitment loss, codebook stats)."""
        z = self.encoder(self._floats(o_t, "o_t"), self._floats(o_tk, "o_t+k"))
        q, indices, commit, stats = self.quantizer(z)
        return q.flatten(1), indices, commit, stats  # [B, G, D] -> [B, L]

    @torch.no_grad()
    def encode(self, o_t: Tensor, o_tk: Tensor) -> tuple[Tensor, Tensor]:
        """Label frame pairs: (code vectors ``[B, L]``, indices ``[B, G]``). Never updates the codebook."""
        z = self.encoder(self._floats(o_t, "o_t"), self._floats(o_tk, "o_t+k"))
        indices = torch.einsum("bgd,gkd->bgk", F.normalize(z, dim=-1), self.quantizer.codebook).argmax(-1)  # [B, G]
        return self.quantizer.lookup(indices).flatten(1), indices  # [B, G, D] -> [B, L]

    def decode(self, o_t: Tensor, codes: Tensor) -> Tensor:
        """Predicted ``o_{t+k}``, float ``[B, C, H, W]`` on the ``[0, 1]`` scale, from ``o_t`` and codes ``[B, L]``."""
        x_t = self._floats(o_t, "o_t")
        return x_t + self.decoder(x_t, codes)

    def forward(self, o_t: Tensor, o_tk: Tensor) -> LatentActionOutput:
        codes, indices, commit, stats = self.quantize(o_t, o_tk)
        pred = self.decode(o_t, codes)
        target = self._floats(o_tk, "o_t+k")
        recon = F.mse_loss(pred, target)
        # per-sample sums over code elements vs over pixels (see LatentActionConfig.commitment)
        loss = recon + self.cfg.commitment * commit * (self.cfg.latent_dim / target[0].numel())
        with torch.no_grad():
            static = F.mse_loss(self._floats(o_t, "o_t"), target)
        metrics = {"recon": recon.detach(), "recon_static": static, "commit": commit.detach(), **stats}
        return LatentActionOutput(loss, recon, commit, codes, indices, pred, metrics)

