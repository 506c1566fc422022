"""LeRobot v2.1 datasets (much of the Hugging Face hub) as a :class:`~openlbm.data.convert.source.Source`.

The v2.1 layout (one file per episode)::

    meta/info.json              codebase_version "v2.x", fps, features, data_path / video_path templates
    meta/episodes.jsonl         {"episode_index", "tasks": [...], "length"} per line
    meta/tasks.jsonl            {"task_index", "task"} per line
    meta/episodes_stats.jsonl   per-episode stats (recomputed by the v3 writer, so not read)
    data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
    videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4

Every feature keeps its key, dtype and shape; ``video`` features are decoded with PyAV
(:class:`openlbm.data.video.VideoReader`) and re-encoded by the v3 writer; the columns the v3 writer fills in
(``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``) are regenerated. The instruction is the
task of the episode's first frame (``task_index`` -> ``tasks.jsonl``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlbm.data import layout as L
from openlbm.data.convert.source import SourceEpisode, SourceError
from openlbm.types import FeatureSpec

EPISODES_JSONL = "meta/episodes.jsonl"
TASKS_JSONL = "meta/tasks.jsonl"


def is_lerobot_v2(root: Path) -> bool:
    """True for a folder with ``meta/info.json`` saying ``codebase_version`` v2.x and a ``meta/episodes.jsonl``."""
    info = root / L.INFO_PATH
    if not (info.is_file() and (root / EPISODES_JSONL).is_file()):
        return False
    try:
        return str(json.loads(info.read_text()).get("codebase_version", "")).startswith("v2")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SourceError(f"{path}: missing (a LeRobot v2.1 dataset needs it)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}, line {n}: invalid JSON ({e})") from None
    return rows


class LeRobotV21Source:
    """A LeRobot v2.x dataset folder opened for conversion (holds no open files; safe to fork)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        info_path = self.root / L.INFO_PATH
        if not is_lerobot_v2(self.root):
            raise SourceError(f"{self.root}: not a LeRobot v2.x dataset (needs meta/info.json with codebase_version v2.x "
                              "and meta/episodes.jsonl)")
        self.info = json.loads(info_path.read_text())
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise SourceError(f"{info_path}: field '{key}' missing")
        self.chunks_size = int(self.info.get("chunks_size", 1000))
        self.video_path = self.info.get("video_path")
        all_feats = {k: L.feature_from_json(k, v, info_path) for k, v in self.info["features"].items()}
        self._features: dict[str, FeatureSpec] = {}
        for k, f in all_feats.items():
            if k in L.DEFAULT_FEATURES:
                continue
            if f.dtype == "video" and not self.video_path:
                raise SourceError(f"{info_path}, feature {k}: dtype video but info.json has no video_path")
            if f.dtype not in L.SUPPORTED_DTYPES:
                raise SourceError(f"{info_path}, feature {k}: dtype {f.dtype!r} not supported (supported: "
                                  f"{sorted(L.SUPPORTED_DTYPES)})")
            self._features[k] = f
        self.video_keys = [k for k, f in self._features.items() if f.dtype == "video"]
        self.episodes = sorted(_jsonl(self.root / EPISODES_JSONL), key=lambda r: int(r["episode_index"]))
        self.tasks = {int(r["task_index"]): str(r["task"]) for r in _jsonl(self.root / TASKS_JSONL)}

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def robot_type(self) -> str:
        return str(self.info.get("robot_type") or "")

    def features(self) -> dict[str, FeatureSpec]:
        return dict(self._features)

    def __len__(self) -> int:
        return len(self.episodes)

    def _file(self, template: str, ep: int, video_key: str | None = None) -> Path:
        return self.root / template.format(episode_chunk=ep // self.chunks_size, episode_index=ep, video_key=video_key)

    def _table(self, ep: int, origin: str) -> pa.Table:
        path = self._file(str(self.info["data_path"]), ep)
        if not path.is_file():
            raise SourceError(f"{origin}: data file {path} missing")
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{path}, episode {ep}: unreadable parquet (truncated or corrupt): {e}") from None

    def _video(self, ep: int, key: str, times: np.ndarray) -> np.ndarray:
        from openlbm.data.video import VideoReader

        path = self._file(str(self.video_path), ep, key)
        if not path.is_file():
            raise SourceError(f"{path}, episode {ep}, key {key}: video file missing")
        try:
            reader = VideoReader(path, tolerance_s=0.25 / self.fps)
            try:
                return reader.frames_at([float(t) for t in times])
            finally:
                reader.close()
        except L.DatasetError as e:
            raise SourceError(f"episode {ep}, key {key}: {e}") from None

    def episode(self, index: int) -> SourceEpisode:
        row = self.episodes[index]
        ep = int(row["episode_index"])
        origin = f"{self.root}, episode {ep}"
        table = self._table(ep, origin)
        path = self._file(str(self.info["data_path"]), ep)
        n = table.num_rows
        if "length" in row and int(row["length"]) != n:
            raise SourceError(f"{path}, episode {ep}: {n} rows but meta/episodes.jsonl says length {row['length']}")
        frames: dict[str, np.ndarray] = {}
        for k, spec in self._features.items():
            if spec.dtype == "video":
                continue
            if k not in table.column_names:
                raise SourceError(f"{path}, episode {ep}: key '{k}' missing (declared in meta/info.json)")
            try:
                frames[k] = L.column_to_numpy(table.column(k), spec)
            except (ValueError, pa.ArrowException) as e:
                raise SourceError(f"{path}, episode {ep}, key {k}: shape does not match {spec.shape} ({e})") from None
        times = (table.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in table.column_names
                 else np.arange(n) / self.fps)
        for k in self.video_keys:
            frames[k] = self._video(ep, k, times)
        task = self._task(table, row, path, ep)
        return SourceEpisode(index=index, task=task, frames=frames, origin=origin)

    def _task(self, table: pa.Table, row: dict[str, Any], path: Path, ep: int) -> str:
        if "task_index" in table.column_names and table.num_rows:
            ti = int(table.column("task_index")[0].as_py())
            if ti not in self.tasks:
                raise SourceError(f"{path}, episode {ep}, key task_index: {ti} not in meta/tasks.jsonl")
            return self.tasks[ti]
        tasks = row.get("tasks") or []
        if not tasks:
            raise SourceError(f"{path}, episode {ep}: no task_index column and no tasks in meta/episodes.jsonl")
        return str(tasks[0])

    def __iter__(self) -> Iterator[SourceEpisode]:
        for i in range(len(self)):
            yield self.episode(i)
