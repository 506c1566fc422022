"""Vision encoder shared by every camera: a GroupNorm ResNet with spatial-softmax keypoints.

Images arrive as uint8 ``[N, 3, Hi, Wi]`` and become floats only here. Training applies a random crop and color
jitter (vectorized over the batch, one draw per image); evaluation takes the center crop of the same size, so the
network always sees ``crop_frac`` of each side. The layer names mirror torchvision's ResNet (``conv1``,
``layer1.0.conv1``, ``downsample.0`` ...) so that a torchvision/timm ``resnet18`` state dict maps onto the
``(64, 128, 256, 512) x (2, 2, 2, 2)`` configuration; norms are GroupNorm (BatchNorm's running statistics are
bad news under small per-GPU batches and EMA), and a pretrained BatchNorm's affine weights initialise them.
``kind="vit"`` swaps the ResNet + keypoints for a ViT + class-token/mean pooling (``openlbm.models.vit``); the
output contract, one ``dim``-wide token per image, is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openlbm.models.vit import TokenPool, ViTConfig

# ImageNet statistics: what torchvision/timm ResNets were trained with (harmless for random init).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RandFn = Callable[[tuple[int, ...]], Tensor]
"""``rand(shape) -> uniform [0, 1) tensor of that shape`` (lets the policy draw per-sample seeded numbers)."""


@dataclass(frozen=True)
class VisionConfig:
    """Architecture and augmentation of the shared camera encoder."""

    kind: Literal["resnet", "vit"] = "resnet"
    """Backbone: GroupNorm ResNet + spatial-softmax keypoints (``widths``... below), or a ViT (``vit``)."""
    widths: tuple[int, ...] = (64, 128, 256, 512)
    """Channels of each ResNet stage (the first stage keeps the stem's resolution, the others halve it)."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Basic blocks per stage; ``(2, 2, 2, 2)`` with the default widths is ResNet-18."""
    stem_width: int = 64
    """Channels of the 7x7/2 stem convolution (ResNet-18: 64)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints; each image becomes ``2 * num_keypoints`` numbers, then one token."""
    group_size: int = 16
    """Channels per GroupNorm group (``groups = channels // group_size``, at least 1)."""
    crop_frac: float = 0.92
    """Side fraction kept by the random (train) / center (eval) crop."""
    color_jitter: float = 0.2
    """Brightness, contrast and saturation jitter strength in training (0 disables)."""
    vit: ViTConfig = field(default_factory=ViTConfig)
    """ViT architecture and input normalization (used when ``kind="vit"``)."""
    pretrained: Path | None = None
    """Local safetensors file (torchvision/timm ``resnet18`` layout or an openlbm checkpoint) to initialise from;
    with ``kind="vit"`` a file or a ``save_pretrained`` dir of a transformers CLIP/SigLIP vision model or an
    open_clip ViT. Never downloaded: export one yourself (see docs/model.md)."""
    pretrained_lr_mult: float = 0.1
    """Learning-rate multiplier for the encoder when ``pretrained`` is set (``param_groups``' ``encoder_lr_mult``
    overrides it when given)."""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError(f"vision widths {self.widths} and depths {self.depths} must be non-empty, equal length")
        if self.kind not in ("resnet", "vit"):
            raise ValueError(f"vision kind must be 'resnet' or 'vit', got {self.kind!r}")
        if not 0.3 <= self.crop_frac <= 1.0:
            raise ValueError(f"vision crop_frac must be in [0.3, 1], got {self.crop_frac}")

    def build(self, dim: int) -> VisionEncoder:
        return VisionEncoder(self, dim)


def _gn(channels: int, group_size: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // group_size), channels)


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm (names follow torchvision: conv1/bn1/conv2/bn2/downsample)."""

    def __init__(self, cin: int, cout: int, stride: int, group_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _gn(cout, group_size)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _gn(cout, group_size)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout, group_size))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    """Configurable-width/depth ResNet trunk without the classifier: ``[N, 3, H, W] -> [N, C, H/32, W/32]``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.stem_width, 7, 2, 3, bias=False)
        self.bn1 = _gn(cfg.stem_width, cfg.group_size)
        cin = cfg.stem_width
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, width, stride, cfg.group_size))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(cfg.widths)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class SpatialSoftmax(nn.Module):
    """Feature map -> expected (x, y) of ``K`` learned keypoints (Levine et al. 2016): ``[N, C, h, w] -> [N, 2K]``."""

    def __init__(self, channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, feat: Tensor) -> Tensor:
        n, _, h, w = feat.shape
        logits = self.proj(feat).flatten(2)  # [N, K, h, w] -> [N, K, h*w]
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # [h*w, 2]
        kp = attn @ coords  # [N, K, h*w] @ [h*w, 2] -> [N, K, 2]
        return kp.reshape(n, -1)  # [N, K, 2] -> [N, 2K]


def crop_size(image_size: tuple[int, int], crop_frac: float) -> tuple[int, int]:
    return max(8, round(image_size[0] * crop_frac)), max(8, round(image_size[1] * crop_frac))


def random_crop(img: Tensor, size: tuple[int, int], rand: RandFn) -> Tensor:
    """Per-image random crop by integer gather: ``[N, C, H, W] -> [N, C, ch, cw]``."""
    n, c, h, w = img.shape
    ch, cw = size
    u = rand((n, 2)).to(img.device)
    oy = (u[:, 0] * (h - ch + 1)).long().clamp(max=h - ch)
    ox = (u[:, 1] * (w - cw + 1)).long().clamp(max=w - cw)
    rows = oy[:, None] + torch.arange(ch, device=img.device)  # [N, ch]
    cols = ox[:, None] + torch.arange(cw, device=img.device)  # [N, cw]
    idx_n = torch.arange(n, device=img.device)[:, None, None]
    out = img.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C] -> [N, ch, cw, C]
    return out.permute(0, 3, 1, 2)  # [N, ch, cw, C] -> [N, C, ch, cw]


def center_crop(img: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = img.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return img[..., top : top + size[0], left : left + size[1]]


def color_jitter(img: Tensor, strength: float, rand: RandFn) -> Tensor:
    """Brightness, contrast and saturation factors in ``[1 - s, 1 + s]``, one draw per image; ``img`` in [0, 1]."""
    n = img.shape[0]
    f = 1.0 + strength * (2.0 * rand((n, 3)).to(img.device, img.dtype) - 1.0)  # [N, 3]
    img = img * f[:, 0, None, None, None]
    gray = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2])[:, None]  # [N, 1, H, W]
    mean = gray.mean(dim=(2, 3), keepdim=True)
    img = (img - mean) * f[:, 1, None, None, None] + mean
    gray = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2])[:, None]
    img = gray + (img - gray) * f[:, 2, None, None, None]
    return img.clamp(0.0, 1.0)


class VisionEncoder(nn.Module):
    """uint8 images -> one ``dim``-wide token per image: ``[N, 3, Hi, Wi] -> [N, dim]``."""

    def __init__(self, cfg: VisionConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone: nn.Module
        self.pool: nn.Module
        if cfg.kind == "vit":
            self.backbone = cfg.vit.build()
            self.pool = TokenPool(cfg.vit)
            self.out = nn.Linear(cfg.vit.width, dim)
            mean, std = cfg.vit.image_mean, cfg.vit.image_std
        else:
            self.backbone = ResNet(cfg)
            self.pool = SpatialSoftmax(self.backbone.out_channels, cfg.num_keypoints)
            self.out = nn.Linear(2 * cfg.num_keypoints, dim)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)  # [3] -> [1, 3, 1, 1]
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)  # [3] -> [1, 3, 1, 1]

    def preprocess(self, images: Tensor, rand: RandFn | None) -> Tensor:
        """uint8 -> normalized float crops; ``rand`` given = training augmentation, ``None`` = center crop."""
        size = crop_size((images.shape[-2], images.shape[-1]), self.cfg.crop_frac)
        if rand is None:
            x = center_crop(images, size).float() / 255.0
        else:
            x = random_crop(images, size, rand).float() / 255.0
            if self.cfg.color_jitter > 0:
                x = color_jitter(x, self.cfg.color_jitter, rand)
        return (x - self.mean) / self.std

    def forward(self, images: Tensor, rand: RandFn | None = None) -> Tensor:
        return self.out(self.pool(self.backbone(self.preprocess(images, rand))))
