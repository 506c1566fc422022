"""Turn any :class:`~openlbm.data.convert.source.Source` into a LeRobot v3 dataset: streaming, parallel, resumable.

```
 worker 1 ─ source.episode(i)   ─┐   (read + decode + check, one episode each)
 worker 2 ─ source.episode(i+1) ─┼─► main: DatasetWriter.add_frame (video encode) ─► save_episode (commit) ─► ...
 worker W ─ source.episode(i+W) ─┘         strictly in source order
```
- **Streaming**: at most ``2 * workers`` episodes are in flight (read or waiting to be committed), whatever the size
  of the source.
- **Order and resume**: episodes are committed in source order, so after a kill the dataset holds source episodes
  ``0..N-1`` exactly; re-running the same command opens the writer (which drops any half-written episode) and
  continues at source episode ``N``. ``meta/conversion.json`` records what was converted with which options, and a
  re-run with a different source or options is refused instead of mixing two conversions.
- **Where the encode happens**: in the main process, inside the unchanged :class:`DatasetWriter` (its crash-safe
  commit protocol owns the video files). Workers do the reading, decoding and checking.
- **Validation**: the finished dataset goes through :func:`openlbm.data.validate.validate_dataset`; its problems
  are returned in :class:`ConvertReport` (the CLI prints them and exits 1), never dropped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.data.convert.source import Source, SourceEpisode, SourceError
from openlbm.types import FeatureSpec

log = logging.getLogger(__name__)

CONVERSION_FILE = "meta/conversion.json"


@dataclass(frozen=True)
class ConvertOptions:
    """How the output dataset is written (the same video settings ``lbm data generate`` uses)."""

    workers: int = 1
    """Processes reading/decoding source episodes (1 = read in the main process)."""
    video_codec: str = "h264"
    """Codec of the camera videos: ``h264`` (libx264) or ``av1`` (libsvtav1)."""
    gop: int = 2
    """Keyframe interval of the written videos (short = fast random access for training)."""
    crf: int | None = None
    """Encoder quality (lower = better); default 18 for h264, 30 for av1."""
    max_episodes: int | None = None
    """Convert only the first N source episodes (None = all)."""
    validate: bool = True
    """Run ``lbm data validate``'s checks on the result."""

    def identity(self) -> dict[str, Any]:
        """The options that change the output (a resumed conversion must use the same)."""
        return {"video_codec": self.video_codec, "gop": self.gop, "crf": self.crf, "max_episodes": self.max_episodes}


@dataclass
class ConvertReport:
    """What a conversion did."""

    root: Path
    """The output dataset."""
    episodes: int
    """Episodes in the output."""
    frames: int
    """Frames in the output."""
    converted: int
    """Episodes converted by this call (fewer than ``episodes`` after a resume)."""
    seconds: float
    """Wall time of the episode loop (reading, encoding, committing)."""
    problems: list[Any] = field(default_factory=list)
    """``validate_dataset`` problems of the result (empty = valid; not checked when ``validate=False``)."""


# --------------------------------------------------------------------------------------------- episode checks
def check_episode(ep: SourceEpisode, features: dict[str, FeatureSpec]) -> int:
    """Raise :class:`SourceError` naming the episode and key unless ``ep`` carries exactly the declared features,
    each with one row per frame of the declared shape and dtype; returns the episode length."""
    missing = [k for k in features if k not in ep.frames]
    unknown = [k for k in ep.frames if k not in features]
    if missing or unknown:
        raise SourceError(f"{ep.origin}: missing keys {missing}, unexpected keys {unknown} (declared: {list(features)})")
    if not ep.task:
        raise SourceError(f"{ep.origin}: empty task/instruction")
    lengths = {k: len(v) for k, v in ep.frames.items()}
    if len(set(lengths.values())) != 1:
        raise SourceError(f"{ep.origin}: keys have different numbers of frames {lengths}")
    n = next(iter(lengths.values()), 0)
    if n == 0:
        raise SourceError(f"{ep.origin}: episode has no frames")
    for k, spec in features.items():
        arr = ep.frames[k]
        if tuple(arr.shape[1:]) != tuple(spec.shape):
            raise SourceError(f"{ep.origin}, key {k}: per-frame shape {tuple(arr.shape[1:])}, expected {tuple(spec.shape)}")
        if spec.dtype == "video" and arr.dtype != np.uint8:
            raise SourceError(f"{ep.origin}, key {k}: images must be uint8, got {arr.dtype}")
        if spec.dtype != "video" and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            row = int(np.argmax(~np.isfinite(arr.reshape(n, -1)).all(1)))  # [T, ...] -> [T, D] -> first bad frame
            raise SourceError(f"{ep.origin}, key {k}: NaN/inf at frame {row}")
    return n


# --------------------------------------------------------------------------------------------- worker side
_WORKER_SOURCE: Source | None = None


def _init_worker(source: Source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _read(index: int) -> SourceEpisode:
    assert _WORKER_SOURCE is not None, "worker not initialised"
    ep = _WORKER_SOURCE.episode(index)
    check_episode(ep, _WORKER_SOURCE.features())
    return ep


class _Reader:
    """Yields source episodes ``start..stop-1`` in order, read by a process pool with a bounded look-ahead."""

    def __init__(self, source: Source, start: int, stop: int, workers: int) -> None:
        self.source, self.start, self.stop, self.workers = source, start, stop, workers

    def __iter__(self):
        if self.workers <= 1:
            feats = self.source.features()
            for i in range(self.start, self.stop):
                ep = self.source.episode(i)
                check_episode(ep, feats)
                yield ep
            return
        # fork: the source reaches the workers without pickling (sources reopen their files per process)
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self.source,)) as pool:
            pending: deque[Future[SourceEpisode]] = deque()
            nxt = self.start
            try:
                while nxt < self.stop or pending:
                    while nxt < self.stop and len(pending) < 2 * self.workers:
                        pending.append(pool.submit(_read, nxt))
                        nxt += 1
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()


# --------------------------------------------------------------------------------------------- main side
def _conversion_record(source: Source, fmt: str, opts: ConvertOptions) -> dict[str, Any]:
    return {"format": fmt, "source": str(Path(source.root).resolve()), "source_episodes": len(source),
            "options": opts.identity()}


def _open_writer(source: Source, dst: Path, record: dict[str, Any], opts: ConvertOptions) -> Any:
    from openlbm.data import layout as L
    from openlbm.data.writer import DatasetWriter

    rec_path = dst / CONVERSION_FILE
    if (dst / L.INFO_PATH).exists():
        if not rec_path.exists():
            raise SourceError(f"{dst}: an existing dataset not made by `lbm data convert`; choose another destination")
        previous = json.loads(rec_path.read_text())
        if previous != record:
            diff = {k: (previous.get(k), v) for k, v in record.items() if previous.get(k) != v}
            raise SourceError(f"{dst} holds a conversion with different settings {diff} (old, new); use another destination")
        writer = DatasetWriter.open(dst, gop=opts.gop, crf=opts.crf)
        log.info("resuming %s: %d episodes already converted", dst, writer.num_episodes)
        return writer
    if dst.exists() and any(dst.iterdir()):
        raise SourceError(f"{dst} exists and is not empty; choose an empty or new destination")
    writer = DatasetWriter.create(dst, source.features(), fps=source.fps, robot_type=source.robot_type,
                                  video_codec=opts.video_codec, gop=opts.gop, crf=opts.crf)
    L.write_json_atomic(rec_path, record)
    return writer


def _commit(writer: Any, ep: SourceEpisode, keys: list[str]) -> None:
    n = len(ep.frames[keys[0]])
    try:
        for t in range(n):
            writer.add_frame({k: ep.frames[k][t] for k in keys}, task=ep.task)
        index = writer.save_episode()
    except BaseException:
        writer.clear_episode()
        raise
    if index != ep.index:
        raise RuntimeError(f"{ep.origin}: committed as dataset episode {index}, expected {ep.index} (episodes out of order)")


def convert(source: Source, dst: Path | str, fmt: str, opts: ConvertOptions = ConvertOptions(),
            on_episode: Callable[[int, int], None] | None = None) -> ConvertReport:
    """Convert ``source`` into the v3 dataset ``dst`` (created, or resumed when a previous run was interrupted).

    ``fmt`` names the source format in ``meta/conversion.json``; ``on_episode(done, total)`` is called after each
    commit (progress). Raises :class:`SourceError` on bad input, naming file, episode and key; episodes committed
    before the error stay, and a re-run after fixing the input continues from there.
    """
    dst = Path(dst)
    if opts.workers < 1:
        raise SourceError(f"workers must be >= 1, got {opts.workers}")
    total = len(source) if opts.max_episodes is None else min(len(source), opts.max_episodes)
    if total < 1:
        raise SourceError(f"{source.root}: no episodes to convert")
    writer = _open_writer(source, dst, _conversion_record(source, fmt, opts), opts)
    start = writer.num_episodes
    if start > total:
        raise SourceError(f"{dst} already holds {start} episodes but the source has only {total}")
    keys = list(source.features())
    t0 = time.perf_counter()
    for ep in _Reader(source, start, total, opts.workers):
        _commit(writer, ep, keys)
        if on_episode is not None:
            on_episode(writer.num_episodes, total)
    seconds = time.perf_counter() - t0
    writer.finalize()
    report = ConvertReport(dst, writer.num_episodes, writer.num_frames, total - start, seconds)
    if opts.validate:
        from openlbm.data.validate import validate_dataset

        report.problems = validate_dataset(dst)
    return report
