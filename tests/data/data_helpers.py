"""Tiny synthetic datasets with a known pixel pattern, shared by the data tests (imported via conftest's path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot_v3"
CAM = "observation.images.cam"


def pattern(ep: int, t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """The LeRobot fixture pattern: R = 2x + 9t, G = 3y + 60e, B = 40e (mod 256)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(2 * x + 9 * t) % 256, (3 * y + 60 * ep) % 256, np.full_like(x, (40 * ep) % 256)], -1).astype(np.uint8)


def smooth(ep: int, t: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A smooth image (compresses well: PSNR checks measure the codec, not aliasing of sharp wraps)."""
    y, x = np.mgrid[0:h, 0:w]
    r = 128 + 90 * np.sin(x / 9 + t / 3)
    g = 128 + 90 * np.cos(y / 10 + ep)
    b = 64 + 30 * (x + y) / (h + w) + 10 * ep
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def state_of(ep: int, t: int) -> np.ndarray:
    return np.array([ep, t, 0.5 * t - ep], np.float32)


def action_of(ep: int, t: int) -> np.ndarray:
    return np.array([ep * 100 + t, -t], np.float32)


FEATURES = {
    CAM: FeatureSpec("video", (32, 32, 3), ("height", "width", "channels")),
    "observation.state": FeatureSpec("float32", (3,), ("a", "b", "c")),
    "action": FeatureSpec("float32", (2,)),
    "next.success": FeatureSpec("bool", (1,)),
}


def write_episodes(w: DatasetWriter, lengths: Sequence[int], first_ep: int = 0, image: Callable = smooth) -> None:
    for k, n in enumerate(lengths):
        ep = first_ep + k
        for t in range(n):
            w.add_frame({CAM: image(ep, t), "observation.state": state_of(ep, t), "action": action_of(ep, t),
                         "next.success": t == n - 1}, task=f"task {ep % 2}")
        assert w.save_episode() == ep


def make_dataset(root: Path, lengths: Sequence[int] = (5, 8, 6), codec: str = "h264", finalize: bool = True,
                 image: Callable = smooth, fps: float = 10.0) -> Path:
    w = DatasetWriter.create(root, FEATURES, fps=fps, robot_type="toy", video_codec=codec)
    write_episodes(w, lengths, image=image)
    if finalize:
        w.finalize()
    return root

