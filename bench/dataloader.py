"""Random-window sampling speed vs raw sequential PyAV decoding of the same files, and bounded loader resources.

Builds a synthetic dataset (2 cameras, 128x128, 50 episodes x 100 frames; ``--small``: 10 x 50) and prints:
(a) sequential decode frames/s (one process, PyAV, every frame converted to RGB the loader's way, best of FFmpeg
    threading modes),
(b) random windows through ``torch.utils.data.DataLoader`` (2 workers, shuffled, n_obs_steps=2, horizon=16,
    batch 32), counting delivered camera frames/s, (c) the ratio b / a (target >= 0.5).

``--scaling 0,1,2,4`` adds (e) the same random windows at each worker count side by side: delivered frames/s, the
speed-up over one worker, frames/s per worker (how far each added worker scales), and (f) the decode cost of a
window in one process: frames the decoder produced per frame delivered (a seek decodes from the previous keyframe;
repeated frames of a window clamped at an episode end cost nothing).

``--codec av1-lerobot`` re-encodes every video with the settings LeRobot writes community datasets with
(libsvtav1, yuv420p, ``g=2``, ``crf=30``, SVT-AV1's default preset; see ``LEROBOT_AV1``), so (c) is measured on
files shaped like the hub's. ``--rss-batches N`` then runs N more batches (batch ``--rss-batch-size``) on a
*many-file* copy (every episode in its own files, as before ``finalize``) and prints the loader's total RSS and open
file descriptors (main process + workers) at the start and the end: both must stay flat.

    python bench/dataloader.py [--small] [--root DIR] [--codec h264|av1|av1-lerobot] [--rss-batches 5000]
                               [--scaling 0,1,2,4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from openlbm.data.dataset import RobotDataset
from openlbm.data.video import RGBConverter
from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec

CAMS = ("observation.images.left", "observation.images.right")
LEROBOT_AV1 = {"g": "2", "crf": "30"}
"""``lerobot.datasets.video_utils.encode_video_frames`` defaults (lerobot 0.3-0.4): libsvtav1, yuv420p, these."""


def build(root: Path, episodes: int, frames: int, size: int, codec: str, finalize: bool = True) -> Path:
    if (root / "meta/info.json").exists():
        return root
    feats = {c: FeatureSpec("video", (size, size, 3)) for c in CAMS}
    feats["observation.state"] = FeatureSpec("float32", (8,))
    feats["action"] = FeatureSpec("float32", (7,))
    w = DatasetWriter.create(root, feats, fps=10, robot_type="bench", video_codec="h264" if codec == "h264" else "av1")
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
    if finalize:
        w.finalize()
    if codec == "av1-lerobot":
        for f in sorted((root / "videos").rglob("*.mp4")):
            reencode(f, LEROBOT_AV1)
    return root


def reencode(path: Path, options: dict[str, str]) -> None:
    """Decode ``path`` and write it again with libsvtav1 ``options``, keeping every frame's timestamp."""
    tmp = path.with_suffix(".tmp.mp4")
    rgb = RGBConverter()
    with av.open(str(path)) as src, av.open(str(tmp), "w", format="mp4") as dst:
        s = src.streams.video[0]
        rate = Fraction(s.average_rate).limit_denominator(1001)
        out = dst.add_stream("libsvtav1", rate=rate, options=options)
        out.width, out.height, out.pix_fmt = s.codec_context.width, s.codec_context.height, "yuv420p"
        out.codec_context.time_base = 1 / rate
        for i, frame in enumerate(src.decode(s)):
            new = av.VideoFrame.from_ndarray(rgb(frame), format="rgb24")
            new.pts = i
            dst.mux(out.encode(new))
        dst.mux(out.encode(None))
    os.replace(tmp, path)


def sequential_fps(root: Path, thread_type: str) -> float:
    files = sorted((root / "videos").rglob("*.mp4"))
    rgb = RGBConverter()  # the fastest RGB conversion PyAV offers, as the loader uses: the harshest baseline
    n, t0 = 0, time.perf_counter()
    for f in files:
        with av.open(str(f)) as c:
            c.streams.video[0].thread_type = thread_type
            for frame in c.decode(video=0):
                rgb(frame)
                n += 1
    return n / (time.perf_counter() - t0)


def loader(root: Path, workers: int, batches: int, batch_size: int) -> torch.utils.data.DataLoader:
    ds = RobotDataset(root, n_obs_steps=2, horizon=16)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch_size * (batches + 2),
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       prefetch_factor=4 if workers else None,
                                       multiprocessing_context="forkserver" if workers else None)


def random_window_fps(root: Path, workers: int, batches: int) -> float:
    it = iter(loader(root, workers, batches, 32))
    for _ in range(2):  # warm-up: workers start, decoders open
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += sum(b[c].shape[0] * b[c].shape[1] for c in CAMS)  # delivered camera frames
    return n / (time.perf_counter() - t0)


def decode_cost(root: Path, windows: int) -> tuple[float, float]:
    """(frames decoded per frame delivered, windows/s) over ``windows`` random windows read in this process."""
    ds = RobotDataset(root, n_obs_steps=2, horizon=16)
    order = torch.randint(len(ds), (windows,), generator=torch.Generator().manual_seed(1)).tolist()
    delivered, t0 = 0, time.perf_counter()
    for i in order:
        sample = ds[i]
        delivered += sum(sample[c].shape[0] for c in CAMS)
    elapsed = time.perf_counter() - t0
    decoded = sum(r.decoded for r in ds.pool._readers.values())
    return decoded / max(delivered, 1), windows / elapsed


def scaling(root: Path, counts: list[int], batches: int) -> None:
    rows = [(w, random_window_fps(root, w, batches)) for w in counts]
    one = next((fps for w, fps in rows if w == 1), rows[0][1])
    print("(e) random windows by DataLoader workers (0 = in the main process):")
    print(f"    {'workers':>7} {'frames/s':>9} {'vs 1 worker':>12} {'frames/s per worker':>20}")
    for w, fps in rows:
        print(f"    {w:>7} {fps:>9.0f} {fps / one:>11.2f}x {fps / max(w, 1):>20.0f}")


def _family() -> list[int]:
    """This process and its descendants (the DataLoader workers and their forkserver)."""
    me, kids = os.getpid(), {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [me]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def resources() -> tuple[float, int]:
    """(total RSS in MiB, open file descriptors) over this process and its descendants."""
    rss, fds = 0.0, 0
    for p in _family():
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:"))) / 1024
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, StopIteration):
            continue
    return rss, fds


def rss_run(root: Path, workers: int, batches: int, batch_size: int) -> None:
    warm = 2 * max(1, workers) * 4  # every worker running and past its first prefetch
    it = iter(loader(root, workers, batches + warm, batch_size))
    for _ in range(warm):
        next(it)
    files = len(list((root / "videos").rglob("*.mp4")))
    rss0, fd0 = resources()
    t0 = time.perf_counter()
    for i in range(batches):
        next(it)
        if (i + 1) % max(1, batches // 5) == 0:
            rss, fd = resources()
            print(f"    batch {i + 1:6d}: RSS {rss:7.0f} MiB, open fds {fd:4d}  ({time.perf_counter() - t0:.0f}s)")
    rss1, fd1 = resources()
    print(f"(d) many-file dataset ({files} video files), {batches} batches of {batch_size}: "
          f"RSS {rss0:.0f} -> {rss1:.0f} MiB ({rss1 - rss0:+.0f}), open fds {fd0} -> {fd1}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="10 episodes x 50 frames, fewer batches")
    ap.add_argument("--root", type=Path, default=None, help="keep/reuse the synthetic dataset here")
    ap.add_argument("--codec", default="h264", choices=["h264", "av1", "av1-lerobot"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scaling", default="", help="comma-separated worker counts to compare, e.g. 0,1,2,4")
    ap.add_argument("--rss-batches", type=int, default=0, help="also run this many batches on a many-file dataset")
    ap.add_argument("--rss-batch-size", type=int, default=8)
    ap.add_argument("--rss-episodes", type=int, default=400, help="episodes (x2 video files) of the many-file dataset")
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
        if args.scaling:
            scaling(root, [int(w) for w in args.scaling.split(",")], batches)
            amplification, rate = decode_cost(root, 20 * batches)
            print(f"(f) one process: {amplification:.2f} frames decoded per frame delivered, {rate:.0f} windows/s")
        if args.rss_batches:
            many = root.parent / f"{root.name}-many"
            build(many, args.rss_episodes, 20, 64, args.codec, finalize=False)
            rss_run(many, args.workers, args.rss_batches, args.rss_batch_size)


if __name__ == "__main__":
    main()
