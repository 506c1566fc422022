"""Turn any :class:`~openlbm.data.convert.source.Source` into a LeRobot v3 dataset: streaming, parallel, resumable.

```
 worker 1 ─ read + check + encode episode i   ─┐  (videos -> hidden temp mp4s, image stats)
 worker 2 ─ read + check + encode episode i+1 ─┼─► main: DatasetWriter.save_prepared (commit) in source order
 worker W ─ read + check + encode episode i+W ─┘        only low-dim columns and file names cross processes
```
- **Streaming**: each worker holds one decoded episode; at most ``2 * workers`` prepared episodes (their low-dim
  columns; videos already on disk) wait for the commit, whatever the size of the source.
- **Order and resume**: episodes are committed in source order, so after a kill the dataset holds source episodes
  ``0..N-1`` exactly; re-running the same command opens the writer (which drops any half-written episode) and
  continues at source episode ``N``. ``meta/conversion.json`` records what was converted with which options (and
  the fps and features the source produces), and a re-run with a different source or options is refused instead of
  mixing two conversions.
- **Where the encode happens**: in the workers (:func:`openlbm.data.writer.prepare_episode`), with the image
  stats. Profiling a 1-worker conversion of raw-image HDF5 showed reading at ~5500 frames/s but the writer's video
  encode + image stats at >80% of the time, so reading in parallel alone gave 1.1x with 2 workers, this 1.55-2.0x
  (``bench/convert.py``, 2 cores); the main process only commits (moves files, writes parquet rows, fsyncs).
- **Validation**: the finished dataset goes through :func:`openlbm.data.validate.validate_dataset`; its problems
  are returned in :class:`ConvertReport` (the CLI prints them and exits 1), never dropped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.data import layout as L
from openlbm.data.convert.source import Source, SourceEpisode, SourceError
from openlbm.data.writer import PreparedEpisode, prepare_episode
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
@dataclass(frozen=True)
class _Job:
    """What a worker needs besides the episode index: the source and how the output encodes videos."""

    source: Source
    root: Path
    info: dict[str, Any]
    gop: int
    crf: int | None


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job, parent: int) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it shuts the pool down

    def exit_with_parent() -> None:
        # A SIGKILLed main process cannot shut the pool down, and forked workers keep its queue pipes open, so they
        # would wait forever: leave as soon as we are re-parented.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def _prepare(job: _Job, index: int) -> tuple[str, PreparedEpisode]:
    """Read, check and encode source episode ``index``; only low-dim columns and file names travel back."""
    ep = job.source.episode(index)
    check_episode(ep, job.source.features())
    if ep.index != index:
        raise SourceError(f"{ep.origin}: source returned episode {ep.index} when asked for {index}")
    return ep.origin, prepare_episode(job.root, job.info, ep.frames, ep.task, job.gop, job.crf)


def _prepare_in_worker(index: int) -> tuple[str, PreparedEpisode]:
    assert _WORKER_JOB is not None, "worker not initialised"
    return _prepare(_WORKER_JOB, index)


class _Reader:
    """Yields prepared episodes ``start..stop-1`` in order, made by a process pool with a bounded look-ahead."""

    def __init__(self, job: _Job, start: int, stop: int, workers: int) -> None:
        self.job, self.start, self.stop, self.workers = job, start, stop, workers

    def __iter__(self) -> Iterator[tuple[str, PreparedEpisode]]:
        if self.workers <= 1:
            for i in range(self.start, self.stop):
                yield _prepare(self.job, i)
            return
        # fork: the source reaches the workers without pickling (sources reopen their files per process)
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.job, os.getpid())) as pool:
            pending: deque[Future[tuple[str, PreparedEpisode]]] = deque()
            nxt = self.start
            try:
                while nxt < self.stop or pending:
                    while nxt < self.stop and len(pending) < 2 * self.workers:
                        pending.append(pool.submit(_prepare_in_worker, nxt))
                        nxt += 1
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()


# --------------------------------------------------------------------------------------------- main side
def _conversion_record(source: Source, fmt: str, opts: ConvertOptions) -> dict[str, Any]:
    feats = {k: [f.dtype, list(f.shape)] for k, f in source.features().items()}
    return {"format": fmt, "source": str(Path(source.root).resolve()), "source_episodes": len(source),
            "options": opts.identity(), "fps": source.fps, "features": feats}


def _open_writer(source: Source, dst: Path, record: dict[str, Any], opts: ConvertOptions) -> Any:
    from openlbm.data.writer import DatasetWriter

    rec_path = dst / CONVERSION_FILE
    if (dst / L.INFO_PATH).exists():
        if not rec_path.exists():
            raise SourceError(f"{dst}: an existing dataset not made by `lbm data convert` or `import-videos`; choose another destination")
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
    for key, spec in source.features().items():
        if spec.dtype == "video" and (spec.shape[0] % 2 or spec.shape[1] % 2):
            raise SourceError(f"{source.root}, key {key}: images are {spec.shape[0]}x{spec.shape[1]}; the v3 videos "
                              "(yuv420p) need even height and width")
    writer = _open_writer(source, dst, _conversion_record(source, fmt, opts), opts)
    start = writer.num_episodes
    if start > total:
        raise SourceError(f"{dst} already holds {start} episodes but the source has only {total}")
    job = _Job(source, dst, writer.info, opts.gop, opts.crf)
    t0 = time.perf_counter()
    try:
        for i, (origin, prep) in enumerate(_Reader(job, start, total, opts.workers), start):
            if writer.save_prepared(prep) != i:
                raise RuntimeError(f"{origin}: committed out of order (expected dataset episode {i})")
            if on_episode is not None:
                on_episode(writer.num_episodes, total)
    finally:
        L.remove_temp_files(dst)  # encoded but never committed (an error stopped the loop): not part of the dataset
    seconds = time.perf_counter() - t0
    writer.finalize()
    report = ConvertReport(dst, writer.num_episodes, writer.num_frames, total - start, seconds)
    if opts.validate:
        from openlbm.data.validate import validate_dataset

        report.problems = validate_dataset(dst)
    return report
