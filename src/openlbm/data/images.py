"""Image transforms shared by the data paths (robot-data mixtures, image-text streams) on uint8 channel-first tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 ``[..., 3, h0, w0]`` -> uint8 ``[..., 3, h, w]`` (bilinear, antialiased): how every dataset and image-text
    source is brought to its embodiment's image size. Unchanged when already that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    flat = images.reshape(-1, *images.shape[-3:]).float()  # [..., 3, h0, w0] -> [N, 3, h0, w0]
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*images.shape[:-2], *size)  # [N, 3, h, w] -> [..., 3, h, w]
