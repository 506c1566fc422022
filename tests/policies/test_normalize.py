"""Normalization with action-less / state-less embodiments: no stats needed for a dim-0 feature, a clear error where
actions are needed, and an action-less row adds nothing to the action loss."""

from __future__ import annotations

import pytest
import torch
from policy_helpers import ARM, action_loss, make_batch, make_stats, randomize_zero_init

from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.normalize import MissingStatsError, Normalizer
from openlbm.types import Batch, EmbodimentSpec, Observation

VIDEO = EmbodimentSpec("video", ("top",), (24, 24), state_dim=0, action_dim=0)
"""Video without actions or proprioception: its stats hold only image stats (none for state/action)."""


def test_dim_zero_features_need_no_stats() -> None:
    norm = Normalizer([ARM, VIDEO], {"arm": make_stats(ARM), "video": {}}, "quantile")
    x = torch.randn(2, 4, 3)
    out = norm.normalize("action", x, ["arm", "video"])
    assert torch.equal(out[1], torch.zeros(4, 3)) and torch.allclose(out[0], x[0] / 2)  # q01..q99 = -2..2
    assert torch.equal(norm.unnormalize("state", torch.ones(1, 2, 5), ["video"]), torch.zeros(1, 2, 5))


def test_missing_action_stats_name_the_cause() -> None:
    stats = make_stats(ARM)
    del stats["action"]
    with pytest.raises(MissingStatsError, match="lack 'action'.*no dataset of this embodiment has actions"):
        Normalizer([ARM], {"arm": stats}, "quantile")


def test_action_less_rows_add_nothing_to_the_action_loss() -> None:
    torch.manual_seed(0)
    cfg = preset("debug")
    policy = randomize_zero_init(cfg.build([ARM, VIDEO], {"arm": make_stats(ARM), "video": {}}))
    mixed = make_batch([ARM, ARM, VIDEO], cfg.horizon)  # row 1: the arm's action-less video (zeros, all padding)
    mixed.action[1] = 0.0
    mixed.action_is_pad[1:] = True
    mixed.meta["sample_seed"] = torch.tensor([7, 8, 9])
    obs = mixed.obs
    arm = Batch(Observation({k: v[:1] for k, v in obs.images.items()}, obs.state[:1], obs.instruction[:1],
                            obs.embodiment[:1]),
                mixed.action[:1], mixed.action_is_pad[:1], mixed.action_dim_mask[:1], {"sample_seed": torch.tensor([7])})
    loss, _ = action_loss(policy, mixed)
    alone, _ = action_loss(policy, arm)
    assert torch.isfinite(loss) and loss.item() > 0
    torch.testing.assert_close(loss, alone)
    loss.backward()
    assert policy.model.action_out["arm"].weight.grad.abs().sum() > 0
    only_video = make_batch([VIDEO], cfg.horizon)
    only_video.action_is_pad[:] = True
    zero, _ = action_loss(policy, only_video)  # an all-pad batch: a zero loss, not NaN
    assert zero.item() == 0.0
