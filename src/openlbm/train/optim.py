"""AdamW over the policy's parameter groups, and the warmup + cosine learning-rate schedule.

The schedule is a pure function of the step (:func:`lr_factor`), applied by :func:`set_lr` before every optimizer
step. Each group's learning rate is ``base_lr * group["lr_mult"] * lr_factor(step)``, so the encoder's lower
learning rate (``lr_mult`` < 1, set by ``policy.param_groups``) follows the same warmup and decay. Keeping the
schedule stateless makes exact resume trivial: the step number is the whole scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from openlbm.configs.train import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier on the base learning rate at optimizer step ``step`` (0-based).

    Linear warmup from ``1/(warmup+1)`` to 1 over ``warmup_steps``, then a cosine from 1 down to ``min_lr_ratio``
    at ``total_steps``. ``schedule="constant"`` keeps 1 after warmup.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Set every group's ``lr`` for ``step``; returns the base (``lr_mult == 1``) learning rate."""
    base = cfg.lr * lr_factor(step, cfg, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = base * group.get("lr_mult", 1.0)
    return base


def _check_groups(groups: list[dict[str, Any]], model: nn.Module) -> None:
    """Every trainable parameter must be in exactly one group: a silently frozen layer is a classic bug."""
    seen: set[int] = set()
    for i, g in enumerate(groups):
        if "params" not in g:
            raise ValueError(f"param group {i} has no 'params' key: {sorted(g)}")
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in more than one param group (group {i})")
            seen.add(id(p))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameters missing from policy.param_groups(): {missing[:10]}")


def build_optimizer(
    groups: Iterable[dict[str, Any]], cfg: OptimConfig, model: nn.Module | None = None
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (dicts with ``params`` and optional ``weight_decay`` / ``lr_mult`` / ``name``).

    ``model``, when given, is checked so that no trainable parameter is left out. Empty groups are dropped.
    """
    groups = [dict(g) for g in groups]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    if model is not None:
        _check_groups(groups, model)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the policy has no trainable parameters")
    for g in groups:
        g.setdefault("lr_mult", 1.0)
        g.setdefault("weight_decay", cfg.weight_decay)
        g["lr"] = cfg.lr * g["lr_mult"]
    # foreach=True pins the kernel choice so CPU runs are bitwise reproducible across resume.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)
