"""`lbm data convert` speed: 1 worker vs N workers, and how much of the time is reading vs writing.

Builds a robomimic-layout HDF5 file with h5py (2 cameras ``--size`` px, ``--episodes`` x ``--frames``) and prints,
side by side: (a) reading + decoding + checking every episode alone (``source.episode``), (b) a full conversion
with 1 worker, (c) with ``--workers`` workers, and the speed-up b / c. Main-process work (encode + commit) is
roughly b - a: it bounds the speed-up however many workers read.

    python bench/convert.py [--episodes 24] [--frames 50] [--size 84] [--workers 2] [--codec h264|av1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from openlbm.data.convert.driver import ConvertOptions, check_episode, convert
from openlbm.data.convert.robomimic import RobomimicSource


def build(path: Path, episodes: int, frames: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    noise = rng.integers(0, 16, (size, size, 3))
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}})
        for d in range(episodes):
            g = data.create_group(f"demo_{d}")
            g.attrs["num_samples"] = frames
            t = np.arange(frames)[:, None, None]
            for cam, seed in (("agentview_image", 0.0), ("robot0_eye_in_hand_image", 2.0)):
                r = 128 + 80 * np.sin(x / 12 + t / 4 + seed + d)
                gch = 128 + 80 * np.cos(y / 14 + d + 0 * t)
                b = 90 + 40 * np.sin((x + y) / 20 + 0.3 * t)
                img = np.stack([r, gch, b], -1) + noise  # [T, H, W, 3]
                g.create_dataset(f"obs/{cam}", data=np.clip(img, 0, 255).astype(np.uint8))
            g.create_dataset("obs/robot0_eef_pos", data=rng.standard_normal((frames, 3)))
            g.create_dataset("obs/robot0_gripper_qpos", data=rng.standard_normal((frames, 2)))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (frames, 7)))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--codec", default="h264")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = build(Path(tmp) / "src.hdf5", a.episodes, a.frames, a.size)
        source = RobomimicSource(src)
        t0 = time.perf_counter()
        for i in range(len(source)):
            check_episode(source.episode(i), source.features())
        read_s = time.perf_counter() - t0
        runs = {}
        for w in (1, a.workers):
            rep = convert(RobomimicSource(src), Path(tmp) / f"out{w}", "robomimic", ConvertOptions(workers=w, video_codec=a.codec))
            assert not rep.problems, rep.problems
            runs[w] = rep.seconds
        n = a.episodes * a.frames
        print(f"{a.episodes} episodes x {a.frames} frames, 2 cameras {a.size}px, {a.codec}")
        print(f"read+decode+check only      {read_s:7.2f} s  {n / read_s:8.0f} frames/s")
        print(f"convert, 1 worker           {runs[1]:7.2f} s  {n / runs[1]:8.0f} frames/s")
        print(f"convert, {a.workers} workers          {runs[a.workers]:7.2f} s  {n / runs[a.workers]:8.0f} frames/s")
        print(f"speed-up {a.workers} workers / 1       {runs[1] / runs[a.workers]:7.2f}x")


if __name__ == "__main__":
    main()
