"""Initialising the vision backbone from a local pretrained weights file (safetensors only; never downloaded).

Supported key layouts (detected from the file):
- torchvision / timm ``resnet18`` (``conv1.weight``, ``bn1.weight``, ``layer1.0.conv1.weight`` ...): our ResNet
  uses the same names, BatchNorm affine weights initialise the GroupNorms (running statistics are dropped), the
  classifier ``fc.*`` is ignored. Fits ``VisionConfig(widths=(64, 128, 256, 512), depths=(2, 2, 2, 2),
  stem_width=64)``, the ``base``/``large`` default. Keys may carry a ``model.`` / ``backbone.`` / ``resnet.`` prefix.
- openlbm: a policy's ``model.safetensors`` (``model.vision.backbone.*``) or a saved ``VisionEncoder``
  (``backbone.*``), any widths, as long as they match.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from openlbm.models.vision import VisionEncoder

log = logging.getLogger(__name__)

HOW_TO = (
    "export one on a machine that has the weights, e.g. with torchvision: `python -c \"import torchvision, "
    "safetensors.torch as st; m = torchvision.models.resnet18(weights='IMAGENET1K_V1'); "
    "st.save_file(m.state_dict(), 'resnet18.safetensors')\"` (or timm: `timm.create_model('resnet18', "
    "pretrained=True).state_dict()`), copy the file here and set policy.vision.pretrained=PATH; "
    "or set policy.vision.pretrained=None to train from scratch. openlbm never downloads weights."
)

_PREFIXES = ("model.vision.backbone.", "vision.backbone.", "backbone.", "model.", "resnet.", "visual.trunk.")


def _strip_prefix(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "conv1.") for k in tensors):
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


def load_vision_weights(encoder: VisionEncoder, path: Path) -> list[str]:
    """Copy the backbone weights in ``path`` into ``encoder.backbone``; returns the keys loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vision weights {path} not found: {HOW_TO}")
    if path.suffix != ".safetensors":
        raise ValueError(f"pretrained vision weights must be a .safetensors file (no pickles), got {path}")
    src = _strip_prefix(load_file(str(path)))
    if "conv1.weight" not in src:
        raise ValueError(
            f"{path}: no ResNet layout recognised (expected keys like 'conv1.weight', 'layer1.0.conv1.weight', "
            f"optionally under one of {_PREFIXES}); first keys: {sorted(src)[:8]}"
        )
    target = encoder.backbone.state_dict()
    missing = sorted(k for k in target if k not in src)
    mismatched = [f"{k}: ours {tuple(v.shape)} vs file {tuple(src[k].shape)}" for k, v in target.items()
                  if k in src and src[k].shape != v.shape]
    if missing or mismatched:
        raise ValueError(
            f"{path} does not fit policy.vision (widths/depths/stem_width): "
            f"{len(missing)} missing keys {missing[:6]}, {len(mismatched)} shape mismatches {mismatched[:6]}. "
            "torchvision/timm resnet18 needs widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_width=64"
        )
    encoder.backbone.load_state_dict({k: src[k].to(v.dtype) for k, v in target.items()})
    log.info("vision backbone initialised from %s (%d tensors)", path, len(target))
    return sorted(target)
