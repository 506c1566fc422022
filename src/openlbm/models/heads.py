"""Action heads: how noise becomes an action chunk. Both wrap a ``denoise(x, t) -> prediction`` callable.

Flow matching (pi0 convention): ``x_t = t * noise + (1 - t) * action``, the network predicts the velocity
``noise - action``; ``t ~ Beta(alpha, 1)`` rescaled into ``[t_min, 1]`` puts more training weight on noisy times;
sampling integrates ``dx/dt`` with Euler from ``t = 1`` (noise) to ``t = 0``.

DDPM / DDIM: a squared-cosine ``beta`` schedule over ``train_steps``; the network predicts the noise (or the clean
sample); sampling is deterministic DDIM (eta = 0) over ``sample_steps`` evenly spaced timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise(x [B, H, A], t [B]) -> [B, H, A]``."""


@dataclass(frozen=True)
class FlowConfig:
    """Flow-matching head."""

    num_steps: int = 10
    """Euler integration steps at inference."""
    time_alpha: float = 1.5
    """Training time ``t ~ Beta(time_alpha, 1)`` (sampled by inverse CDF ``u ** (1 / alpha)``); 1.0 = uniform."""
    t_min: float = 0.001
    """Smallest training time (``t = t_min + (1 - t_min) * Beta``)."""
    time_scale: float = 1000.0
    """``t`` is multiplied by this before the sinusoidal embedding (matches the diffusion timestep range)."""


@dataclass(frozen=True)
class DiffusionConfig:
    """DDPM training / DDIM sampling head."""

    train_steps: int = 100
    """Number of DDPM noise levels in training."""
    sample_steps: int = 10
    """DDIM steps at inference."""
    prediction: Literal["epsilon", "sample"] = "epsilon"
    """What the network predicts: the added noise or the clean action chunk."""
    clip_sample: float = 1.5
    """Clamp the predicted clean sample to ``[-clip, clip]`` during sampling (0 disables); actions are normalized
    to about ``[-1, 1]``."""


class FlowHead(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def training_pair(self, action: Tensor, noise: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(network input ``x_t``, its time for the embedding ``[B]``, regression target). ``u``: uniform ``[B]``."""
        t = self.cfg.t_min + (1.0 - self.cfg.t_min) * u.clamp(min=1e-6) ** (1.0 / self.cfg.time_alpha)
        x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * action
        return x_t, t * self.cfg.time_scale, noise - action

    @torch.no_grad()
    def sample(self, denoise: DenoiseFn, noise: Tensor, num_steps: int | None = None) -> Tensor:
        steps = num_steps or self.cfg.num_steps
        x, dt = noise, -1.0 / steps
        for i in range(steps):
            t = torch.full((x.shape[0],), (1.0 + i * dt) * self.cfg.time_scale, device=x.device)
            x = torch.add(x, denoise(x, t), alpha=dt)  # x + dt * v in one op
        return x

    def sample_guided(
        self, denoise: DenoiseFn, noise: Tensor, target: Tensor, weights: Tensor, beta: Tensor,
        num_steps: int | None = None,
    ) -> Tensor:
        """Euler sampling guided towards ``target`` where ``weights > 0`` (real-time chunking's inpainting, Black
        et al. 2025): at each step the clean chunk predicted from ``x_t``, ``x0 = x_t - t v``, is pulled towards
        the target by the vector-Jacobian product ``g = (w * (target - x0))^T dx0/dx_t``, with weight
        ``min(beta, ((1-t)^2 + t^2) / ((1-t) t))`` (the paper's ``(1-tau) / (tau r_tau^2)`` with ``tau = 1 - t``).
        ``target``, ``weights``: ``[B, H, A]``, ``beta`` ``[B, 1, 1]`` (both broadcastable). Rows with zero weights
        get exactly :meth:`sample`'s chunk. Runs with autograd on (the caller's tensors must not be inference
        tensors)."""
        steps = num_steps or self.cfg.num_steps
        x, dt = noise.detach(), -1.0 / steps
        for i in range(steps):
            t = 1.0 + i * dt
            t_emb = torch.full((x.shape[0],), t * self.cfg.time_scale, device=x.device)
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                v = denoise(xg, t_emb)
                x0 = xg - t * v
                (g,) = torch.autograd.grad(x0, xg, grad_outputs=weights * (target - x0.detach()))
            w = beta if t >= 1.0 else beta.clamp(max=((1.0 - t) ** 2 + t**2) / ((1.0 - t) * t))
            x = torch.add(x, v.detach() - w * g, alpha=dt)  # as in sample(): zero guidance gives its exact chunk
        return x


def squaredcos_alphas_cumprod(steps: int, max_beta: float = 0.999) -> Tensor:
    """``alpha_bar`` of the improved-DDPM cosine schedule (``squaredcos_cap_v2`` in diffusers)."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - f((i + 1) / steps) / f(i / steps), max_beta) for i in range(steps)])
    return torch.cumprod(1.0 - betas, dim=0)


class DiffusionHead(nn.Module):
    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("alphas_cumprod", squaredcos_alphas_cumprod(cfg.train_steps), persistent=False)

    def training_pair(self, action: Tensor, noise: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = (u * self.cfg.train_steps).long().clamp(max=self.cfg.train_steps - 1)
        ab = self.alphas_cumprod[k][:, None, None]
        x_k = ab.sqrt() * action + (1 - ab).sqrt() * noise
        target = noise if self.cfg.prediction == "epsilon" else action
        return x_k, k.float(), target

    @torch.no_grad()
    def sample(self, denoise: DenoiseFn, noise: Tensor, num_steps: int | None = None) -> Tensor:
        steps = min(num_steps or self.cfg.sample_steps, self.cfg.train_steps)
        ts = torch.linspace(self.cfg.train_steps - 1, 0, steps).round().long().tolist()
        # The schedule as Python floats: per-step coefficients cost no tensor ops (and no device syncs).
        abar = [float(a) for a in self.alphas_cumprod.cpu()[ts].tolist()] + [1.0]
        x = noise
        for i, k in enumerate(ts):
            ab, ab_prev = abar[i], abar[i + 1]
            pred = denoise(x, torch.full((x.shape[0],), float(k), device=x.device))
            if self.cfg.prediction == "epsilon":
                x0 = torch.add(x, pred, alpha=-math.sqrt(1 - ab)) / math.sqrt(ab)
            else:
                x0 = pred
            if self.cfg.clip_sample > 0:
                x0 = x0.clamp(-self.cfg.clip_sample, self.cfg.clip_sample)
            eps = torch.add(x, x0, alpha=-math.sqrt(ab)) / math.sqrt(1 - ab)
            x = torch.add(x0 * math.sqrt(ab_prev), eps, alpha=math.sqrt(1 - ab_prev))
        return x
