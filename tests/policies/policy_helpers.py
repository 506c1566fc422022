"""Hand-built batches and stats for the policy tests (no data layer; imported via conftest's path)."""

from __future__ import annotations

import torch
from torch import nn

from openlbm.types import Batch, EmbodimentSpec, Observation

ARM = EmbodimentSpec("arm", ("front", "wrist"), (32, 32), state_dim=5, action_dim=3)
ROVER = EmbodimentSpec("rover", ("top",), (24, 24), state_dim=2, action_dim=2)


def make_stats(emb: EmbodimentSpec, lo: float = -2.0, hi: float = 2.0) -> dict[str, dict[str, list]]:
    def vec(n: int) -> dict[str, list]:
        return {
            "mean": [0.1 * i for i in range(n)],
            "std": [1.0 + 0.1 * i for i in range(n)],
            "min": [lo - 1] * n,
            "max": [hi + 1] * n,
            "q01": [lo] * n,
            "q99": [hi] * n,
            "count": [100],
        }

    return {"observation.state": vec(emb.state_dim), "action": vec(emb.action_dim)}


def make_obs(embs: list[EmbodimentSpec], t: int = 2, seed: int = 0, instruction: str = "push the block") -> Observation:
    """One sample per entry of ``embs``; state padded to the widest, images for the union of cameras."""
    g = torch.Generator().manual_seed(seed)
    b = len(embs)
    s_max = max(e.state_dim for e in embs)
    images: dict[str, torch.Tensor] = {}
    for i, e in enumerate(embs):
        for cam in e.cameras:
            if cam not in images:
                images[cam] = torch.zeros(b, t, 3, *e.image_size, dtype=torch.uint8)
            images[cam][i] = torch.randint(0, 256, (t, 3, *e.image_size), generator=g, dtype=torch.uint8)
    state = torch.zeros(b, t, s_max)
    for i, e in enumerate(embs):
        state[i, :, : e.state_dim] = torch.randn(t, e.state_dim, generator=g)
    return Observation(images=images, state=state, instruction=[instruction] * b, embodiment=[e.name for e in embs])


def make_batch(embs: list[EmbodimentSpec], horizon: int, t: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed + 1000)
    obs = make_obs(embs, t, seed)
    b = len(embs)
    a_max = max(e.action_dim for e in embs)
    action = torch.zeros(b, horizon, a_max)
    mask = torch.zeros(b, a_max, dtype=torch.bool)
    for i, e in enumerate(embs):
        action[i, :, : e.action_dim] = torch.rand(horizon, e.action_dim, generator=g) * 2 - 1
        mask[i, : e.action_dim] = True
    return Batch(obs, action, torch.zeros(b, horizon, dtype=torch.bool), mask)


def randomize_zero_init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for every zero-initialised ``nn.Linear`` (the action output projection, the adaLN-zero
    modulation), so an untrained policy's chunk depends on its observation: with them at zero every chunk is
    ``unnormalize(noise)`` whatever the input, and tests of routing, batching or weight loading could not fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                if m.bias is not None and not m.bias.any():
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return module


def action_loss(policy: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy's action objective (``compute_loss`` returns one loss per objective) and its metrics."""
    losses, metrics = policy.compute_loss(batch)
    return losses["action"], metrics
