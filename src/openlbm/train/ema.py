"""Exponential moving average of a model's weights.

``ema = decay_t * ema + (1 - decay_t) * param`` after every optimizer step, with the warmup
``decay_t = min(decay, 1 - (1 + t) ** -power)`` (t counts EMA updates past ``update_after_step``), so the average
is not dominated by the random initialisation early in training. Only trainable parameters are averaged: buffers
(e.g. normalizer stats) and frozen parameters are the model's own, copied when the average is exported.

Where the average lives:

- unsharded model (one process, DDP): in ``self.module``, a frozen whole copy whose parameters *are* the average
  (no second copy), ready for evaluation and checkpoints after :meth:`EMA.export`;
- FSDP2-sharded model: each rank averages its own shards (``shadow``, DTensors sharded like the parameters; no
  all-gather per step, no full replica per rank). :meth:`EMA.export` gathers them (a collective: every rank
  calls it) into ``module``, a whole copy that only the rank that saves and evaluates keeps (rank 0).
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


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 shard)."""
    return hasattr(t, "full_tensor")


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t`` (the tensor itself when unsharded)."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def full(t: Tensor) -> Tensor:
    """The whole ``t`` (all-gathered from every rank when sharded: a collective)."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]


class EMA:
    """The EMA of ``model``'s trainable parameters; ``module`` (where kept) is the whole copy that holds it.

    ``module``: a whole copy of the model made before it was sharded; only needed with a sharded model, and then
    only on the rank that saves and evaluates (None elsewhere). Unsharded, it defaults to a copy of ``model``.
    """

    def __init__(self, model: nn.Module, cfg: EMAConfig, module: nn.Module | None = None) -> None:
        self.cfg = cfg
        # what a saved EMA state must hold: every key of the model's state, at its whole (unsharded) shape
        self.reference = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
        self.sharded = any(is_sharded(p) for p in model.parameters())
        if module is None and not self.sharded:
            module = copy.deepcopy(model)
        self.module = None if module is None else module.eval().requires_grad_(False)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if self.sharded:
            params = dict(model.named_parameters())
            self.shadow = {n: params[n].detach().clone() for n in trainable}
        else:
            assert self.module is not None
            own = dict(self.module.named_parameters())
            self.shadow = {n: own[n] for n in trainable}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Fold ``model``'s current weights into the average (each rank its own shards); returns the decay used."""
        decay = ema_decay(step, self.cfg)
        params = dict(model.named_parameters())
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise KeyError(f"EMA has parameters {missing[:5]} the model lacks: was the model changed after the EMA "
                           "was made?")
        if self.shadow:
            dst = [local(t) for t in self.shadow.values()]
            src = [local(params[n].detach()) for n in self.shadow]
            # lerp(dst, src, w) = dst + w * (src - dst) = decay * dst + (1 - decay) * src
            torch._foreach_lerp_(dst, src, 1.0 - decay)
        self.updates += 1
        return decay

    @torch.no_grad()
    def export(self, model: nn.Module) -> nn.Module | None:
        """Make ``module`` current and return it (None on a rank without one): the averaged parameters (gathered
        from every rank when sharded: a collective, every rank calls it) with ``model``'s buffers and frozen
        parameters."""
        own = None if self.module is None else self.module.state_dict()
        state = model.state_dict()
        for name, t in state.items():  # the same order on every rank: the gathers line up
            if not self.sharded and name in self.shadow:
                continue  # the average already lives in ``module``
            value = full((self.shadow.get(name, t) if self.sharded else t).detach())
            if own is not None:
                own[name].copy_(value)
        if self.module is not None:
            buffers = dict(self.module.named_buffers())
            for name, b in model.named_buffers():  # non-persistent ones (normalizer stats) are not in the state
                if name not in state:
                    buffers[name].copy_(full(b))
        return self.module

    def state_dict(self) -> dict[str, Tensor]:
        """All EMA tensors (parameters and buffers) as of the last :meth:`export`, keyed by name ({} on a rank
        without a whole copy)."""
        if self.module is None:
            return {}
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`state_dict` (every rank reads the same full tensors and keeps its own shards)."""
        missing, unexpected, shapes = state_dict_diff(self.reference, state, ours_label="EMA")
        if missing or unexpected or shapes:
            raise ValueError(f"EMA state mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}, "
                             f"shape mismatches {shapes[:10]}")
        if self.module is not None:
            self.module.load_state_dict(state)
        if self.sharded:
            from torch.distributed.tensor import distribute_tensor

            for name, t in self.shadow.items():
                part = distribute_tensor(state[name].to(t.device), t.device_mesh, t.placements, src_data_rank=None)
                local(t).copy_(part.to_local())

