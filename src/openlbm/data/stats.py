"""Normalization statistics, LeRobot-compatible (``meta/stats.json`` and the ``stats/...`` episode columns).

Per feature and per dimension: ``min, max, mean, std, count, q01, q10, q50, q90, q99``. Images are per channel,
on the ``[0, 1]`` scale, with shape ``[3, 1, 1]`` (as LeRobot stores them).

Two ways to get them:
- :func:`episode_stats` (exact, one episode in memory) + :func:`aggregate_stats` (exact mean/std/min/max/count;
  quantiles as the count-weighted mean of episode quantiles, LeRobot's approximation). The writer uses these.
- :class:`RunningStats`: a single streaming pass with bounded memory (Chan's parallel mean/variance and a
  self-widening fixed-size histogram for quantiles, error <= one bin = range / ``bins``). :func:`compute_stats`
  uses it over a whole dataset (``lbm data stats``), decoding a subsample of video frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)
log = logging.getLogger(__name__)


def _image_samples(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float64 ``[M, 3]`` pixel samples in ``[0, 1]`` from up to ``max_frames`` frames."""
    step = max(1, len(frames) // max_frames)
    sub = frames[::step]
    stride = max(1, sub.shape[1] // 32)  # at most ~32x32 pixels per frame: stats, not reconstruction
    px = sub[:, ::stride, ::stride, :]
    return px.reshape(-1, 3).astype(np.float64) / 255.0  # [M', h, w, 3] -> [M, 3]


def _finish(values: dict[str, np.ndarray], image: bool) -> dict[str, list]:
    out = {}
    for k, v in values.items():
        if k == "count":
            out[k] = [int(x) for x in np.asarray(v).reshape(-1)]
            continue
        arr = np.asarray(v, dtype=np.float64)
        if image:
            arr = arr.reshape(3, 1, 1)  # [3] -> [3, 1, 1]
        out[k] = arr.tolist()
    return out


def episode_stats(data: dict[str, np.ndarray], image_keys: Iterable[str], max_image_frames: int = 100) -> dict[str, dict[str, list]]:
    """Exact stats of one episode. ``data[key]`` is ``[N, D...]`` numeric or uint8 ``[N, H, W, 3]`` for images."""
    image_keys = set(image_keys)
    out = {}
    for key, arr in data.items():
        n = len(arr)
        if key in image_keys:
            x = _image_samples(arr, max_image_frames)
        else:
            x = np.asarray(arr, dtype=np.float64).reshape(n, -1)  # [N, *shape] -> [N, D]
        vals = {
            "min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([n]),
            **{name: np.quantile(x, q, axis=0) for name, q in QUANTILES.items()},
        }
        out[key] = _finish(vals, key in image_keys)
    return out


def aggregate_stats(per_episode: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, list]]:
    """Merge episode stats: exact for min/max/mean/std/count, count-weighted mean for quantiles."""
    keys = {k for s in per_episode for k in s}
    out: dict[str, dict[str, list]] = {}
    for key in sorted(keys):
        items = [s[key] for s in per_episode if key in s]
        shape = np.asarray(items[0]["mean"]).shape
        counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])
        w = counts / counts.sum()
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
        stds = np.stack([np.asarray(s["std"], dtype=np.float64) for s in items])
        mean = np.tensordot(w, means, axes=1)
        var = np.tensordot(w, stds**2 + (means - mean) ** 2, axes=1)  # law of total variance
        agg = {
            "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in items]), 0),
            "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in items]), 0),
            "mean": mean,
            "std": np.sqrt(np.maximum(var, 0.0)),
            "count": np.array([int(counts.sum())]),
        }
        for q in QUANTILES:
            if all(q in s for s in items):
                agg[q] = np.tensordot(w, np.stack([np.asarray(s[q], dtype=np.float64) for s in items]), axes=1)
        out[key] = {k: np.asarray(v).reshape(shape if k != "count" else (1,)).tolist() for k, v in agg.items()}
    return out


class RunningStats:
    """Streaming per-dimension stats with bounded memory (``O(dims * bins)``)."""

    def __init__(self, bins: int = 4096) -> None:
        self.bins = bins
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.lo: np.ndarray | None = None
        self.width: np.ndarray | None = None
        self.hist: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Add ``[N, D]`` samples."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            return
        n_b, mean_b, m2_b = len(x), x.mean(0), x.var(0) * len(x)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            self.min, self.max = x.min(0), x.max(0)
            span = np.maximum(self.max - self.min, 1e-6)
            self.lo, self.width = self.min - 1e-3 * span, span * 1.002 / self.bins
            self.hist = np.zeros((x.shape[1], self.bins), dtype=np.int64)
        else:
            delta = mean_b - self.mean
            tot = self.n + n_b
            self.mean = self.mean + delta * n_b / tot
            self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / tot  # Chan et al. parallel variance
            self.n = tot
            self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))
        self._widen(x.min(0), x.max(0))
        idx = np.clip(((x - self.lo) / self.width).astype(np.int64), 0, self.bins - 1)  # [N, D]
        for d in range(x.shape[1]):
            self.hist[d] += np.bincount(idx[:, d], minlength=self.bins)

    def _widen(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Double a dimension's bin width (merging bin pairs) until ``[lo, hi]`` fits."""
        for d in range(len(lo)):
            while lo[d] < self.lo[d] or hi[d] >= self.lo[d] + self.width[d] * self.bins:
                h = self.hist[d]
                merged = h.reshape(-1, 2).sum(1)  # [bins] -> [bins/2] pairs of bins
                if lo[d] < self.lo[d]:  # grow downward: old range becomes the upper half
                    self.hist[d] = np.concatenate([np.zeros_like(merged), merged])
                    self.lo[d] -= self.width[d] * self.bins
                else:
                    self.hist[d] = np.concatenate([merged, np.zeros_like(merged)])
                self.width[d] *= 2

    def quantile(self, q: float) -> np.ndarray:
        cdf = np.cumsum(self.hist, axis=1)  # [D, bins]
        target = q * self.n
        out = np.empty(len(cdf))
        for d in range(len(cdf)):
            b = int(np.searchsorted(cdf[d], target, side="left"))
            prev = cdf[d, b - 1] if b > 0 else 0
            frac = (target - prev) / max(1, self.hist[d, b])
            out[d] = self.lo[d] + (b + min(max(frac, 0.0), 1.0)) * self.width[d]
        return np.clip(out, self.min, self.max)

    def result(self, image: bool = False) -> dict[str, list]:
        if self.mean is None:
            raise ValueError("RunningStats.result() before any update()")
        vals = {
            "min": self.min, "max": self.max, "mean": self.mean, "std": np.sqrt(self.m2 / self.n),
            "count": np.array([self.n]), **{k: self.quantile(q) for k, q in QUANTILES.items()},
        }
        return _finish(vals, image)


def compute_stats(root: Path, max_image_frames_per_episode: int = 20, bins: int = 4096, decode_images: bool = True) -> dict[str, dict[str, list]]:
    """Recompute ``meta/stats.json`` content in one bounded-memory streaming pass over the dataset.

    Low-dim features always stream through :class:`RunningStats`. Images are decoded (``max_image_frames_per_episode``
    frames per episode) when ``decode_images``; otherwise their per-episode stats are aggregated.
    """
    from openlbm.data.dataset import DatasetMeta, LowDimStore
    from openlbm.data.video import ReaderPool
    from openlbm.data.writer import stats_from_row

    meta = DatasetMeta(root)
    store = LowDimStore(meta)
    acc: dict[str, RunningStats] = {}
    pool = ReaderPool(tolerance_s=meta.tolerance_s)
    numeric = [k for k, f in meta.features.items() if f.dtype != "video" and f.dtype not in ("string",)]
    for ep in range(meta.num_episodes):
        rows = store.episode_columns(ep, numeric)
        for key, arr in rows.items():
            acc.setdefault(key, RunningStats(bins)).update(arr.reshape(len(arr), -1).astype(np.float64))  # [N, D]
        if not decode_images:
            continue
        length = int(meta.ep_len[ep])
        step = max(1, length // max_image_frames_per_episode)
        for cam in meta.camera_keys:
            times = [meta.video_time(ep, cam, i) for i in range(0, length, step)]
            frames = pool.get(meta.video_file(ep, cam)).frames_at(times)
            acc.setdefault(cam, RunningStats(bins)).update(_image_samples(frames, len(frames)))
    pool.close()
    out = {k: a.result(image=k in meta.camera_keys) for k, a in acc.items()}
    if meta.camera_keys and not decode_images:
        per_ep = [stats_from_row(r) for r in meta.episodes]
        agg = aggregate_stats([{k: s[k] for k in meta.camera_keys if k in s} for s in per_ep])
        out.update({k: v for k, v in agg.items() if k in meta.camera_keys})
    for cam in meta.camera_keys:  # count = frames covered, as in LeRobot, not pixels sampled
        if cam in out:
            out[cam]["count"] = [meta.num_frames]
    return out
