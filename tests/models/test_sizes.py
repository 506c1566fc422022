"""Preset sizes: debug tiny, base ~100M, large 300M+ (built on the meta device: no memory, no init time)."""

from __future__ import annotations

import torch

from openlbm.configs.presets import policy_preset as preset
from openlbm.models.lbm import LBMModel
from openlbm.types import EmbodimentSpec

EMB = EmbodimentSpec("metaworld_sawyer", ("corner2", "gripperPOV"), (128, 128), state_dim=4, action_dim=4)


def count(name: str) -> int:
    cfg = preset(name)
    head = cfg.flow if cfg.head == "flow" else cfg.diffusion
    with torch.device("meta"):
        model = LBMModel([EMB], cfg.vision, cfg.trunk, head, cfg.n_obs_steps, cfg.horizon, text_dim=384)
    return sum(p.numel() for p in model.parameters())


def test_preset_parameter_counts() -> None:
    assert count("debug") < 500_000
    assert 2_000_000 < count("small") < 15_000_000
    assert 80_000_000 < count("base") < 130_000_000
    assert count("large") > 300_000_000
