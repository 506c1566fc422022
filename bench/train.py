"""Training throughput: samples/s of a preset on this machine with real batches, and the data-wait share.

    python bench/train.py                      # small preset, 2 loader workers, 2 cams at 96 px
    python bench/train.py --preset debug --steps 20 --workers 0 2

Generates a synthetic dataset with the DATA writer (random-ish images: moving gradients + noise, so the video codec
does real work), then runs ``openlbm.train.loop.train`` for each worker count and reads ``metrics.jsonl``. The
first logged window (warm-up) is excluded. Target: data-wait share < 10% with 2 workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from openlbm.configs.presets import preset
from openlbm.configs.train import CheckpointConfig, LogConfig
from openlbm.data.writer import DatasetWriter
from openlbm.train.loop import train
from openlbm.train_command import with_datasets
from openlbm.types import FeatureSpec


def make_dataset(root: Path, episodes: int, frames: int, size: int, cameras: tuple[str, ...]) -> Path:
    rng = np.random.default_rng(0)
    features = {f"observation.images.{c}": FeatureSpec("video", (size, size, 3)) for c in cameras}
    features["observation.state"] = FeatureSpec("float32", (4,))
    features["action"] = FeatureSpec("float32", (4,))
    yy, xx = np.mgrid[0:size, 0:size]
    with DatasetWriter.create(root, features, fps=10.0, robot_type="bench_arm") as w:
        for ep in range(episodes):
            phase = rng.uniform(0, 2 * np.pi, size=4)
            for t in range(frames):
                frame: dict = {
                    "observation.state": np.sin(phase + 0.1 * t).astype(np.float32),
                    "action": np.cos(phase + 0.1 * t).astype(np.float32),
                }
                for i, c in enumerate(cameras):
                    base = ((xx * (2 + i) + yy + 5 * t + 30 * ep) % 256).astype(np.uint8)
                    img = np.stack([base, base.T, 255 - base], axis=-1)
                    frame[f"observation.images.{c}"] = img + rng.integers(0, 24, size=img.shape, dtype=np.uint8)
                w.add_frame(frame, task=f"task {ep % 5}")
            w.save_episode()
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = make_dataset(Path(tmp) / "data", args.episodes, args.frames, args.size, ("corner2", "gripperPOV"))
        print(f"dataset: {args.episodes} episodes x {args.frames} frames, 2 cams {args.size}px "
              f"(written in {time.perf_counter() - t0:.1f}s)")
        base = preset(args.preset)
        log_every = max(1, args.steps // 3)
        rows = []
        for workers in args.workers:
            cfg = replace(
                base, run_dir=Path(tmp) / f"run_w{workers}", steps=args.steps, device="cpu",
                batch_size=args.batch_size or base.batch_size, grad_accum=1,
                checkpoint=CheckpointConfig(every=0, keep_last_k=1),
                log=LogConfig(every=log_every, tensorboard=False, progress=False),
                data=replace(base.data, num_workers=workers),
            )
            train(with_datasets(cfg, (data,)))
            logged = [json.loads(r) for r in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            steady = logged[1:] or logged  # the first window includes worker start-up and lazy init
            sps = float(np.mean([r["samples_per_s"] for r in steady]))
            wait = float(np.mean([r["data_wait_frac"] for r in steady]))
            rows.append((workers, cfg.batch_size, sps, wait))
        print(f"\npreset={args.preset} steps={args.steps} (first {log_every} steps excluded)")
        print(f"{'workers':>8} {'batch':>6} {'samples/s':>10} {'data-wait':>10} {'vs first':>9}")
        for workers, bs, sps, wait in rows:
            print(f"{workers:>8} {bs:>6} {sps:>10.1f} {100 * wait:>9.1f}% {sps / rows[0][2]:>8.2f}x")


if __name__ == "__main__":
    main()
