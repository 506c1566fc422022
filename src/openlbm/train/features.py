"""Feature caches for a frozen vision backbone, attached to a training mixture (and ``lbm data embed``).

With ``policy.vision.frozen`` the backbone is a fixed function of the pixels, so every frame's feature map is
computed once (:func:`openlbm.data.features.build_cache`, here given the policy's backbone as the encoder) and the
loader reads it instead of decoding video; the model then runs only the trainable pooling on it. A cache is keyed by
the dataset's fingerprint and the encoder's (the backbone's weights and every setting that changes its output),
so neither can go stale. The cost: pixel-level augmentation (random crops, color jitter) cannot apply to cached
features; a frozen encoder shifts its feature maps instead, cached or not, so both paths train the same model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openlbm.data.features import FeatureCache, build_cache, cache_dir, dataset_fingerprint
from openlbm.data.images import resize_images
from openlbm.jsonio import to_jsonable
from openlbm.models.vision import VisionEncoder
from openlbm.types import chw_from_hwc

log = logging.getLogger(__name__)

FEATURE_FIELDS: dict[str, tuple[str, ...]] = {
    "efficientnet": ("kind", "efficientnet_blocks", "crop_frac", "upsample"),
    "resnet": ("kind", "widths", "depths", "stem_width", "stem_pool", "group_size", "crop_frac", "upsample"),
    "vit": ("kind", "vit", "crop_frac", "upsample"),
}
"""Per backbone kind, the ``VisionConfig`` fields that change what :meth:`VisionEncoder.features` computes (the
weights do the rest); pooling, neck and learning-rate settings do not, so they share a cache."""


def encoder_config(vision: VisionEncoder) -> dict[str, Any]:
    cfg = to_jsonable(vision.cfg)
    return {k: cfg[k] for k in FEATURE_FIELDS[vision.cfg.kind]}


def encoder_fingerprint(vision: VisionEncoder) -> str:
    """sha256 of the feature-relevant settings and every backbone tensor's name, shape and bytes."""
    h = hashlib.sha256(json.dumps(encoder_config(vision), sort_keys=True).encode())
    for name, t in sorted(vision.backbone.state_dict().items()):
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def make_encode(vision: VisionEncoder, image_size: tuple[int, int], batch_size: int = 256):
    """Decoded uint8 frames ``[n, H, W, 3]`` -> float16 ``[n, C, h, w]``: resized to the policy's camera size exactly as
    the training loader resizes, then the frozen backbone."""
    device = next(vision.parameters()).device

    def encode(frames: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(frames), batch_size):
            x = resize_images(chw_from_hwc(frames[i : i + batch_size]), image_size)  # [n, H, W, 3] -> [n, 3, h, w]
            out.append(vision.features(x.to(device)).to(torch.float16).cpu().numpy())
        return np.concatenate(out)

    return encode


def cache_for(vision: VisionEncoder, root: Path, cameras: list[str], image_size: tuple[int, int],
              cache_root: Path, progress: Any = None) -> FeatureCache:
    """The cache of ``cameras`` of the dataset at ``root`` under ``vision``'s frozen backbone (built when missing)."""
    if not vision.cfg.cacheable:
        raise ValueError("feature caches need a frozen convolutional vision backbone (policy.vision.frozen=True with "
                         "kind resnet or efficientnet)")
    ds_fp, enc_fp = dataset_fingerprint(root), encoder_fingerprint(vision)
    path = cache_dir(cache_root, root, cameras, image_size, ds_fp, enc_fp)
    was_training = vision.training
    vision.eval()
    try:
        return build_cache(path, root, cameras, image_size, ds_fp, enc_fp, encoder_config(vision),
                           make_encode(vision, image_size), progress)
    finally:
        vision.train(was_training)


def attach_feature_caches(data: Any, vision: VisionEncoder, cache_root: Path) -> list[Path]:
    """Point every source of a training mixture (:class:`~openlbm.data.mixture.MixtureData`) at its feature cache,
    building the missing ones; returns the cache folders."""
    out = []
    for part in data.dataset.parts:
        cams = sorted(part.cams.values())
        cache = cache_for(vision, part.meta.root, cams, tuple(part.emb.image_size), cache_root)
        part.use_features(cache)
        out.append(cache.path)
    log.info("training on cached vision features: %s", ", ".join(str(p) for p in out))
    return out

