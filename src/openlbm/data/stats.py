"""Normalization statistics, LeRobot-compatible (``meta/stats.json`` and the ``stats/...`` episode columns).

Per feature and per dimension: ``min, max, mean, std, count, q01, q10, q50, q90, q99``. Images are per channel,
on the ``[0, 1]`` scale, with shape ``[3, 1, 1]`` (as LeRobot stores them).

Every quantile is **exact**: equal to ``numpy.quantile`` (default ``linear`` method) on the concatenated data, for
one episode, one dataset, or any merge of datasets. Nothing is ever derived by averaging per-episode quantiles.

- Low-dim features (:func:`exact_stats`): several streaming passes over chunked reads of the columns
  (:func:`parquet_column`). Pass 1 gives count, min/max and Chan's parallel mean/variance; then each order
  statistic the quantiles need is found by radix selection on the order-preserving 64-bit key of each float: a pass
  histograms the keys inside the current bracket into ``2**bits`` bins (with each bin's smallest and largest key) and
  narrows the bracket to the keys present in the bin that holds the wanted rank, until the bracket holds one
  distinct value or at most ``collect`` values, which the last pass gathers and sorts. At most ``ceil(64 / bits)``
  histogram passes, usually one or two. Memory is ``O(chunk + dims * ranks * (3 * 2**bits + collect))``,
  independent of the dataset size. A merge passes all sources' columns to one call.
- Images (:class:`ImageHistogram`): pixels are uint8, so a per-channel 256-bin count is a lossless summary; stats
  and quantiles come from it exactly and histograms of datasets merge by addition. The pixels are every pixel of
  up to :data:`IMAGE_FRAMES_PER_EPISODE` frames per episode (:func:`image_frame_indices`: evenly spaced, first and
  last included) *as decoded from the stored video* — the writer decodes what it just encoded, so ``lbm data
  generate`` and ``lbm data stats`` compute the same numbers. ``count`` is the number of frames covered (LeRobot's
  convention). Each dataset keeps its histograms in :data:`IMAGE_HIST_PATH` so mixtures merge them without decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from openlbm.data import layout as L
from openlbm.locking import lock_dir
from openlbm.types import FeatureSpec

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count", *QUANTILES)
IMAGE_FRAMES_PER_EPISODE = 20
IMAGE_HIST_PATH = "meta/image_histograms.json"
log = logging.getLogger(__name__)

ChunkSource = Callable[[], Iterable[np.ndarray]]
"""Re-iterable column: each call starts a fresh pass and yields ``[n, D]`` chunks (bounded ``n``)."""

_SIGN = np.uint64(1 << 63)


# ----------------------------------------------------------------------------------------------- numpy's quantile
def _linear_ranks(n: int, q: float) -> tuple[int, int, float]:
    """Ranks ``(lo, hi)`` and weight of numpy's ``linear`` quantile of ``n`` sorted values (numpy's own arithmetic)."""
    virtual = np.float64(n - 1) * np.float64(q)
    if virtual >= n - 1:
        return n - 1, n - 1, float(virtual - np.floor(virtual))
    prev = np.floor(virtual)
    return int(prev), int(prev) + 1, float(virtual - prev)


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's ``_lerp`` (same operations, so results are bit-identical to ``np.quantile``)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _finish(values: dict[str, Any], image: bool) -> dict[str, list]:
    out = {}
    for k in STAT_NAMES:
        if k not in values:
            continue
        if k == "count":
            out[k] = [int(x) for x in np.asarray(values[k]).reshape(-1)]
            continue
        arr = np.asarray(values[k], dtype=np.float64)
        out[k] = arr.reshape(3, 1, 1).tolist() if image else arr.tolist()  # [3] -> [3, 1, 1]
    return out


# ------------------------------------------------------------------------------------------------ exact low-dim
def _to_keys(x: np.ndarray) -> np.ndarray:
    """float64 ``[n, D]`` -> uint64 keys ordered like the floats (negatives bit-flipped, positives sign-set)."""
    bits = (x + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0 (numpy sorts them as equal)
    return np.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _from_keys(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, dtype=np.uint64)
    return np.where(k >= _SIGN, k ^ _SIGN, ~k).view(np.float64)


class _Moments:
    """Count, min, max and Chan et al.'s parallel mean / sum of squared deviations, chunk by chunk."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = self.m2 = self.min = self.max = np.zeros(0)

    def update(self, x: np.ndarray) -> None:
        n_b, mean_b = len(x), x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = n_b, mean_b, m2_b, x.min(0), x.max(0)
            return
        if x.shape[1] != len(self.mean):
            raise ValueError(f"chunk has {x.shape[1]} dims, earlier chunks had {len(self.mean)}")
        tot = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / tot)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / tot)
        self.n, self.min, self.max = tot, np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))


def _chunks(sources: Sequence[ChunkSource]) -> Iterator[np.ndarray]:
    for src in sources:
        for c in src():
            c = np.asarray(c, dtype=np.float64)
            if np.isnan(c).any():
                raise ValueError("NaN in the data: statistics (and training) need finite values")
            if len(c):
                yield c.reshape(len(c), -1)  # [n, *shape] -> [n, D]


def _order_statistics(sources: Sequence[ChunkSource], m: _Moments, ranks: set[int], bits: int, collect: int) -> list[dict[int, float]]:
    """``out[d][r]`` = the value of rank ``r`` (0-based) of dimension ``d`` over all chunks: exact radix selection."""
    dims = len(m.mean)
    found: list[dict[int, float]] = [{} for _ in range(dims)]
    lo_keys, hi_keys = _to_keys(m.min[None]).reshape(-1), _to_keys(m.max[None]).reshape(-1)
    # bracket (dim, lo, hi): inclusive key range, with [#keys < lo, #keys in range, wanted ranks]
    brackets: dict[tuple[int, int, int], list[Any]] = {
        (d, int(lo_keys[d]), int(hi_keys[d])): [0, m.n, sorted(ranks)] for d in range(dims)
    }
    while brackets:
        tasks: dict[tuple[int, int, int], Any] = {}
        for (d, lo, hi), (_, count, rs) in brackets.items():
            if lo == hi:  # one distinct value left: every wanted rank is it
                found[d].update({r: float(_from_keys(np.uint64(lo))) for r in rs})
            elif count <= collect:
                tasks[(d, lo, hi)] = []
            else:
                shift = max(0, (hi - lo).bit_length() - bits)
                nb = ((hi - lo) >> shift) + 1
                # per bin: count, and smallest/largest key offset seen (a bin of equal values is then resolved)
                tasks[(d, lo, hi)] = (shift, np.zeros(nb, np.int64), np.full(nb, hi - lo, np.uint64), np.zeros(nb, np.uint64))
        if not tasks:
            break
        for chunk in _chunks(sources):
            keys = _to_keys(chunk)  # [n, D]
            for (d, lo, hi), task in tasks.items():
                k = keys[:, d]
                sel = k[(k >= np.uint64(lo)) & (k <= np.uint64(hi))] - np.uint64(lo)
                if isinstance(task, list):
                    task.append(sel)
                    continue
                idx = (sel >> np.uint64(task[0])).astype(np.int64)
                task[1][:] += np.bincount(idx, minlength=len(task[1]))
                np.minimum.at(task[2], idx, sel)
                np.maximum.at(task[3], idx, sel)
        nxt: dict[tuple[int, int, int], list[Any]] = {}
        for (d, lo, hi), task in tasks.items():
            below, _, rs = brackets[(d, lo, hi)]
            if isinstance(task, list):
                vals = np.sort(np.concatenate(task)) + np.uint64(lo) if task else np.zeros(0, np.uint64)
                found[d].update({r: float(_from_keys(vals[r - below])) for r in rs})
                continue
            _, hist, bin_lo, bin_hi = task
            cum = np.cumsum(hist)
            for r in rs:
                b = int(np.searchsorted(cum, r - below, side="right"))  # first bin whose cumulative count > r - below
                entry = nxt.setdefault((d, lo + int(bin_lo[b]), lo + int(bin_hi[b])),
                                       [below + (int(cum[b - 1]) if b else 0), int(hist[b]), []])
                entry[2].append(r)
        brackets = nxt
    return found


def exact_stats(sources: Sequence[ChunkSource], bits: int = 12, collect: int = 8192) -> dict[str, list]:
    """Exact stats of the concatenation of every chunk of every source (see the module docstring)."""
    m = _Moments()
    for chunk in _chunks(sources):
        m.update(chunk)
    if m.n == 0:
        raise ValueError("exact_stats: no data (every source was empty)")
    plan = {name: _linear_ranks(m.n, q) for name, q in QUANTILES.items()}
    order = _order_statistics(sources, m, {r for lo, hi, _ in plan.values() for r in (lo, hi)}, bits, collect)
    vals: dict[str, Any] = {"min": m.min, "max": m.max, "mean": m.mean, "std": np.sqrt(m.m2 / m.n), "count": [m.n]}
    for name, (lo, hi, t) in plan.items():
        a = np.array([o[lo] for o in order])
        b = np.array([o[hi] for o in order])
        vals[name] = _lerp(a, b, t)
    return _finish(vals, image=False)


def array_source(x: np.ndarray) -> ChunkSource:
    """An in-memory ``[N, ...]`` array as a :data:`ChunkSource` (one chunk)."""
    return lambda: [x]


def parquet_column(files: Sequence[Path], key: str, spec: FeatureSpec, chunk_rows: int = 65536) -> ChunkSource:
    """Column ``key`` of the parquet ``files``, read ``chunk_rows`` rows at a time (never a whole file or row group:
    without pre-buffering and with a small stream buffer pyarrow holds only a few pages)."""

    def read() -> Iterator[np.ndarray]:
        for path in files:
            try:
                reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 18)
                batches = reader.iter_batches(batch_size=chunk_rows, columns=[key])
                for batch in batches:
                    x = L.column_to_numpy(batch.column(0), spec)
                    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
                        raise L.DatasetError(f"{L.where(path, field=key)}: contains NaN; statistics need finite values")
                    yield x
            except L.DatasetError:
                raise
            except (OSError, ValueError) as e:  # ArrowException subclasses these
                raise L.DatasetError(f"{L.where(path, field=key)}: cannot read column ({e})") from None

    return read


def merge_moments(per_episode: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, list]]:
    """Exact min/max/mean/std/count of the union of episodes from their rows (no quantiles: those need the data)."""
    out: dict[str, dict[str, list]] = {}
    for key in sorted({k for s in per_episode for k in s}):
        items = [s[key] for s in per_episode if key in s]
        shape = np.asarray(items[0]["mean"]).shape
        counts = np.array([float(np.asarray(s["count"]).reshape(-1)[0]) for s in items])
        w = counts / counts.sum()
        means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
        stds = np.stack([np.asarray(s["std"], dtype=np.float64) for s in items])
        mean = np.tensordot(w, means, axes=1)
        var = np.tensordot(w, stds**2 + (means - mean) ** 2, axes=1)  # law of total variance
        out[key] = {
            "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in items]), 0).reshape(shape).tolist(),
            "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in items]), 0).reshape(shape).tolist(),
            "mean": mean.reshape(shape).tolist(),
            "std": np.sqrt(np.maximum(var, 0.0)).reshape(shape).tolist(),
            "count": [int(counts.sum())],
        }
    return out


# ------------------------------------------------------------------------------------------------------- images
def image_frame_indices(length: int, frames_per_episode: int = IMAGE_FRAMES_PER_EPISODE) -> list[int]:
    """The frames of a ``length``-frame episode that image stats use: up to ``frames_per_episode``, evenly spaced."""
    if length <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, length - 1, num=min(length, frames_per_episode)).round()})


class ImageHistogram:
    """Per-channel counts of the 256 pixel values of a set of frames; ``frames`` = frames covered (for ``count``)."""

    def __init__(self, counts: np.ndarray | None = None, frames: int = 0) -> None:
        self.counts = np.zeros((3, 256), np.int64) if counts is None else np.asarray(counts, np.int64).reshape(3, 256)
        self.frames = int(frames)

    def add(self, images: np.ndarray, frames_covered: int) -> None:
        """Count every pixel of uint8 ``[N, H, W, 3]`` ``images``, which stand for ``frames_covered`` frames."""
        px = np.asarray(images, np.uint8).reshape(-1, 3)  # [N, H, W, 3] -> [N*H*W, 3]
        for c in range(3):
            self.counts[c] += np.bincount(px[:, c], minlength=256)
        self.frames += int(frames_covered)

    def merge(self, other: ImageHistogram) -> ImageHistogram:
        return ImageHistogram(self.counts + other.counts, self.frames + other.frames)

    def stats(self) -> dict[str, list]:
        """Exact stats of the counted pixels on the [0, 1] scale (``np.quantile`` of ``pixels / 255``)."""
        n = int(self.counts[0].sum())
        if n == 0:
            raise ValueError("ImageHistogram.stats() with no pixels counted")
        values = np.arange(256, dtype=np.float64) / 255.0
        cum = np.cumsum(self.counts, axis=1)  # [3, 256]
        mean = (self.counts * values).sum(1) / n
        var = (self.counts * (values - mean[:, None]) ** 2).sum(1) / n

        def rank(r: int) -> np.ndarray:  # value of rank r per channel: first level whose cumulative count > r
            return values[[int(np.searchsorted(cum[c], r, side="right")) for c in range(3)]]

        vals: dict[str, Any] = {"min": rank(0), "max": rank(n - 1), "mean": mean, "std": np.sqrt(var), "count": [self.frames]}
        for name, q in QUANTILES.items():
            lo, hi, t = _linear_ranks(n, q)
            vals[name] = _lerp(rank(lo), rank(hi), t)
        return _finish(vals, image=True)

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "counts": self.counts.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageHistogram:
        return cls(np.asarray(d["counts"]), int(d["frames"]))


def episode_image_histogram(video: Path, from_s: float, length: int, fps: float, tolerance_s: float,
                            frames_per_episode: int = IMAGE_FRAMES_PER_EPISODE, pool: Any = None) -> ImageHistogram:
    """Histogram of one episode's stats frames, decoded from ``video`` starting at ``from_s`` seconds."""
    from openlbm.data.video import ReaderPool

    own = pool is None
    pool = pool or ReaderPool(tolerance_s=tolerance_s)
    try:
        times = [from_s + i / fps for i in image_frame_indices(length, frames_per_episode)]
        hist = ImageHistogram()
        hist.add(pool.get(Path(video)).frames_at(times), length)
        return hist
    finally:
        if own:
            pool.close()


def read_image_histograms(root: Path, num_episodes: int, frames_per_episode: int | None) -> dict[str, ImageHistogram] | None:
    """The stored histograms of ``root`` if they cover exactly its ``num_episodes`` (and were sampled with
    ``frames_per_episode``, unless None)."""
    import json

    path = Path(root) / IMAGE_HIST_PATH
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
        if d.get("episodes") != num_episodes or frames_per_episode not in (None, d.get("frames_per_episode")):
            return None
        return {k: ImageHistogram.from_json(v) for k, v in d["cameras"].items()}
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: ignoring unreadable image histograms (%s); they will be recomputed", path, e)
        return None


def write_image_histograms(root: Path, hists: dict[str, ImageHistogram], num_episodes: int, frames_per_episode: int) -> None:
    L.write_json_atomic(Path(root) / IMAGE_HIST_PATH, {"episodes": num_episodes, "frames_per_episode": frames_per_episode,
                                                       "cameras": {k: h.to_json() for k, h in hists.items()}})


def dataset_image_histograms(meta: Any, frames_per_episode: int = IMAGE_FRAMES_PER_EPISODE, stored: bool = True) -> dict[str, ImageHistogram]:
    """Per-camera histograms of a dataset (:class:`~openlbm.data.dataset.DatasetMeta`): the stored ones if they
    cover its episodes (and ``stored``; whatever frame sampling `lbm data stats` used), otherwise decoded from the
    videos (``frames_per_episode`` per episode per camera)."""
    have = read_image_histograms(meta.root, meta.num_episodes, None) if stored else None
    if have is not None and set(meta.camera_keys) <= set(have):
        return have
    from openlbm.data.video import ReaderPool

    if meta.camera_keys and stored:
        log.info("%s: no current %s; decoding up to %d frames per episode for image stats (`lbm data stats` stores "
                 "them)", meta.root, IMAGE_HIST_PATH, frames_per_episode)
    pool = ReaderPool(tolerance_s=meta.tolerance_s)
    try:
        out = {}
        for cam in meta.camera_keys:
            hist = ImageHistogram()
            for ep in range(meta.num_episodes):
                hist = hist.merge(episode_image_histogram(meta.video_file(ep, cam), meta.video_time(ep, cam, 0),
                                                          int(meta.ep_len[ep]), meta.fps, meta.tolerance_s, frames_per_episode, pool))
            out[cam] = hist
        return out
    finally:
        pool.close()


# ------------------------------------------------------------------------------------------------ whole dataset
def episode_stats(data: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """Exact stats of one episode's low-dim columns (``data[key]`` is ``[N, *shape]``)."""
    return {key: exact_stats([array_source(arr)]) for key, arr in data.items()}


def lowdim_stats(meta: Any) -> dict[str, dict[str, list]]:
    """Exact stats of every numeric column of a dataset (:class:`~openlbm.data.dataset.DatasetMeta`), streamed."""
    files = L.iter_data_files(meta.root, meta.episodes, meta.data_path)
    out = {}
    for key, spec in meta.features.items():
        if spec.dtype in L.NUMERIC_DTYPES:
            out[key] = exact_stats([parquet_column(files, key, spec)])
            if out[key]["count"] != [meta.num_frames]:
                raise L.DatasetError(f"{L.where(files[0] if files else meta.root, field=key)}: data files hold "
                                     f"{out[key]['count'][0]} rows, the episodes say {meta.num_frames} frames")
    return out


def compute_stats(root: Path, image_frames_per_episode: int = IMAGE_FRAMES_PER_EPISODE, write: bool = False) -> dict[str, dict[str, list]]:
    """Exact ``meta/stats.json`` content of the dataset at ``root`` with bounded memory (decodes the image samples).
    ``write`` also stores ``meta/stats.json`` and the image histograms, holding the dataset's folder lock (a writer
    or converter still working on it is refused, not raced)."""
    from openlbm.data.dataset import DatasetMeta

    lock = lock_dir(root, "lbm data stats") if write else None
    try:
        return _compute_stats(DatasetMeta(root), image_frames_per_episode, write)
    finally:
        if lock is not None:
            lock.release()


def _compute_stats(meta: Any, image_frames_per_episode: int, write: bool) -> dict[str, dict[str, list]]:
    if meta.num_episodes == 0:
        raise L.DatasetError(f"{L.where(meta.root)}: dataset has no episodes; nothing to compute stats of")
    out = lowdim_stats(meta)
    hists = dataset_image_histograms(meta, image_frames_per_episode, stored=False)
    out.update({k: h.stats() for k, h in hists.items()})
    if write:
        write_image_histograms(meta.root, hists, meta.num_episodes, image_frames_per_episode)
        L.write_json_atomic(meta.root / L.STATS_PATH, out)
    return out

