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

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1 + 32, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x.view(-1, 1), timestep_embedding(t, 32)], dim=-1)  # [B, 1, 1] -> [B, 1] ++ [B, 32]
        return self.net(h).view(-1, 1, 1)  # [B, 1] -> [B, 1, 1]


def bimodal(n: int, gen: torch.Generator) -> torch.Tensor:
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return (0.7 * sign + 0.05 * torch.randn(n, generator=gen)).view(n, 1, 1)  # [B] -> [B, 1, 1]


@pytest.mark.parametrize(
    "head",
    [FlowHead(FlowConfig(num_steps=10)), DiffusionHead(DiffusionConfig(train_steps=100, sample_steps=10))],
    ids=["flow", "ddim"],
)
def test_samples_match_bimodal_distribution(head: nn.Module) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ToyDenoiser()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(1500):
        a = bimodal(256, gen)
        x_t, t, target = head.training_pair(a, torch.randn(a.shape, generator=gen), torch.rand(256, generator=gen))
        loss = (net(x_t, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = head.sample(net, torch.randn(2000, 1, 1, generator=gen)).flatten()
    assert samples.shape == (2000,)
    hist = torch.histc(samples, 12, -1.2, 1.2)  # 0.2-wide bins; the modes at -0.7 / +0.7 are bins 2 / 9
    left = (samples < 0).float().mean().item()
    assert 0.35 < left < 0.65, left  # both modes kept, in about the right proportion
    assert int(hist[:6].argmax()) in (2, 3) and int(hist[6:].argmax()) + 6 in (8, 9), hist.tolist()
    center = hist[5:7].mean()  # |x| < 0.2: the gap between the modes
    assert hist[:6].max() > 4 * center and hist[6:].max() > 4 * center, hist.tolist()


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
