"""Shared by the converter tests: the committed real-tool fixtures, PSNR, and dataset comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openlbm.data.dataset import RobotDataset

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ROBOMIMIC = FIXTURES / "robomimic" / "lift_tiny.hdf5"
LEROBOT_V21 = FIXTURES / "lerobot_v21" / "tiny"
MIN_PSNR_DB = 35.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 image stacks, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def episodes(root: Path) -> list[dict]:
    """Every episode of a v3 dataset, decoded (low-dim columns, camera frames, task)."""
    ds = RobotDataset(root)
    return [ds.get_episode(e) for e in range(ds.meta.num_episodes)]


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same features, tasks, low-dim values and decoded frames (bit-exact) in the same episodes."""
    ea, eb = episodes(a), episodes(b)
    assert len(ea) == len(eb)
    for e, (x, y) in enumerate(zip(ea, eb, strict=True)):
        assert sorted(x) == sorted(y), e
        for k in x:
            if k == "task":
                assert x[k] == y[k], e
            else:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"episode {e} key {k}")
