"""Preset sizes: the parameter counts the presets' table states are the built models' (built on the meta device: no
memory, no init time), so docs that quote them cannot drift."""

from __future__ import annotations

import re

import torch

from openlbm.configs import presets
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


def test_the_presets_table_states_the_real_counts() -> None:
    """`openlbm.configs.presets`' table (the one place sizes are written down) rounds each built model's count."""
    stated = {k: float(v) for k, v in ((m.group(1), m.group(2)) for m in
                                       re.finditer(r"^\| (\w+)\s+\| ([\d.]+) M", presets.__doc__ or "", re.M))}
    assert set(stated) == set(presets.POLICY_PRESETS)
    for name, millions in stated.items():
        digits = len(str(millions).split(".")[1].rstrip("0")) if "." in str(millions) else 0
        assert round(count(name) / 1e6, max(digits, 0)) == millions, (name, count(name), millions)
