"""The LeRobotDataset v3.0 on-disk layout: paths, ``meta/`` files and crash-safe file helpers.

```
root/
  meta/info.json                              features, fps, path templates, totals
  meta/stats.json                             {feature: {mean, std, min, max, q01, q99, count, ...}}
  meta/tasks.parquet                          task_index (+ pandas index = task text)
  meta/episodes/chunk-XXX/file-XXX.parquet    one row per episode: offsets into data/ and videos/, per-episode stats
  data/chunk-XXX/file-XXX.parquet             frames of many episodes (low-dim features only)
  videos/<video_key>/chunk-XXX/file-XXX.mp4   one stream per camera, many episodes per file
```
Every write goes to a hidden temporary file in the same folder and is moved into place with ``os.replace``, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlbm.errors import UserError
from openlbm.types import FeatureSpec

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_CHUNK_SIZE = 1000
# Columns the writer fills in for every frame (LeRobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, FeatureSpec] = {
    "timestamp": FeatureSpec("float32", (1,)),
    "frame_index": FeatureSpec("int64", (1,)),
    "episode_index": FeatureSpec("int64", (1,)),
    "index": FeatureSpec("int64", (1,)),
    "task_index": FeatureSpec("int64", (1,)),
}
NUMERIC_DTYPES = {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}
SUPPORTED_DTYPES = NUMERIC_DTYPES | {"video"}


class DatasetError(UserError, ValueError):
    """A dataset on disk breaks the format; the message names the file, episode and field."""


def where(file: Path | str | None = None, episode: int | None = None, field: str | None = None) -> str:
    """``"file=…, episode=…, field=…"`` prefix for error messages."""
    parts = []
    if file is not None:
        parts.append(f"file={file}")
    if episode is not None:
        parts.append(f"episode={episode}")
    if field is not None:
        parts.append(f"field={field}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------- atomic file writes
def tmp_path_for(path: Path) -> Path:
    """Hidden temp name beside ``path`` (never matches ``*.parquet``/``*.mp4`` globs)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and atomically move it to ``path``."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    tmp.write_text(json.dumps(obj, indent=4))
    commit_file(tmp, path)


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    pq.write_table(table, tmp, compression="snappy")
    commit_file(tmp, path)


def remove_temp_files(root: Path) -> int:
    """Delete leftovers of interrupted writes (``.*.tmp``); returns how many."""
    n = 0
    for sub in ("meta", "data", "videos"):
        for p in (root / sub).rglob(".*.tmp") if (root / sub).exists() else []:
            p.unlink(missing_ok=True)
            n += 1
    return n


# ------------------------------------------------------------------------------------------------------- info.json
def feature_to_json(spec: FeatureSpec, fps: float, codec: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"dtype": spec.dtype, "shape": list(spec.shape), "names": list(spec.names) if spec.names else None}
    if spec.dtype == "video":
        h, w, c = spec.shape
        d["names"] = list(spec.names) if spec.names else ["height", "width", "channels"]
        d["info"] = {
            "video.height": h,
            "video.width": w,
            "video.codec": codec or "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": c,
            "has_audio": False,
        }
    return d


def feature_from_json(key: str, d: Any, file: Path) -> FeatureSpec:
    if not isinstance(d, dict) or "dtype" not in d or "shape" not in d:
        raise DatasetError(f"{where(file, field=key)}: feature entry needs 'dtype' and 'shape', got {d!r}")
    names = d.get("names")
    if isinstance(names, dict):  # some LeRobot datasets use {"motors": [...]}
        names = next(iter(names.values()), None)
    return FeatureSpec(str(d["dtype"]), tuple(int(x) for x in d["shape"]), tuple(names) if names else None)


def new_info(features: dict[str, FeatureSpec], fps: float, robot_type: str, codec: str, chunk_size: int) -> dict:
    all_feats = {**features, **DEFAULT_FEATURES}
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": chunk_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if any(f.dtype == "video" for f in features.values()) else None,
        "features": {k: feature_to_json(v, fps, codec) for k, v in all_feats.items()},
    }


def read_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.exists():
        raise FileNotFoundError(f"{where(path)}: not a LeRobot v3 dataset (meta/info.json missing)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where(path)}: invalid JSON ({e})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(f"{where(path, field='codebase_version')}: expected v3.x, got {version!r} (v2 is not supported)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(f"{where(path, field=key)}: missing")
    if isinstance(info["fps"], bool) or not isinstance(info["fps"], int | float):
        raise DatasetError(f"{where(path, field='fps')}: expected a number, got {info['fps']!r:.40}")
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{where(path, field='features')}: expected a map of feature name to spec, "
                           f"got {type(info['features']).__name__}")
    return info


# ------------------------------------------------------------------------------------------------------- tasks
def write_tasks(root: Path, tasks: list[str]) -> None:
    """``meta/tasks.parquet`` exactly as LeRobot writes it with pandas (task text is the index)."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.large_string())})
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "object", "numpy_type": "str", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    write_parquet_atomic(root / TASKS_PATH, table)


def read_tasks(root: Path) -> list[str]:
    """Task texts ordered by ``task_index``."""
    path = root / TASKS_PATH
    if not path.exists():
        raise FileNotFoundError(f"{where(path)}: meta/tasks.parquet missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{where(path)}: unreadable parquet ({e})") from None
    text_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text_col is None or "task_index" not in table.column_names:
        raise DatasetError(f"{where(path, field='task')}: needs columns task_index and task text, has {table.column_names}")
    idx = table.column("task_index").to_pylist()
    texts = table.column(text_col).to_pylist()
    out = [""] * len(idx)
    for i, t in zip(idx, texts, strict=True):
        if not 0 <= i < len(idx):
            raise DatasetError(f"{where(path, field='task_index')}: task_index {i} out of range 0..{len(idx) - 1}")
        out[i] = t
    return out


# ------------------------------------------------------------------------------------------------------- episodes
def episode_files(root: Path) -> list[Path]:
    d = root / EPISODES_DIR
    return sorted(d.glob("chunk-*/file-*.parquet")) if d.exists() else []


def read_episodes(root: Path) -> list[dict[str, Any]]:
    """All rows of ``meta/episodes``, sorted by ``episode_index``."""
    rows: list[dict[str, Any]] = []
    for f in episode_files(root):
        try:
            rows.extend(pq.read_table(f).to_pylist())
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{where(f)}: unreadable episodes parquet ({e})") from None
    rows.sort(key=lambda r: r["episode_index"])
    for want, r in enumerate(rows):
        if r["episode_index"] != want:
            raise DatasetError(f"{where(root / EPISODES_DIR, episode=want)}: episodes must be numbered 0..N-1 without gaps")
    return rows


def episodes_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


# ------------------------------------------------------------------------------------------------------- data
_ARROW = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(), "int16": pa.int16(),
          "int8": pa.int8(), "uint8": pa.uint8(), "bool": pa.bool_()}


def arrow_type(spec: FeatureSpec) -> pa.DataType:
    base = _ARROW[spec.dtype]
    # LeRobot (``get_hf_features_from_features``) stores shape-(1,) features as plain columns, others as lists.
    return base if spec.shape == (1,) else pa.list_(base, int(np.prod(spec.shape)))


def hf_features_meta(features: dict[str, FeatureSpec]) -> str:
    """The ``huggingface`` schema metadata LeRobot's ``datasets`` loader reads back."""
    out: dict[str, Any] = {}
    for k, s in features.items():
        value = {"dtype": s.dtype, "_type": "Value"}
        if s.shape == (1,):
            out[k] = value
        else:
            out[k] = {"feature": value, "length": int(np.prod(s.shape)), "_type": "List"}
    return json.dumps({"info": {"features": out}})


def column_to_numpy(col: pa.ChunkedArray, spec: FeatureSpec) -> np.ndarray:
    """An Arrow column -> ``[N, *shape]`` numpy array of the feature's dtype."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(n, *spec.shape)  # [N*prod(shape)] -> [N, *shape]
    return arr.to_numpy(zero_copy_only=False).reshape(n, *spec.shape)  # [N] -> [N, 1]


def iter_data_files(root: Path, episodes: Iterable[dict[str, Any]], template: str = DATA_PATH) -> list[Path]:
    seen: dict[tuple[int, int], None] = {}
    for ep in episodes:
        seen[(int(ep["data/chunk_index"]), int(ep["data/file_index"]))] = None
    return [root / template.format(chunk_index=c, file_index=f) for c, f in seen]
