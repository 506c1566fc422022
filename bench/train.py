"""Training throughput of the camera encoders side by side: samples/s, where a step's wall time goes (waiting for
the loader, preparing batches on the host, the train step itself: on CPU the computation), model FLOPs per sample
(torch's FLOP counter over one forward + backward) and the achieved GFLOP/s against this machine's measured fp32
matmul peak at the same thread count.

    python bench/train.py                          # small preset, 2 cams at 128 px, the three encoders below
    python bench/train.py --steps 60 --workers 0   # longer, loading in the main process

Encoders (each the ``small`` preset's policy with only ``policy.vision`` changed):
- ``resnet-maxpool``: the former default, a GroupNorm ResNet (32..256) whose stem max-pools (4x4 map at 128 px,
  2x2 at 64 px, which is now refused);
- ``resnet-fixed-grid``: the same ResNet without the stem max-pool and with three stages (16x16 at 128 px);
- ``effnet-frozen-cached``: ImageNet EfficientNet-Lite0 to block 5, frozen, trained on its feature cache (the new
  default; the cache build is timed separately and its FLOPs are not part of the per-step count).

Generates a synthetic dataset with the DATA writer (moving gradients + noise, so the video codec does real work).
The first logged window (warm-up) is excluded. Samples/s use the threads the trainer picks (the free cores).
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
import torch
from torch.utils.flop_counter import FlopCounterMode

from openlbm.configs.presets import preset, small_vision
from openlbm.configs.train import CheckpointConfig, LogConfig
from openlbm.data.writer import DatasetWriter
from openlbm.models.vision import VisionConfig
from openlbm.train.features import attach_feature_caches
from openlbm.train.loop import build_policy, cpu_threads, sample_seeds, train
from openlbm.train_command import with_datasets
from openlbm.types import FeatureSpec

ENCODERS: dict[str, VisionConfig] = {
    "resnet-maxpool": VisionConfig(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), stem_width=32, stem_pool=True),
    "resnet-fixed-grid": VisionConfig(widths=(32, 64, 128), depths=(1, 1, 1), stem_width=32, stem_pool=False),
    "effnet-frozen-cached": small_vision(),
}


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


def matmul_peak_gflops(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 ``n x n`` matmul rate at ``threads`` threads (a practical peak, not the datasheet's)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    torch.set_num_threads(old)
    return best


def flops_per_sample(cfg, cached: bool) -> float:  # noqa: ANN001
    """Model FLOPs of one forward + backward of the training loss, per sample (the backbone excluded when cached)."""
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=8, seed=0)
    policy = build_policy(cfg, data, torch.device("cpu"))
    if cached:
        attach_feature_caches(data, policy.model.vision, cfg.feature_cache)
    batch = next(iter(data.loader(num_workers=0)))
    batch.meta["sample_seed"] = sample_seeds(0, data.sampler.consumed, batch.batch_size, 0, 1)
    with FlopCounterMode(display=False) as fc:
        sum(policy.compute_loss(batch)[0].values()).backward()
    return fc.get_total_flops() / batch.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = make_dataset(Path(tmp) / "data", args.episodes, args.frames, args.size, ("corner2", "gripperPOV"))
        print(f"dataset: {args.episodes} episodes x {args.frames} frames, 2 cams {args.size}px "
              f"(written in {time.perf_counter() - t0:.1f}s)")
        threads = cpu_threads()
        peak = matmul_peak_gflops(threads)
        base = preset(args.preset)
        log_every = max(1, args.steps // 3)
        rows = []
        for name in args.encoders:
            vision = ENCODERS[name]
            cfg = replace(
                base, policy=replace(base.policy, vision=vision), run_dir=Path(tmp) / f"run_{name}", steps=args.steps,
                device="cpu", batch_size=args.batch_size or base.batch_size, grad_accum=1,
                checkpoint=CheckpointConfig(every=0, keep_last_k=1), feature_cache=Path(tmp) / "features",
                log=LogConfig(every=log_every, tensorboard=False, progress=False),
                data=replace(base.data, num_workers=args.workers),
            )
            cfg = with_datasets(cfg, (data,))
            t_cache = time.perf_counter()
            flops = flops_per_sample(cfg, cached=vision.cacheable)  # builds the cache when frozen
            t_cache = time.perf_counter() - t_cache
            train(cfg)
            logged = [json.loads(r) for r in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
            steady = logged[1:] or logged  # the first window includes worker start-up and lazy init
            sps = float(np.mean([r["samples_per_s"] for r in steady]))
            wait, host, stepf = (float(np.mean([r[k] for r in steady])) for k in ("data_wait_frac", "host_frac", "step_frac"))
            grid = "x".join(map(str, vision.feature_grid((args.size, args.size))))
            rows.append((name, grid, sps, (wait, host, stepf), flops / 1e9, sps * flops / 1e9,
                         t_cache if vision.cacheable else None))
        print(f"\npreset={args.preset} steps={args.steps} batch={cfg.batch_size} workers={args.workers} "
              f"threads={threads}; fp32 matmul peak at {threads} thread(s): {peak:.1f} GFLOP/s")
        print("step time: data = waiting for the loader, host = validating / preparing / copying batches, step = "
              "forward + backward + optimizer + EMA (on CPU the computation), rest = logging and bookkeeping")
        print(f"{'encoder':>22} {'grid':>6} {'samples/s':>10} {'vs first':>9} {'data':>6} {'host':>6} {'step':>6} "
              f"{'rest':>6} {'GFLOP/sample':>13} {'GFLOP/s':>8} {'of peak':>8} {'cache s':>8}")
        for name, grid, sps, (wait, host, stepf), gfs, rate, t_cache in rows:
            cache = f"{t_cache:8.1f}" if t_cache is not None else f"{'-':>8}"
            rest = max(0.0, 1.0 - wait - host - stepf)
            print(f"{name:>22} {grid:>6} {sps:>10.1f} {sps / rows[0][2]:>8.2f}x {100 * wait:>5.1f}% {100 * host:>5.1f}% "
                  f"{100 * stepf:>5.1f}% {100 * rest:>5.1f}% {gfs:>13.3f} {rate:>8.1f} {100 * rate / peak:>7.1f}% {cache}")


if __name__ == "__main__":
    main()
