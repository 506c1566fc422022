"""Fixtures for trainer tests: tiny real datasets written with the DATA writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec


def make_dataset(
    root: Path, episodes: int = 3, frames: int = 12, size: int = 32, cameras: tuple[str, ...] = ("corner2",),
    state_dim: int = 4, action_dim: int = 4, robot_type: str = "toy_arm", seed: int = 0,
    tasks: tuple[str, ...] = ("push the block", "open the drawer"), action_scale: float = 1.0,
) -> Path:
    """A small dataset with random-ish images (smooth gradients + noise) and smooth state/action trajectories."""
    rng = np.random.default_rng(seed)
    features = {f"observation.images.{c}": FeatureSpec("video", (size, size, 3)) for c in cameras}
    features["observation.state"] = FeatureSpec("float32", (state_dim,))
    features["action"] = FeatureSpec("float32", (action_dim,))
    yy, xx = np.mgrid[0:size, 0:size]
    with DatasetWriter.create(root, features, fps=10.0, robot_type=robot_type) as w:
        for ep in range(episodes):
            task = tasks[ep % len(tasks)]
            phase = rng.uniform(0, 2 * np.pi, size=state_dim)
            for t in range(frames):
                s = np.sin(phase + 0.3 * t).astype(np.float32)
                frame: dict = {"observation.state": s, "action": (action_scale * np.cos(phase[:action_dim] + 0.3 * t)).astype(np.float32)}
                for i, c in enumerate(cameras):
                    base = ((xx * (3 + i) + yy * 2 + 7 * t + 40 * ep) % 256).astype(np.uint8)
                    img = np.stack([base, base[::-1], 255 - base], axis=-1)
                    noise = rng.integers(0, 16, size=img.shape, dtype=np.uint8)
                    frame[f"observation.images.{c}"] = img + noise
                w.add_frame(frame, task=task)
            w.save_episode()
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def dataset_factory() -> object:
    """:func:`make_dataset` for tests that write their own variants (``--import-mode=importlib`` cannot import it)."""
    return make_dataset
