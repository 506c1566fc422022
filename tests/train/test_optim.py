from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from openlbm.configs.train import OptimConfig
from openlbm.train.optim import build_optimizer, lr_factor, set_lr


def test_schedule_warmup_then_cosine_to_min() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, cfg, total_steps=110) for s in range(111)]
    assert f[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True)), "warmup must increase"
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True)), "cosine must not increase"
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert f[110] == pytest.approx(0.1)
    const = OptimConfig(lr=1.0, warmup_steps=0, schedule="constant")
    assert {lr_factor(s, const, 50) for s in range(50)} == {1.0}


def test_param_groups_lr_mult_and_weight_decay() -> None:
    enc, head = nn.Linear(4, 4), nn.Linear(4, 2)
    model = nn.Sequential(enc, head)
    groups = [
        {"name": "encoder", "params": [enc.weight], "lr_mult": 0.1},
        {"name": "no_decay", "params": [enc.bias, head.bias], "weight_decay": 0.0},
        {"name": "decay", "params": [head.weight]},
    ]
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05, warmup_steps=0)
    opt = build_optimizer(groups, cfg, model)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["encoder"]["weight_decay"] == 0.05 and by_name["no_decay"]["weight_decay"] == 0.0
    base = set_lr(opt, 5, cfg, total_steps=10)
    assert by_name["decay"]["lr"] == pytest.approx(base)
    assert by_name["encoder"]["lr"] == pytest.approx(0.1 * base)
    assert base == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))


def test_missing_or_duplicated_params_are_errors() -> None:
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="missing from policy.param_groups"):
        build_optimizer([{"params": [model.weight]}], OptimConfig(), model)
    with pytest.raises(ValueError, match="more than one"):
        build_optimizer([{"params": [model.weight, model.bias]}, {"params": [model.bias]}], OptimConfig(), model)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer([{"params": list(frozen.parameters())}], OptimConfig(), frozen)


def test_optimizer_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    cfg = OptimConfig(lr=0.05, warmup_steps=2, weight_decay=0.0)
    opt = build_optimizer([{"params": list(model.parameters())}], cfg, model)
    first = None
    for step in range(50):
        set_lr(opt, step, cfg, 50)
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
