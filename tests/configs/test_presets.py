from __future__ import annotations

import json
from dataclasses import replace

import pytest

from openlbm.configs.presets import FINETUNE_PRESETS, POLICY_PRESETS, PRESETS, policy_preset, preset
from openlbm.policies.config import PolicyConfig


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_serialise(name: str) -> None:
    cfg = preset(name)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["steps"] == cfg.steps and d["policy"] and d["data"]
    assert cfg.batch_size % cfg.grad_accum == 0


def test_debug_is_tiny_and_unknown_preset_lists_names() -> None:
    cfg = preset("debug")
    assert cfg.steps <= 10 and cfg.batch_size <= 8 and cfg.data.num_workers == 0
    with pytest.raises(ValueError, match="debug, small"):
        preset("huge")


def test_validation_and_micro_batch() -> None:
    cfg = preset("debug")
    assert replace(cfg, batch_size=8, grad_accum=2).micro_batch_size(2) == 2
    with pytest.raises(ValueError, match="divisible by world_size"):
        replace(cfg, batch_size=6, grad_accum=2).micro_batch_size(2)
    with pytest.raises(ValueError, match="grad_accum"):
        replace(cfg, batch_size=5, grad_accum=2)
    with pytest.raises(ValueError, match="precision"):
        replace(cfg, precision="fp16")


@pytest.mark.parametrize("name", list(POLICY_PRESETS))
def test_policy_presets_round_trip_through_json(name: str) -> None:
    cfg = policy_preset(name)
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_training_presets_use_the_policy_size_of_their_name() -> None:
    for name in set(PRESETS) & set(POLICY_PRESETS):
        assert preset(name).policy == policy_preset(name)
    with pytest.raises(ValueError, match="unknown policy preset 'huge'; valid: debug, small, aloha, base, large"):
        policy_preset("huge")


@pytest.mark.parametrize("name", list(FINETUNE_PRESETS))
def test_finetune_presets_lower_the_learning_rate(name: str) -> None:
    ft, scratch = preset(name, finetune=True), preset(name)
    assert ft.optim.lr < scratch.optim.lr and ft.optim.warmup_steps <= scratch.optim.warmup_steps
    assert ft.policy == scratch.policy and ft.init_from is None  # the command requires --init-from
    json.dumps(ft.to_dict())
    with pytest.raises(ValueError, match="fine-tuning preset"):
        preset("huge", finetune=True)
