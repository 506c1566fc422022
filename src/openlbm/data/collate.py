"""Stack mixture samples into :class:`openlbm.types.Batch`.

Samples come from :class:`openlbm.data.mixture.MixtureDataset` (cameras already renamed to the embodiment's names,
state/action already zero-padded). A camera that a sample's embodiment lacks is filled with zeros and flagged in
``batch.meta["image_is_pad"][camera]``. Cached vision features (``observation.features.<camera>``, read from a
feature cache instead of decoding video) are stacked and padded the same way into ``Observation.features``.
``latent_action`` / ``latent_is_pad`` are stacked when the samples carry
them (a mixture gives them to every sample or to none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from openlbm.types import (
    ACTION_KEY,
    FEATURE_PREFIX,
    IMAGE_PREFIX,
    LATENT_ACTION_KEY,
    STATE_KEY,
    Batch,
    Observation,
)


def collate_dict(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> a dict of stacked tensors (pin-able by the DataLoader); see :func:`batch_from_dict`."""
    if not samples:
        raise ValueError("collate_batch needs at least one sample")
    cams: list[str] = []
    for s in samples:
        cams.extend(k for k in s if k.startswith((IMAGE_PREFIX, FEATURE_PREFIX)) and k not in cams)
    out: dict[str, Any] = {}
    for cam in cams:
        ref = next(s[cam] for s in samples if cam in s)
        shapes = {tuple(s[cam].shape) for s in samples if cam in s}
        if len(shapes) > 1:
            raise ValueError(f"{cam}: samples have different image shapes {sorted(shapes)}; give the embodiments one image_size")
        out[cam] = torch.stack([s[cam] if cam in s else torch.zeros_like(ref) for s in samples])  # [B, T, 3, H, W] / [B, T, C, h, w]
        out[cam + ".is_pad"] = torch.tensor([cam not in s for s in samples])
    for key in (STATE_KEY, ACTION_KEY, "obs_is_pad", "action_is_pad", "action_dim_mask"):
        out[key] = torch.stack([s[key] for s in samples])
    with_latent = sum(LATENT_ACTION_KEY in s for s in samples)
    if with_latent not in (0, len(samples)):
        raise ValueError(f"{with_latent} of {len(samples)} samples carry {LATENT_ACTION_KEY}: a batch has it on every row or none")
    if with_latent:
        out[LATENT_ACTION_KEY] = torch.stack([s[LATENT_ACTION_KEY] for s in samples])  # [B, H, L]
        out["latent_is_pad"] = torch.stack([s["latent_is_pad"] for s in samples])  # [B, H]
    for key in ("episode_index", "index", "dataset"):
        out[key] = torch.tensor([int(s.get(key, -1)) for s in samples], dtype=torch.long)
    out["task"] = [str(s["task"]) for s in samples]
    out["embodiment"] = [str(s.get("embodiment", "")) for s in samples]
    return out


def batch_from_dict(d: dict[str, Any]) -> Batch:
    cams = [k for k in d if k.startswith(IMAGE_PREFIX) and not k.endswith(".is_pad")]
    feats = [k for k in d if k.startswith(FEATURE_PREFIX) and not k.endswith(".is_pad")]
    obs = Observation(
        images={k[len(IMAGE_PREFIX) :]: d[k] for k in cams},
        features={k[len(FEATURE_PREFIX) :]: d[k] for k in feats} or None,
        state=d[STATE_KEY],
        instruction=list(d["task"]),
        embodiment=list(d["embodiment"]),
        obs_is_pad=d["obs_is_pad"],
    )
    meta = {k: d[k] for k in ("episode_index", "index", "dataset")}
    meta["image_is_pad"] = {k[len(IMAGE_PREFIX) :]: d[k + ".is_pad"] for k in cams}
    meta["image_is_pad"].update({k[len(FEATURE_PREFIX) :]: d[k + ".is_pad"] for k in feats})
    return Batch(obs=obs, action=d[ACTION_KEY], action_is_pad=d["action_is_pad"], action_dim_mask=d["action_dim_mask"], meta=meta,
                 latent_action=d.get(LATENT_ACTION_KEY), latent_is_pad=d.get("latent_is_pad"))


def collate_batch(samples: Sequence[dict[str, Any]]) -> Batch:
    """Mixture samples -> :class:`Batch` (images ``[B, T, 3, H, W]`` keyed by camera name without prefix)."""
    return batch_from_dict(collate_dict(samples))
