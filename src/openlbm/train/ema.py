"""Exponential moving average of a model's weights.

``ema = decay_t * ema + (1 - decay_t) * param`` after every optimizer step, with the warmup
``decay_t = min(decay, 1 - (1 + t) ** -power)`` (t counts EMA updates past ``update_after_step``), so the average
is not dominated by the random initialisation early in training. Buffers (e.g. normalizer stats) are copied, not
averaged. The EMA lives in its own module copy so that evaluation and checkpoints can use it directly.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from openlbm.configs.train import EMAConfig
from openlbm.policies.pretrained import state_dict_diff


def ema_decay(step: int, cfg: EMAConfig) -> float:
    """Decay used for the update made after optimizer step ``step`` (0-based)."""
    t = step - cfg.update_after_step
    if t < 0:
        return 0.0
    return min(cfg.decay, 1.0 - (1.0 + t) ** -cfg.power)


class EMA:
    """Keeps ``self.module``, a frozen copy of ``model`` whose parameters track the EMA of ``model``'s."""

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        ema_params = dict(self.module.named_parameters())
        src, dst = [], []
        for name, p in model.named_parameters():
            if name not in ema_params:
                raise KeyError(f"EMA has no parameter {name!r}: was the model changed after the EMA was made?")
            if p.requires_grad:
                # FSDP2 shards parameters as DTensors; the EMA copy is kept whole (all-gather per update).
                src.append(p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach())
                dst.append(ema_params[name])
        return src, dst

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Fold ``model``'s current weights into the average; returns the decay used."""
        decay = ema_decay(step, self.cfg)
        src, dst = self._pairs(model)
        if src:
            # lerp(dst, src, w) = dst + w * (src - dst) = decay * dst + (1 - decay) * src
            torch._foreach_lerp_(dst, src, 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(b.full_tensor() if hasattr(b, "full_tensor") else b)
        self.updates += 1
        return decay

    def state_dict(self) -> dict[str, Tensor]:
        """All EMA tensors (parameters and buffers), keyed by name."""
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected, shapes = state_dict_diff(self.module.state_dict(), state, ours_label="EMA")
        if missing or unexpected or shapes:
            raise ValueError(f"EMA state mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}, "
                             f"shape mismatches {shapes[:10]}")
        self.module.load_state_dict(state)
