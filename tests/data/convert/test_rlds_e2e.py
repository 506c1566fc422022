"""End to end: the tensorflow-datasets-written RLDS fixture -> ``lbm data convert`` driver -> a valid v3 dataset
holding every step of the source (low-dim values exact, images within PSNR >= 35 dB, instructions, boundaries).

Needs the shared driver :func:`openlbm.data.convert.driver.convert` (branch convert-core).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from openlbm.data.convert import driver  # the shared driver (branch convert-core)
from openlbm.data.convert.rlds import RLDSSource
from openlbm.data.dataset import RobotDataset

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "rlds" / "tiny_oxe_rlds" / "1.0.0"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def test_convert_validate_round_trip(tmp_path: Path) -> None:
    source = RLDSSource(FIXTURE)
    dst = tmp_path / "converted"
    report = driver.convert(source, dst, "rlds")
    assert report.problems == [] and report.episodes == len(source) == 4
    done = subprocess.run([sys.executable, "-m", "openlbm.cli", "data", "validate", str(dst)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    ds = RobotDataset(dst)
    assert ds.meta.fps == source.fps and set(ds.meta.features) >= set(source.features())
    worst = 1e9
    for i, src_ep in enumerate(source):
        out = ds.get_episode(i)
        assert out["task"] == src_ep.task
        n = len(src_ep.frames["action"])
        assert int(ds.meta.ep_len[i]) == n  # episode boundaries kept
        for key in ("action", "observation.state", "next.reward"):
            np.testing.assert_array_equal(np.asarray(out[key], np.float32).reshape(n, -1), src_ep.frames[key])
        for cam in ("observation.images.image", "observation.images.wrist_image"):
            for t in range(n):
                worst = min(worst, psnr(out[cam][t], src_ep.frames[cam][t]))
    assert worst >= 35, f"worst frame PSNR {worst:.1f} dB"
