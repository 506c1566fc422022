"""Per-embodiment state/action normalization owned by the policy (stats come from the dataset, saved with it).

``x_norm = (x - center) / scale`` per dimension, with (center, scale) from the LeRobot-format stats:
``quantile``: q01..q99 -> [-1, 1] (robust to outliers; the default), ``minmax``: min..max -> [-1, 1],
``meanstd``: mean / std. Dims whose spread is ~0 (constant in the data) get scale 1 so they are only shifted.
Padded dims (beyond an embodiment's native size) normalize to 0 and unnormalize to 0.

A policy never runs without stats: a missing embodiment or key is an error, never an identity fallback. An
embodiment whose state or action dim is 0 (action-less video, a camera without proprioception) needs no stats for
that key: its data never had the feature, so there is nothing to normalize. The
buffers are non-persistent: ``stats.json`` is the single source of truth in a saved policy (so fine-tuning with
``init_from`` keeps the new dataset's stats).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from openlbm.models.lbm import index_tensor
from openlbm.types import ACTION_KEY, STATE_KEY, EmbodimentSpec

STAT_KEYS = {"quantile": ("q01", "q99"), "minmax": ("min", "max"), "meanstd": ("mean", "std")}


class MissingStatsError(ValueError):
    """The policy was asked to build or run for an embodiment/feature without normalization stats."""


def _center_scale(stats: dict[str, Any], key: str, dim: int, mode: str, emb: str) -> tuple[Tensor, Tensor]:
    if key not in stats:
        why = " (no dataset of this embodiment has actions: give it a labelled source)" if key == ACTION_KEY else ""
        raise MissingStatsError(f"stats for embodiment {emb!r} lack {key!r} (have {sorted(stats)}){why}")
    a_name, b_name = STAT_KEYS[mode]
    missing = [n for n in (a_name, b_name) if n not in stats[key]]
    if missing:
        raise MissingStatsError(
            f"stats[{emb!r}][{key!r}] lacks {missing} needed by normalization={mode!r} (have {sorted(stats[key])})"
        )
    a = torch.tensor(stats[key][a_name], dtype=torch.float64).flatten()
    b = torch.tensor(stats[key][b_name], dtype=torch.float64).flatten()
    if a.numel() < dim or b.numel() < dim:
        raise MissingStatsError(
            f"stats[{emb!r}][{key!r}] has {a.numel()} dims, embodiment needs {dim} ({a_name}/{b_name})"
        )
    a, b = a[:dim], b[:dim]
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise MissingStatsError(f"stats[{emb!r}][{key!r}] {a_name}/{b_name} contain NaN or inf")
    if mode == "meanstd":
        center, scale = a, b
    else:
        center, scale = (a + b) / 2, (b - a) / 2
    scale = torch.where(scale.abs() < 1e-6, torch.ones_like(scale), scale)
    return center.float(), scale.float()


class Normalizer(nn.Module):
    """Rows per embodiment (in ``embodiments`` order), padded to the widest embodiment."""

    def __init__(
        self,
        embodiments: Sequence[EmbodimentSpec],
        stats: dict[str, dict[str, Any]],
        mode: Literal["quantile", "minmax", "meanstd"],
    ) -> None:
        super().__init__()
        if mode not in STAT_KEYS:
            raise ValueError(f"normalization must be one of {sorted(STAT_KEYS)}, got {mode!r}")
        self.index = {e.name: i for i, e in enumerate(embodiments)}
        self.widths = {"state": {e.name: e.state_dim for e in embodiments},
                       "action": {e.name: e.action_dim for e in embodiments}}
        """Native widths per embodiment, on the host: width checks never read the device."""
        missing = [e.name for e in embodiments if e.name not in stats]
        if missing:
            raise MissingStatsError(
                f"no normalization stats for embodiment(s) {missing} (stats given for {sorted(stats)}); a policy "
                "never runs unnormalized: pass the dataset's stats (MixtureData.stats / meta/stats.json)"
            )
        for key, attr in ((STATE_KEY, "state_dim"), (ACTION_KEY, "action_dim")):
            width = max(getattr(e, attr) for e in embodiments)
            center, scale = torch.zeros(len(embodiments), width), torch.ones(len(embodiments), width)
            for i, e in enumerate(embodiments):
                dim = getattr(e, attr)
                if dim:
                    center[i, :dim], scale[i, :dim] = _center_scale(stats[e.name], key, dim, mode, e.name)
            mask = torch.arange(width)[None] < torch.tensor([getattr(e, attr) for e in embodiments])[:, None]
            tag = "state" if key == STATE_KEY else "action"
            self.register_buffer(f"{tag}_center", center, persistent=False)
            self.register_buffer(f"{tag}_scale", scale, persistent=False)
            self.register_buffer(f"{tag}_mask", mask, persistent=False)

    def _index(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise MissingStatsError(f"embodiment {name!r} unknown to this policy (knows {sorted(self.index)})") from None

    def rows(self, embodiment: Sequence[str]) -> Tensor:
        return index_tensor([self._index(e) for e in embodiment], self.state_center.device)

    def _params(self, tag: str, embodiment: Sequence[str], width: int) -> tuple[Tensor, Tensor, Tensor]:
        tables = [getattr(self, f"{tag}_{n}") for n in ("center", "scale", "mask")]  # [E, W] each
        names = set(embodiment)
        if len(names) == 1:  # one embodiment: broadcast its row, no per-sample index to copy to the device
            i = self._index(next(iter(names)))
            center, scale, mask = (t[i : i + 1].expand(len(embodiment), -1) for t in tables)  # [1, W] -> [B, W]
        else:
            rows = self.rows(embodiment)
            center, scale, mask = (t[rows] for t in tables)  # [B, W]
        have = center.shape[1]
        if width > have:
            pad = width - have
            center = nn.functional.pad(center, (0, pad))
            scale = nn.functional.pad(scale, (0, pad), value=1.0)
            mask = nn.functional.pad(mask, (0, pad))
        return center[:, :width], scale[:, :width], mask[:, :width]

    def _check_width(self, tag: str, x: Tensor, embodiment: Sequence[str]) -> None:
        names = set(embodiment)
        for e in names:
            self._index(e)  # an unknown embodiment is a MissingStatsError
        need = max(self.widths[tag][e] for e in names)
        if x.shape[-1] < need:
            raise ValueError(f"{tag} has {x.shape[-1]} dims but embodiment(s) {sorted(set(embodiment))} need {need}")

    def normalize(self, tag: Literal["state", "action"], x: Tensor, embodiment: Sequence[str]) -> Tensor:
        """``x``: ``[B, ..., W]`` physical -> normalized, zeros on padded dims."""
        self._check_width(tag, x, embodiment)
        center, scale, mask = self._params(tag, embodiment, x.shape[-1])
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)  # broadcast [B, W] over middle dims
        return torch.where(mask.view(shape), (x - center.view(shape)) / scale.view(shape), torch.zeros_like(x))

    def unnormalize(self, tag: Literal["state", "action"], x: Tensor, embodiment: Sequence[str]) -> Tensor:
        center, scale, mask = self._params(tag, embodiment, x.shape[-1])
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return torch.where(mask.view(shape), x * scale.view(shape) + center.view(shape), torch.zeros_like(x))
