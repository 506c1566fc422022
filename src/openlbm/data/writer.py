"""Crash-safe writer of LeRobot v3 datasets.

Commit protocol (every step is an atomic rename of a fully written, fsynced hidden temp file):

1. While recording, each camera streams into a hidden temp mp4; nothing visible changes.
2. ``save_episode`` moves the episode's videos and data parquet into their final (unreferenced) places, rewrites
   ``meta/tasks.parquet`` if the episode brought a new task, appends the files' sha256 to ``meta/checksums.jsonl``
   (:mod:`openlbm.data.checksums`), then writes the episode's row to
   ``meta/episodes/chunk-C/file-F.parquet``. **That rename is the commit point**: an episode exists iff its row
   does. ``stats.json`` and ``info.json`` totals are derived data, rewritten after the commit (and on ``open``).
3. Before ``finalize`` each episode has its own data/video/meta file (a valid v3 layout: every episode row names
   its files). ``finalize`` joins them into large multi-episode files (videos remuxed, not re-encoded) inside
   ``.openlbm_finalize/``, then writes the journal ``.openlbm_finalize.json`` (second commit point) and applies it
   (delete the per-episode files, move the joined ones in). A journal found later is rolled forward by
   :func:`recover` (called by ``open`` and by the reader); a staging folder without a journal is discarded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from openlbm.data import checksums as C
from openlbm.data import layout as L
from openlbm.data.stats import (
    IMAGE_FRAMES_PER_EPISODE,
    ImageHistogram,
    dataset_image_histograms,
    episode_image_histogram,
    episode_stats,
    lowdim_stats,
    merge_moments,
    read_image_histograms,
    write_image_histograms,
)
from openlbm.data.video import VideoEncoder, check_codec
from openlbm.locking import DirLock, lock_dir
from openlbm.types import FeatureSpec

log = logging.getLogger(__name__)
JOURNAL = ".openlbm_finalize.json"
STAGING = ".openlbm_finalize"
# info.json key: how many episodes the last finalize joined. Equal to the episode count means nothing was added since,
# so finalizing again (a resumed recording that had already finished) leaves every file as it is.
JOINED_KEY = "openlbm_joined_episodes"


def _apply_journal(root: Path) -> None:
    """Carry out the finalize journal in ``root`` (idempotent: a half-applied journal is simply finished)."""
    journal = root / JOURNAL
    plan = json.loads(journal.read_text())
    targets = {dst for _, dst in plan["moves"]}
    for rel in plan["delete"]:
        if rel not in targets:
            (root / rel).unlink(missing_ok=True)
    for src, dst in plan["moves"]:
        if (root / src).exists():
            (root / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / src, root / dst)
    L.fsync_dir(root)
    shutil.rmtree(root / STAGING, ignore_errors=True)
    journal.unlink()


def recover(root: Path) -> bool:
    """Finish (or discard) an interrupted ``finalize`` left by a dead process. Returns True if anything was done."""
    root = Path(root)
    if (root / JOURNAL).exists():
        _apply_journal(root)
        log.info("%s: completed an interrupted finalize", root)
        return True
    if (root / STAGING).exists():
        shutil.rmtree(root / STAGING)
        log.info("%s: discarded the staging folder of an interrupted finalize", root)
        return True
    return False


def stats_from_row(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"stats/<key>/<stat>": v}`` columns of an episode row -> ``{key: {stat: v}}``."""
    out: dict[str, dict[str, Any]] = {}
    for col, v in row.items():
        if col.startswith("stats/") and v is not None:
            key, stat = col[len("stats/") :].rsplit("/", 1)
            out.setdefault(key, {})[stat] = v
    return out


def _slot_of(row: dict[str, Any], prefix: str, chunk_size: int) -> int:
    return int(row[f"{prefix}/chunk_index"]) * chunk_size + int(row[f"{prefix}/file_index"])


@dataclass(frozen=True)
class PreparedEpisode:
    """An episode ready to commit: videos already encoded into hidden temp files on the dataset's filesystem.

    Made by :meth:`DatasetWriter.save_episode` from its buffer, or by :func:`prepare_episode` in another process
    (parallel conversion: the expensive encode and image stats happen there; only the commit is serial)."""

    length: int
    """Number of frames ``N``."""
    tasks: list[str]
    """Task text of every frame (``N`` entries)."""
    columns: dict[str, np.ndarray]
    """Declared non-video features, ``[N, *shape]`` of the declared dtype."""
    videos: dict[str, Path]
    """Video key -> finished temp mp4 (``.*.tmp``: removed by :meth:`DatasetWriter.open` if never committed)."""
    video_hists: dict[str, ImageHistogram]
    """Video key -> image histogram of the episode's stats frames, decoded from that mp4 (as stored)."""


def prepare_episode(root: Path, info: dict[str, Any], frames: dict[str, np.ndarray], task: str, gop: int = 2,
                    crf: int | None = None) -> PreparedEpisode:
    """Encode one episode's videos for the dataset at ``root`` (``info`` = its ``meta/info.json``), anywhere.

    ``frames`` holds every declared feature as ``[N, *shape]`` (images uint8 ``[N, H, W, 3]``); values must
    already match the declared shapes and dtypes. Safe to call from worker processes while the writer runs.
    """
    fps = float(info["fps"])
    codec = "av1" if any("av1" in str(f.get("info", {}).get("video.codec", "")) for f in info["features"].values()) else "h264"
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    n = len(next(iter(frames.values())))
    videos: dict[str, Path] = {}
    try:
        for k in video_keys:
            tmp = root / "videos" / f".prep-{os.getpid()}-{uuid.uuid4().hex[:12]}.mp4.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            enc = VideoEncoder(tmp, fps, codec, gop, crf)
            videos[k] = tmp
            for img in frames[k]:
                enc.add(img)
            enc.close()
        # image stats from the frames as stored (decoded), exactly as save_episode computes them
        hists = {k: episode_image_histogram(p, 0.0, n, fps, 0.25 / fps) for k, p in videos.items()}
    except BaseException:
        for p in videos.values():
            p.unlink(missing_ok=True)
        raise
    columns = {k: np.asarray(v).astype(info["features"][k]["dtype"], copy=False) for k, v in frames.items() if k not in video_keys}
    return PreparedEpisode(n, [task] * n, columns, videos, hists)


class DatasetWriter:
    """Append episodes to a LeRobot v3 dataset. Use :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, root: Path, info: dict[str, Any], gop: int = 2, crf: int | None = None) -> None:
        self.root = Path(root)
        self.info = info
        self.fps = float(info["fps"])
        self.gop, self.crf = gop, crf
        self.chunk_size = int(info.get("chunks_size", L.DEFAULT_CHUNK_SIZE))
        self.features = {k: L.feature_from_json(k, v, self.root / L.INFO_PATH) for k, v in info["features"].items()}
        self.video_keys = [k for k, f in self.features.items() if f.dtype == "video"]
        self.codec = "av1" if any("av1" in str(info["features"][k].get("info", {}).get("video.codec", "")) for k in self.video_keys) else "h264"
        self.user_keys = [k for k in self.features if k not in L.DEFAULT_FEATURES]
        self.tasks = L.read_tasks(self.root) if (self.root / L.TASKS_PATH).exists() else []
        self.episodes = L.read_episodes(self.root)
        self._ep_stats = [stats_from_row(r) for r in self.episodes]
        # dataset-level image histograms (see openlbm.data.stats); None = not current, recomputed by _write_derived
        self._hists: dict[str, ImageHistogram] | None = (
            {k: ImageHistogram() for k in self.video_keys} if not self.episodes
            else read_image_histograms(self.root, len(self.episodes), IMAGE_FRAMES_PER_EPISODE)
        )
        self._lock: DirLock | None = None
        self._reset_buffer()

    # ------------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        root: Path | str,
        features: dict[str, FeatureSpec],
        fps: float,
        robot_type: str = "",
        video_codec: str = "h264",
        gop: int = 2,
        crf: int | None = None,
        chunk_size: int = L.DEFAULT_CHUNK_SIZE,
    ) -> DatasetWriter:
        """Start a new dataset in ``root`` (must be absent or empty of a dataset). Locks ``root`` (one writer)."""
        root = Path(root)
        lock = lock_dir(root, "a dataset writer")
        if (root / L.INFO_PATH).exists():
            raise FileExistsError(f"{L.where(root / L.INFO_PATH)}: a dataset already exists here; use DatasetWriter.open")
        check_codec(video_codec)
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if gop < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        for k, f in features.items():
            if k in L.DEFAULT_FEATURES:
                raise ValueError(f"feature {k!r} is filled in by the writer; do not declare it")
            if f.dtype not in L.SUPPORTED_DTYPES:
                raise ValueError(f"feature {k!r}: dtype {f.dtype!r} not supported (use one of {sorted(L.SUPPORTED_DTYPES)})")
            if f.dtype == "video" and (len(f.shape) != 3 or f.shape[2] != 3):
                raise ValueError(f"feature {k!r}: video shape must be (H, W, 3), got {f.shape}")
        info = L.new_info(features, fps, robot_type, video_codec, chunk_size)
        root.mkdir(parents=True, exist_ok=True)
        L.write_tasks(root, [])
        L.write_json_atomic(root / L.STATS_PATH, {})
        L.write_json_atomic(root / L.INFO_PATH, info)
        w = cls(root, info, gop, crf)
        w._lock = lock
        return w

    @classmethod
    def open(cls, root: Path | str, gop: int = 2, crf: int | None = None) -> DatasetWriter:
        """Resume appending to ``root``: finishes/discards interrupted writes, drops uncommitted files. Locks ``root``."""
        root = Path(root)
        if not (root / L.INFO_PATH).is_file():
            raise FileNotFoundError(f"{L.where(root / L.INFO_PATH)}: no dataset to open here (use DatasetWriter.create)")
        lock = lock_dir(root, "a dataset writer")
        recover(root)
        L.remove_temp_files(root)
        w = cls(root, L.read_info(root), gop, crf)
        w._lock = lock
        w._remove_orphans()
        w._write_derived(exact=True)
        return w

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.finalize()
            else:
                self.clear_episode()
        finally:
            self.close()

    def close(self) -> None:
        """Release the folder lock (also released when the writer is garbage collected or the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.episodes[-1]["dataset_to_index"]) if self.episodes else 0

    # ------------------------------------------------------------------------------------------------ recording
    def _next_slot(self) -> int:
        used = [-1]
        for r in self.episodes:
            used.append(_slot_of(r, "data", self.chunk_size))
            used.append(_slot_of(r, "meta/episodes", self.chunk_size))
            used.extend(_slot_of(r, f"videos/{k}", self.chunk_size) for k in self.video_keys)
        return max(used) + 1

    def _path(self, template: str, slot: int, video_key: str | None = None) -> Path:
        c, f = divmod(slot, self.chunk_size)
        return self.root / template.format(chunk_index=c, file_index=f, video_key=video_key)

    def _reset_buffer(self) -> None:
        self._slot = self._next_slot()
        self._frames: dict[str, list[np.ndarray]] = {k: [] for k in self.user_keys if k not in self.video_keys}
        self._frame_tasks: list[str] = []
        self._encoders: dict[str, VideoEncoder] = {}

    def _encoder(self, key: str) -> VideoEncoder:
        enc = self._encoders.get(key)
        if enc is None:
            final = self._path(L.VIDEO_PATH, self._slot, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            enc = self._encoders[key] = VideoEncoder(L.tmp_path_for(final), self.fps, self.codec, self.gop, self.crf)
        return enc

    def _check_value(self, key: str, value: Any) -> np.ndarray:
        spec = self.features[key]
        n = len(self._frame_tasks)
        if spec.dtype == "video":
            arr = np.asarray(value)
            if arr.dtype != np.uint8 or arr.shape != spec.shape:
                raise ValueError(f"frame {n}, field={key}: expected uint8 {spec.shape} image, got {arr.dtype} {arr.shape}")
            return arr
        arr = np.asarray(value)
        if arr.shape == () and spec.shape == (1,):
            arr = arr.reshape(1)
        if arr.shape != spec.shape:
            raise ValueError(f"frame {n}, field={key}: expected shape {spec.shape}, got {arr.shape}")
        if spec.dtype == "bool" and arr.dtype != np.bool_ or np.issubdtype(arr.dtype, np.floating) and "int" in spec.dtype:
            raise ValueError(f"frame {n}, field={key}: expected {spec.dtype}, got {arr.dtype}")
        arr = arr.astype(spec.dtype, copy=False)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ValueError(f"frame {n}, field={key}: contains NaN or inf: {arr}")
        return arr

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        """Buffer one frame (all declared features, no default ones); video frames are encoded right away."""
        missing = [k for k in self.user_keys if k not in frame]
        unknown = [k for k in frame if k not in self.user_keys]
        if missing or unknown:
            raise ValueError(f"frame {len(self._frame_tasks)}: missing features {missing}, unknown features {unknown} "
                             f"(declared: {self.user_keys}; timestamp/index columns are filled in by the writer)")
        if not isinstance(task, str) or not task:
            raise ValueError(f"frame {len(self._frame_tasks)}: task must be a non-empty string, got {task!r}")
        checked = {k: self._check_value(k, v) for k, v in frame.items()}
        for k, arr in checked.items():
            if k in self.video_keys:
                self._encoder(k).add(arr)
            else:
                self._frames[k].append(arr)
        self._frame_tasks.append(task)

    def clear_episode(self) -> None:
        """Drop the frames recorded since the last save."""
        for enc in self._encoders.values():
            enc.abort()
        self._reset_buffer()

    @property
    def episode_length(self) -> int:
        return len(self._frame_tasks)

    def save_episode(self) -> int:
        """Commit the buffered frames as a new episode (atomically); returns its index."""
        n = len(self._frame_tasks)
        if n == 0:
            raise ValueError("save_episode() with no frames: call add_frame first")
        videos: dict[str, Path] = {}
        for k in self.video_keys:
            enc = self._encoders.pop(k)
            enc.close()
            videos[k] = enc.path
        hists = {k: episode_image_histogram(p, 0.0, n, self.fps, 0.25 / self.fps) for k, p in videos.items()}
        columns = {k: np.stack(v) for k, v in self._frames.items()}
        return self.save_prepared(PreparedEpisode(n, list(self._frame_tasks), columns, videos, hists))

    def save_prepared(self, prep: PreparedEpisode) -> int:
        """Commit an episode whose videos are already encoded (by :meth:`save_episode` or :func:`prepare_episode`)."""
        n = prep.length
        lowdim = sorted(k for k in self.user_keys if k not in self.video_keys)
        if sorted(prep.videos) != sorted(self.video_keys) or sorted(prep.columns) != lowdim:
            raise ValueError(f"prepared episode has videos {sorted(prep.videos)} and columns {sorted(prep.columns)}; "
                             f"the dataset declares {self.user_keys}")
        ep, slot, start = self.num_episodes, self._slot, self.num_frames
        c, f = divmod(slot, self.chunk_size)
        row: dict[str, Any] = {"episode_index": ep, "tasks": list(dict.fromkeys(prep.tasks)), "length": n,
                               "data/chunk_index": c, "data/file_index": f,
                               "dataset_from_index": start, "dataset_to_index": start + n}
        for k in self.video_keys:
            final = self._path(L.VIDEO_PATH, slot, k)
            final.parent.mkdir(parents=True, exist_ok=True)
            L.commit_file(prep.videos[k], final)
            row.update({f"videos/{k}/chunk_index": c, f"videos/{k}/file_index": f,
                        f"videos/{k}/from_timestamp": 0.0, f"videos/{k}/to_timestamp": n / self.fps})
        new_tasks = [t for t in row["tasks"] if t not in self.tasks]
        task_ids = {t: i for i, t in enumerate(self.tasks + new_tasks)}
        columns = dict(prep.columns)
        columns["timestamp"] = (np.arange(n) / self.fps).astype(np.float32)
        columns["frame_index"] = np.arange(n, dtype=np.int64)
        columns["episode_index"] = np.full(n, ep, dtype=np.int64)
        columns["index"] = np.arange(start, start + n, dtype=np.int64)
        columns["task_index"] = np.array([task_ids[t] for t in prep.tasks], dtype=np.int64)
        L.write_parquet_atomic(self._path(L.DATA_PATH, slot), self._data_table(columns))
        if new_tasks:
            L.write_tasks(self.root, self.tasks + new_tasks)
            self.tasks += new_tasks
        stats = episode_stats(columns)
        stats.update({k: h.stats() for k, h in prep.video_hists.items()})
        for key, st in stats.items():
            row.update({f"stats/{key}/{name}": v for name, v in st.items()})
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = c, f
        files = [self._path(L.DATA_PATH, slot), *(self._path(L.VIDEO_PATH, slot, k) for k in self.video_keys)]
        # hashes on disk before the commit point: no committed file is ever without one
        C.append(self.root, C.hash_files(self.root, [str(p.relative_to(self.root)) for p in files]))
        L.write_parquet_atomic(self._path(L.EPISODES_PATH, slot), pa.Table.from_pylist([row]))  # commit point
        self.episodes.append(row)
        self._ep_stats.append(stats)
        if self._hists is not None:
            self._hists = {k: self._hists[k].merge(h) for k, h in prep.video_hists.items()}
        self._write_derived(exact=False)
        self._reset_buffer()
        return ep

    def _data_table(self, columns: dict[str, np.ndarray]) -> pa.Table:
        arrays, fields = [], []
        for k in [*[k for k in self.user_keys if k not in self.video_keys], *L.DEFAULT_FEATURES]:
            spec, arr = self.features[k], columns[k]
            typ = L.arrow_type(spec)
            if pa.types.is_fixed_size_list(typ):
                flat = pa.array(arr.reshape(-1), typ.value_type)  # [N, *shape] -> [N*D]
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, typ.list_size))
            else:
                arrays.append(pa.array(arr.reshape(-1), typ))
            fields.append(pa.field(k, typ))
        schema = pa.schema(fields, metadata={"huggingface": L.hf_features_meta({k: self.features[k] for k in (f.name for f in fields)})})
        return pa.Table.from_arrays(arrays, schema=schema)

    def _write_derived(self, exact: bool) -> None:
        """Rewrite info.json totals, the image histograms and stats.json from the committed episodes.

        ``exact``: low-dim stats with exact quantiles (streaming passes over the data files; ``open``/``finalize``).
        Otherwise (after each ``save_episode``, where a full pass per episode would cost O(frames^2) over a
        recording) low-dim stats carry the exact moments merged from the episode rows and no quantiles until
        ``finalize``; image stats are always exact (their histograms add up)."""
        info = dict(self.info)
        info.update(total_episodes=self.num_episodes, total_frames=self.num_frames, total_tasks=len(self.tasks),
                    splits={"train": f"0:{self.num_episodes}"} if self.episodes else {})
        L.write_json_atomic(self.root / L.INFO_PATH, info)
        self.info = info
        if not self.episodes:
            L.write_json_atomic(self.root / L.STATS_PATH, {})
            return
        from openlbm.data.dataset import DatasetMeta

        meta = DatasetMeta(self.root) if exact or self._hists is None else None
        if self._hists is None:
            self._hists = dataset_image_histograms(meta, IMAGE_FRAMES_PER_EPISODE, stored=False)
        if exact:
            stats = lowdim_stats(meta)
        else:
            stats = merge_moments([{k: v for k, v in s.items() if k not in self.video_keys} for s in self._ep_stats])
        stats.update({k: h.stats() for k, h in self._hists.items()})
        write_image_histograms(self.root, self._hists, self.num_episodes, IMAGE_FRAMES_PER_EPISODE)
        L.write_json_atomic(self.root / L.STATS_PATH, stats)

    def _referenced(self) -> set[Path]:
        refs: set[Path] = set()
        for r in self.episodes:
            refs.add(self._path(L.DATA_PATH, _slot_of(r, "data", self.chunk_size)))
            refs.add(self._path(L.EPISODES_PATH, _slot_of(r, "meta/episodes", self.chunk_size)))
            for k in self.video_keys:
                refs.add(self._path(L.VIDEO_PATH, _slot_of(r, f"videos/{k}", self.chunk_size), k))
        return refs

    def _remove_orphans(self) -> None:
        """Delete data/video files of an episode that was being saved when the process died (never committed)."""
        refs = self._referenced()
        for p in [*(self.root / "data").glob("chunk-*/file-*.parquet"), *(self.root / "videos").glob("*/chunk-*/file-*.mp4")]:
            if p not in refs:
                log.info("removing uncommitted %s", p)
                p.unlink()
        recorded = C.read_checksums(self.root)
        kept = {rel: h for rel, h in (recorded or {}).items() if self.root / rel in refs}
        if recorded is not None and kept != recorded:  # lines of files that never committed (or were replaced)
            C.write(self.root / C.CHECKSUMS_PATH, kept)

    # ------------------------------------------------------------------------------------------------ finalize
    def finalize(self) -> None:
        """Join the per-episode files into multi-episode files (crash-safe; idempotent; writing may resume after)."""
        if self._frame_tasks:
            log.warning("finalize(): dropping %d unsaved frames (call save_episode first)", len(self._frame_tasks))
            self.clear_episode()
        if not self.episodes:
            return
        if self.info.get(JOINED_KEY) == self.num_episodes:
            log.info("%s: all %d episodes already joined; nothing to finalize", self.root, self.num_episodes)
            return
        from openlbm.data.finalize import consolidate

        moves, new_rows = consolidate(self)
        old = {str(p.relative_to(self.root)) for p in self._referenced()}
        L.write_json_atomic(self.root / JOURNAL, {"moves": moves, "delete": sorted(old)})  # commit point
        _apply_journal(self.root)
        self.episodes = new_rows
        self.info[JOINED_KEY] = len(new_rows)  # recorded after the joined files are in place: a crash re-joins
        self._write_derived(exact=True)  # joined files hold the same frames: image histograms stay valid
        self._reset_buffer()
