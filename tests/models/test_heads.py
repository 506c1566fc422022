"""Flow-matching and DDPM/DDIM heads on a 1-D bimodal toy: samples must land on both modes, not between."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openlbm.models.heads import (
    DiffusionConfig,
    DiffusionHead,
    FlowConfig,
    FlowHead,
    squaredcos_alphas_cumprod,
)
from openlbm.models.trunk import timestep_embedding


class ToyDenoiser(nn.Module):
    """``(x [B, 1, 1], t [B]) -> [B, 1, 1]``: an MLP on the noisy value and a time embedding."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1 + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.view(-1, 1), timestep_embedding(t, 32)], dim=-1)  # [B, 1, 1] -> [B, 1] ++ [B, 32]
        return self.net(h).view(-1, 1, 1)  # [B, 1] -> [B, 1, 1]


def bimodal(n: int, gen: torch.Generator) -> torch.Tensor:
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return (0.7 * sign + 0.05 * torch.randn(n, generator=gen)).view(n, 1, 1)  # [B] -> [B, 1, 1]


def train_and_sample(head: nn.Module, hidden: int, steps: int, batch: int, lr: float, n_samples: int) -> torch.Tensor:
    """Fit a :class:`ToyDenoiser` to :func:`bimodal` with ``head``'s objective, then sample ``[n_samples]``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ToyDenoiser(hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        a = bimodal(batch, gen)
        x_t, t, target = head.training_pair(a, torch.randn(a.shape, generator=gen), torch.rand(batch, generator=gen))
        loss = (net(x_t, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    samples = head.sample(net, torch.randn(n_samples, 1, 1, generator=gen)).flatten()
    assert samples.shape == (n_samples,)
    return samples


def assert_bimodal(samples: torch.Tensor, mass: tuple[float, float], near: float, gap: float) -> None:
    """Both modes kept with ``mass`` bounds on the left share, at least ``near`` of the samples within 0.2 of a
    mode, histogram peaks on the modes and ``gap`` times taller than the (empty) middle."""
    hist = torch.histc(samples, 12, -1.2, 1.2)  # 0.2-wide bins; the modes at -0.7 / +0.7 are bins 2 / 9
    left = (samples < 0).float().mean().item()
    assert mass[0] < left < mass[1], left
    on_mode = ((samples.abs() - 0.7).abs() < 0.2).float().mean().item()
    assert on_mode > near, on_mode  # untrained or half-trained nets spread samples out (about 0.3)
    assert int(hist[:6].argmax()) in (2, 3) and int(hist[6:].argmax()) + 6 in (8, 9), hist.tolist()
    center = hist[5:7].mean()  # |x| < 0.2: the gap between the modes
    assert hist[:6].max() > gap * center and hist[6:].max() > gap * center, hist.tolist()


HEADS = pytest.mark.parametrize(
    "head",
    [FlowHead(FlowConfig(num_steps=10)), DiffusionHead(DiffusionConfig(train_steps=100, sample_steps=10))],
    ids=["flow", "ddim"],
)


@HEADS
def test_samples_match_bimodal_distribution(head: nn.Module) -> None:
    """Quick version (~0.3 s): a small net, a short high-lr run, looser bounds (300 steps fail them)."""
    samples = train_and_sample(head, hidden=64, steps=600, batch=128, lr=1e-2, n_samples=1000)
    assert_bimodal(samples, mass=(0.3, 0.7), near=0.55, gap=3.0)


@pytest.mark.slow
@HEADS
def test_samples_match_bimodal_distribution_thorough(head: nn.Module) -> None:
    samples = train_and_sample(head, hidden=128, steps=1500, batch=256, lr=5e-3, n_samples=2000)
    assert_bimodal(samples, mass=(0.38, 0.62), near=0.8, gap=10.0)


def test_flow_training_pair_interpolates_and_time_is_beta_skewed() -> None:
    head = FlowHead(FlowConfig(time_alpha=1.5, t_min=0.001, time_scale=1000.0))
    a, noise = torch.ones(4000, 2, 1), torch.zeros(4000, 2, 1)
    x_t, t, target = head.training_pair(a, noise, torch.rand(4000))
    tt = t / 1000.0
    assert torch.allclose(x_t[:, 0, 0], 1 - tt, atol=1e-6) and torch.equal(target, noise - a)
    assert tt.min() >= 0.001 and tt.mean() > 0.55  # Beta(1.5, 1) has mean 0.6: noisier times weigh more


def test_cosine_schedule_is_monotone_and_spans_noise_levels() -> None:
    ab = squaredcos_alphas_cumprod(100)
    assert torch.all(ab[1:] < ab[:-1]) and ab[0] > 0.99 and ab[-1] < 1e-3
