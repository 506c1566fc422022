"""ViT camera encoder: shapes, position-embedding resizing, the LBM policy with ``kind="vit"``, and exact agreement
with transformers' CLIP / SigLIP vision models loaded from a local ``save_pretrained`` dir."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openlbm.configs.presets import policy_preset as preset
from openlbm.models.vision import VisionConfig
from openlbm.models.vit import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ViTConfig
from openlbm.policies.pretrained import load_vision_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))
from policy_helpers import ARM, make_batch, make_stats  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HF_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8)
TINY_CLIP = ViTConfig(patch_size=8, width=32, depth=2, heads=4, mlp_dim=64, pos_grid=4, cls_token=True, pool="cls",
                      pre_norm=True, patch_bias=False, act="quick_gelu", eps=1e-5, image_mean=CLIP_MEAN,
                      image_std=CLIP_STD)
TINY_SIGLIP = replace(TINY_CLIP, cls_token=False, pool="mean", pre_norm=False, patch_bias=True, act="gelu_tanh",
                      eps=1e-6, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD)


def test_shapes_pos_resize_and_pooling() -> None:
    enc = VisionConfig(kind="vit", vit=TINY_CLIP).build(24)
    assert enc(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)).shape == (5, 24)
    assert enc(torch.randint(0, 256, (2, 3, 72, 48), dtype=torch.uint8)).shape == (2, 24)  # non-square grid
    vit = enc.backbone
    x = torch.randn(3, 3, 40, 24)
    assert vit(x).shape == (3, 1 + 5 * 3, 32)  # class token + 5x3 patches
    pos = vit.position_embedding(4, 4)
    assert pos is vit.pos_embed  # native grid: no resizing
    assert vit.position_embedding(6, 2).shape == (1 + 12, 32)
    mean_enc = VisionConfig(kind="vit", vit=TINY_SIGLIP).build(8)
    tokens = mean_enc.backbone(x)
    assert tokens.shape == (3, 15, 32)
    assert torch.allclose(mean_enc.pool(tokens), tokens.mean(dim=1))
    with pytest.raises(ValueError, match="cls_token"):
        ViTConfig(cls_token=False, pool="cls")
    with pytest.raises(ValueError, match="smaller than one"):
        vit(torch.randn(1, 3, 4, 4))


def _save_hf(kind: str, directory: Path) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**HF_SIZES))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**HF_SIZES))
    model.eval()
    model.save_pretrained(str(directory))  # safetensors by default
    assert (directory / "model.safetensors").is_file()
    return model


@pytest.mark.parametrize(("kind", "cfg"), [("clip", TINY_CLIP), ("siglip", TINY_SIGLIP)])
def test_matches_transformers_vision_model(kind: str, cfg: ViTConfig, tmp_path: Path) -> None:
    hf = _save_hf(kind, tmp_path / kind)
    enc = VisionConfig(kind="vit", vit=cfg, crop_frac=1.0).build(16).eval()
    loaded = load_vision_weights(enc, tmp_path / kind)
    assert "blocks.1.attn.qkv.weight" in loaded
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    pixels = enc.preprocess(images, None)  # the same normalized input for both
    with torch.no_grad():
        ours = enc.backbone(pixels)
        out = hf(pixel_values=pixels)
        theirs = out.last_hidden_state
        if kind == "clip":  # CLIP's last_hidden_state is before post_layernorm; its pooled output after
            theirs = getattr(hf, "vision_model", hf).post_layernorm(theirs)  # transformers 4 vs 5
            assert torch.allclose(enc.pool(ours), out.pooler_output, atol=1e-5)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_open_clip_layout_and_mismatch_errors(tmp_path: Path) -> None:
    """An open_clip-named copy of our own weights round-trips; a wrong config lists what does not fit."""
    enc = VisionConfig(kind="vit", vit=TINY_CLIP).build(8)
    sd = enc.backbone.state_dict()
    oc = {"visual.conv1.weight": sd["patch_embed.weight"], "visual.class_embedding": sd["cls_token"],
          "visual.positional_embedding": sd["pos_embed"], "visual.proj": torch.randn(32, 16)}
    for name in ("ln_pre", "ln_post"):
        oc |= {f"visual.{name}.{p}": sd[f"{name}.{p}"] for p in ("weight", "bias")}
    for i in range(2):
        pre, ours = f"visual.transformer.resblocks.{i}.", f"blocks.{i}."
        oc |= {pre + "attn.in_proj_weight": sd[ours + "attn.qkv.weight"], pre + "attn.in_proj_bias": sd[ours + "attn.qkv.bias"]}
        for theirs, mine in [("ln_1", "ln1"), ("ln_2", "ln2"), ("attn.out_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc1"),
                             ("mlp.c_proj", "mlp.fc2")]:
            oc |= {f"{pre}{theirs}.{p}": sd[f"{ours}{mine}.{p}"] for p in ("weight", "bias")}
    save_file({k: v.contiguous() for k, v in oc.items()}, str(tmp_path / "oc.safetensors"))
    fresh = VisionConfig(kind="vit", vit=TINY_CLIP).build(8)
    load_vision_weights(fresh, tmp_path / "oc.safetensors")
    assert all(torch.equal(v, sd[k]) for k, v in fresh.backbone.state_dict().items())

    wrong = VisionConfig(kind="vit", vit=replace(TINY_CLIP, depth=1, pos_grid=3, pre_norm=False)).build(8)
    with pytest.raises(ValueError, match=r"open_clip layout.*14 unexpected keys.*pos_embed: ours \(10, 32\)"):
        load_vision_weights(wrong, tmp_path / "oc.safetensors")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_vision_weights(fresh, tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_vision_weights(fresh, tmp_path)


def test_policy_with_vit_builds_trains_and_round_trips(tmp_path: Path) -> None:
    _save_hf("clip", tmp_path / "clip")
    # crop_frac 1: 32 px images make a 4x4 patch grid, the smallest accepted
    vision = replace(preset("debug").vision, kind="vit", vit=TINY_CLIP, pretrained=tmp_path / "clip", crop_frac=1.0)
    cfg = replace(preset("debug"), vision=vision)
    torch.manual_seed(0)
    policy = cfg.build([ARM], {"arm": make_stats(ARM)})
    loss = policy.compute_loss(make_batch([ARM], cfg.horizon))[0]["action"]
    assert torch.isfinite(loss)
    loss.backward()
    assert policy.model.vision.backbone.blocks[0].attn.qkv.weight.grad is not None
    groups = {g["name"]: g["lr_mult"] for g in policy.param_groups(0.01)}
    assert groups["vision_decay"] == cfg.vision.lr_mult
    policy.save(tmp_path / "policy")
    from openlbm.policies.lbm import LBMPolicy

    again = LBMPolicy.load(tmp_path / "policy")
    assert again.config.vision.vit == TINY_CLIP
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in policy.state_dict().items())
