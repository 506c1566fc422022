"""Random-window sampling speed vs raw sequential PyAV decoding of the same files.

Builds a synthetic dataset (2 cameras, 128x128, 50 episodes x 100 frames; ``--small``: 10 x 50) and prints:
(a) sequential decode frames/s (one process, PyAV, every frame converted to RGB),
(b) random windows through ``torch.utils.data.DataLoader`` (2 workers, shuffled, n_obs_steps=2, horizon=16),
    counting delivered camera frames/s, (c) the ratio b / a (target >= 0.5).

    python bench/dataloader.py [--small] [--root DIR] [--codec h264|av1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from openlbm.data.dataset import RobotDataset
from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec

CAMS = ("observation.images.left", "observation.images.right")


def build(root: Path, episodes: int, frames: int, size: int, codec: str) -> Path:
    if (root / "meta/info.json").exists():
        return root
    feats = {c: FeatureSpec("video", (size, size, 3)) for c in CAMS}
    feats["observation.state"] = FeatureSpec("float32", (8,))
    feats["action"] = FeatureSpec("float32", (7,))
    w = DatasetWriter.create(root, feats, fps=10, robot_type="bench", video_codec=codec)
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 24, (size, size, 3))
    for ep in range(episodes):
        for t in range(frames):
            base = np.stack([(x + 3 * t) % 256, (y + 5 * ep) % 256, (x + y + 2 * t) % 256], -1)
            frame = {c: ((base + noise + 40 * i) % 256).astype(np.uint8) for i, c in enumerate(CAMS)}
            frame["observation.state"] = rng.normal(size=8).astype(np.float32)
            frame["action"] = rng.normal(size=7).astype(np.float32)
            w.add_frame(frame, task=f"task {ep % 5}")
        w.save_episode()
    w.finalize()
    return root


def sequential_fps(root: Path, thread_type: str) -> float:
    files = sorted((root / "videos").rglob("*.mp4"))
    n, t0 = 0, time.perf_counter()
    for f in files:
        with av.open(str(f)) as c:
            c.streams.video[0].thread_type = thread_type
            for frame in c.decode(video=0):
                frame.to_ndarray(format="rgb24")
                n += 1
    return n / (time.perf_counter() - t0)


def random_window_fps(root: Path, workers: int, batches: int) -> float:
    ds = RobotDataset(root, n_obs_steps=2, horizon=16)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=32 * (batches + 2),
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=sampler, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         multiprocessing_context="forkserver" if workers else None)
    it = iter(loader)
    for _ in range(2):  # warm-up: workers start, decoders open
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += sum(b[c].shape[0] * b[c].shape[1] for c in CAMS)  # delivered camera frames
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="10 episodes x 50 frames, fewer batches")
    ap.add_argument("--root", type=Path, default=None, help="keep/reuse the synthetic dataset here")
    ap.add_argument("--codec", default="h264", choices=["h264", "av1"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    episodes, frames, batches = (10, 50, 20) if args.small else (50, 100, 100)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "bench"
        t0 = time.perf_counter()
        build(root, episodes, frames, 128, args.codec)
        print(f"dataset: {episodes} episodes x {frames} frames, 2 cameras 128x128, {args.codec}, "
              f"built in {time.perf_counter() - t0:.1f}s")
        # the faster of FFmpeg's default threading and single-threaded decoding: the harshest baseline
        seq = max(sequential_fps(root, "SLICE"), sequential_fps(root, "NONE"), sequential_fps(root, "AUTO"))
        rnd = random_window_fps(root, args.workers, batches)
        print(f"(a) sequential PyAV decode, 1 process (best of threading modes):{seq:8.0f} frames/s")
        print(f"(b) random windows, DataLoader {args.workers} workers, T=2:                {rnd:8.0f} frames/s")
        print(f"(c) ratio b/a:                                                  {rnd / seq:8.2f}   (target >= 0.5)")


if __name__ == "__main__":
    main()
