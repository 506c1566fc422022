"""Spatial detail that cannot silently vanish: every preset's encoder keeps a feature grid at its sizes, its token
follows an object's position, too-small settings are refused, and a collapsed encoder is caught by the same check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openlbm.configs.presets import POLICY_PRESETS
from openlbm.models.vision import MIN_GRID, VisionConfig, VisionEncoder
from openlbm.policies.pretrained import load_vision_weights

DEFAULT_SIZE = {"debug": 32, "small": 64, "aloha": 64, "base": 128, "large": 128}
"""The image size each preset is used at (tests and smoke runs, the quickstart, GPU pretraining)."""


def render(size: int, x: float, y: float, seed: int = 0) -> torch.Tensor:
    """A scene: a fixed textured table and a red block centred at (x, y) (fractions of the side): uint8 [3, s, s]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    table = np.stack([0.5 + 0.2 * np.sin(9 * xx), 0.45 + 0.2 * np.cos(7 * yy), 0.4 + 0.1 * xx * yy], axis=-1)
    img = table + 0.03 * rng.standard_normal(table.shape)
    half = max(2, size // 10)
    cy, cx = int(y * size), int(x * size)
    img[cy - half : cy + half, cx - half : cx + half] = (0.9, 0.1, 0.1)
    return torch.from_numpy((img.clip(0, 1) * 255).astype(np.uint8)).permute(2, 0, 1)  # [s, s, 3] -> [3, s, s]


def token_follows_position(enc: VisionEncoder, size: int) -> bool:
    """Two renders that differ only in the block's position give clearly different tokens (eval mode)."""
    a, b = render(size, 0.3, 0.35), render(size, 0.7, 0.65)
    with torch.no_grad():
        ta, tb = enc.eval()(torch.stack([a, b]))
    return bool((ta - tb).norm() > 1e-3 * (ta.norm() + tb.norm()))


def smallest_size(cfg: VisionConfig) -> int:
    """The smallest square image side the encoder setting accepts."""
    for s in range(8, 1024):
        if min(cfg.feature_grid((s, s))) >= MIN_GRID:
            return s
    raise AssertionError("no accepted size below 1024")


def build(cfg: VisionConfig) -> VisionEncoder:
    torch.manual_seed(0)
    enc = cfg.build(32)
    if cfg.imagenet_weights:
        load_vision_weights(enc, cfg.pretrained)
    return enc


@pytest.mark.parametrize("name", list(POLICY_PRESETS))
def test_every_preset_keeps_a_grid_and_follows_the_object(name: str) -> None:
    cfg = POLICY_PRESETS[name]().vision
    default = DEFAULT_SIZE[name]
    assert min(cfg.feature_grid((default, default))) >= 6, cfg.feature_grid((default, default))
    enc = build(cfg)
    for size in (default, smallest_size(cfg)):
        cfg.check_image_size((size, size))
        with torch.no_grad():
            feat = enc.features(render(size, 0.5, 0.5)[None])
        assert tuple(feat.shape[-2:]) == cfg.feature_grid((size, size)), f"{name} at {size} px"
        assert token_follows_position(enc, size), f"{name} at {size} px: the token ignores where the block is"


def test_collapsed_encoder_fails_the_check() -> None:
    # the former `small` encoder at 32 px: a 1x1 map, so spatial-softmax keypoints are the same for every image
    old_small = VisionConfig(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), stem_width=32, stem_pool=True)
    assert old_small.feature_grid((32, 32)) == (1, 1)
    assert not token_follows_position(build(old_small), 32)
    with pytest.raises(ValueError, match=r"32x32 px give the resnet vision encoder a 1x1 feature grid; the minimum is 4x4"):
        old_small.check_image_size((32, 32))


@pytest.mark.parametrize("name", list(POLICY_PRESETS))
def test_sizes_below_the_minimum_are_refused(name: str) -> None:
    cfg = POLICY_PRESETS[name]().vision
    too_small = smallest_size(cfg) - 1
    with pytest.raises(ValueError, match=f"{too_small}x{too_small} px .* the minimum is 4x4"):
        cfg.check_image_size((too_small, too_small))


def test_model_refuses_a_blind_image_size() -> None:
    from openlbm.configs.presets import small_policy
    from openlbm.models.lbm import LBMModel
    from openlbm.types import EmbodimentSpec

    cfg = small_policy()
    emb = EmbodimentSpec("arm", ("corner2",), (16, 16), 4, 4)
    with pytest.raises(ValueError, match="16x16 px give the efficientnet vision encoder a 2x2 feature grid"):
        LBMModel([emb], cfg.vision, cfg.trunk, cfg.flow, cfg.n_obs_steps, cfg.horizon, text_dim=8)


@pytest.mark.parametrize("size", [32, 64])
def test_feature_grid_matches_the_backbone(size: int) -> None:
    for cfg in (VisionConfig(kind="efficientnet", efficientnet_blocks=5), VisionConfig(widths=(8, 16, 32), depths=(1, 1, 1),
                stem_width=8, group_size=4, stem_pool=False), VisionConfig(kind="efficientnet", efficientnet_blocks=8, upsample=2)):
        with torch.no_grad():
            feat = cfg.build(8).features(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        assert tuple(feat.shape[-2:]) == cfg.feature_grid((size, size))
