"""Vision encoder: shapes, train-only augmentation, pretrained loading (torchvision layout) and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openlbm.models.vision import VisionConfig, color_jitter, random_crop
from openlbm.policies.pretrained import load_vision_weights

TINY = VisionConfig(widths=(8, 16), depths=(1, 1), stem_width=8, num_keypoints=4, group_size=4)


def test_shapes_and_augmentation_only_in_training() -> None:
    enc = TINY.build(24)
    img = torch.randint(0, 256, (5, 3, 40, 48), dtype=torch.uint8)
    assert enc(img).shape == (5, 24)
    assert torch.equal(enc(img), enc(img))  # eval path: center crop, deterministic
    g = torch.Generator().manual_seed(0)
    rand = lambda shape: torch.rand(shape, generator=g)  # noqa: E731
    a, b = enc(img, rand), enc(img, rand)
    assert not torch.equal(a, b)


def test_random_crop_is_a_window_of_the_image() -> None:
    img = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)  # [N, C, H, W]
    out = random_crop(img, (6, 7), lambda shape: torch.full(shape, 0.99))
    assert torch.equal(out, img[:, :, 4:10, 5:12])  # u -> 1 picks the bottom-right window
    jit = color_jitter(torch.rand(4, 3, 8, 8), 0.4, lambda shape: torch.rand(shape))
    assert jit.min() >= 0 and jit.max() <= 1


def torchvision_resnet18_layout() -> dict[str, torch.Tensor]:
    """A state dict with torchvision resnet18's key names and shapes (BatchNorm stats + fc included)."""
    cfg = VisionConfig()
    sd = {k: torch.randn(v.shape) for k, v in cfg.build(8).backbone.state_dict().items()}
    for k in [k for k in sd if ".bn" in k or k.startswith("bn") or "downsample.1" in k]:
        if k.endswith("weight"):
            base = k[: -len("weight")]
            sd[base + "running_mean"] = torch.zeros(sd[k].shape)
            sd[base + "running_var"] = torch.ones(sd[k].shape)
            sd[base + "num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return sd


def test_loads_torchvision_layout(tmp_path: Path) -> None:
    sd = torchvision_resnet18_layout()
    save_file(sd, str(tmp_path / "resnet18.safetensors"))
    enc = VisionConfig().build(8)
    loaded = load_vision_weights(enc, tmp_path / "resnet18.safetensors")
    assert "layer4.1.conv2.weight" in loaded
    assert torch.equal(enc.backbone.layer2[0].downsample[1].weight, sd["layer2.0.downsample.1.weight"])


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_vision_weights(TINY.build(8), tmp_path / "missing.safetensors")
    save_file(torchvision_resnet18_layout(), str(tmp_path / "r18.safetensors"))
    with pytest.raises(ValueError, match="does not fit policy.vision"):
        load_vision_weights(TINY.build(8), tmp_path / "r18.safetensors")
