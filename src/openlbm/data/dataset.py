"""Read LeRobot v3 datasets: metadata, low-dim columns, frame-accurate video, and training windows.

Window indexing for ``n_obs_steps = T`` and ``horizon = H`` around the sample's frame ``t`` (``|`` = episode edge):

```
frames      |  0   1   2  ...  t-1   t   t+1  ...  t+H-1  ...  N-1 |
obs         |                  [t-T+1 .. t]                        |   images + state, obs_is_pad where < 0
action      |                        [t .. t+H-1]                  |   action_is_pad where >= N
```
``latent_action`` (when the dataset has it) uses the action window and yields ``latent_is_pad``; ``is_pad`` maps every
windowed key to its mask. A dataset without ``action`` (action-less video) or without ``observation.state`` simply
has no such keys in its samples.
Indices outside the episode are clamped to its first/last frame and flagged in the masks, so a model sees
repeated edge frames and ignores padded actions in its loss. Any key can instead use its own offsets via
``delta_timestamps={key: [seconds, ...]}`` (multiples of ``1 / fps``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from openlbm.data import layout as L
from openlbm.data.video import ReaderPool
from openlbm.types import ACTION_KEY, LATENT_ACTION_KEY, STATE_KEY, FeatureSpec, chw_from_hwc

log = logging.getLogger(__name__)


class DatasetMeta:
    """Everything in ``meta/``: info, features, tasks, per-episode offsets, stats."""

    def __init__(self, root: Path | str, tolerance_s: float | None = None) -> None:
        from openlbm.data.writer import recover

        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"dataset root {self.root} does not exist")
        if (self.root / ".openlbm_finalize.json").exists():
            recover(self.root)
        self.info = L.read_info(self.root)
        self.fps = float(self.info["fps"])
        if self.fps <= 0:
            raise L.DatasetError(f"{L.where(self.root / L.INFO_PATH, field='fps')}: must be > 0, got {self.fps}")
        self.tolerance_s = float(tolerance_s) if tolerance_s is not None else 0.25 / self.fps
        info_path = self.root / L.INFO_PATH
        self.features: dict[str, FeatureSpec] = {k: L.feature_from_json(k, v, info_path) for k, v in self.info["features"].items()}
        self.camera_keys = [k for k, f in self.features.items() if f.dtype == "video"]
        self.tasks = L.read_tasks(self.root)
        self.episodes = L.read_episodes(self.root)
        stats_path = self.root / L.STATS_PATH
        self.stats: dict[str, dict[str, list]] = {}
        if stats_path.exists():
            import json

            self.stats = json.loads(stats_path.read_text())
        self.data_path = str(self.info["data_path"])
        self.video_path = str(self.info.get("video_path") or L.VIDEO_PATH)
        self.robot_type = str(self.info.get("robot_type") or "")
        self.ep_from = np.array([int(e["dataset_from_index"]) for e in self.episodes], dtype=np.int64)
        self.ep_to = np.array([int(e["dataset_to_index"]) for e in self.episodes], dtype=np.int64)
        self.ep_len = self.ep_to - self.ep_from
        for e, row in enumerate(self.episodes):
            if int(row["length"]) != self.ep_len[e]:
                raise L.DatasetError(f"{L.where(L.episode_files(self.root)[0], e, 'length')}: length {row['length']} "
                                     f"!= dataset_to_index - dataset_from_index = {self.ep_len[e]}")

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.ep_len.sum())

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def has_action(self) -> bool:
        """False for action-less data (e.g. video imported with ``lbm data import-videos``)."""
        return ACTION_KEY in self.features

    @property
    def has_state(self) -> bool:
        return STATE_KEY in self.features

    @property
    def latent_dim(self) -> int | None:
        """``L`` of the per-frame ``latent_action`` feature, ``None`` when the dataset has none."""
        spec = self.features.get(LATENT_ACTION_KEY)
        return None if spec is None else int(np.prod(spec.shape))

    def contents(self) -> str:
        """One line on what the frames carry beyond images, e.g. ``"actions: no (action-less), state: no"``."""
        parts = ["actions: yes" if self.has_action else "actions: no (action-less)",
                 "state: yes" if self.has_state else "state: no"]
        if self.latent_dim is not None:
            parts.append(f"latent actions: yes (L={self.latent_dim})")
        return ", ".join(parts)

    def episode_of(self, index: int) -> int:
        """Episode holding global frame ``index``."""
        ep = int(np.searchsorted(self.ep_to, index, side="right"))
        if not (0 <= ep < self.num_episodes and self.ep_from[ep] <= index):
            raise IndexError(f"frame index {index} not in any episode of {self.root} (0..{self.ep_to[-1] - 1 if len(self.ep_to) else -1})")
        return ep

    def data_file(self, ep: int) -> Path:
        r = self.episodes[ep]
        return self.root / self.data_path.format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))

    def video_file(self, ep: int, key: str) -> Path:
        r = self.episodes[ep]
        try:
            c, f = int(r[f"videos/{key}/chunk_index"]), int(r[f"videos/{key}/file_index"])
        except (KeyError, TypeError):
            raise L.DatasetError(f"{L.where(self.root / L.EPISODES_DIR, ep, key)}: episode row has no video offsets") from None
        return self.root / self.video_path.format(video_key=key, chunk_index=c, file_index=f)

    def video_time(self, ep: int, key: str, frame: int) -> float:
        """Timestamp (s) of frame ``frame`` of episode ``ep`` inside its video file."""
        return float(self.episodes[ep][f"videos/{key}/from_timestamp"]) + frame / self.fps

    def task_of_episode(self, ep: int) -> str:
        tasks = self.episodes[ep].get("tasks") or []
        return str(tasks[0]) if tasks else ""


class LowDimStore:
    """All non-video columns as numpy arrays indexed by global frame index (loaded lazily, once per process)."""

    def __init__(self, meta: DatasetMeta) -> None:
        self.meta = meta
        self.keys = [k for k, f in meta.features.items() if f.dtype in L.NUMERIC_DTYPES]
        self._cols: dict[str, np.ndarray] | None = None

    def _load_file(self, path: Path, ep: int) -> pa.Table:
        if not path.exists():
            raise FileNotFoundError(f"{L.where(path, ep)}: data parquet missing")
        try:
            table = pq.read_table(path, memory_map=True)
        except (pa.ArrowException, OSError) as e:
            raise L.DatasetError(f"{L.where(path, ep)}: unreadable parquet, truncated or corrupt ({e})") from None
        for k in self.keys:
            if k not in table.column_names:
                raise L.DatasetError(f"{L.where(path, ep, k)}: column missing (declared in meta/info.json)")
        return table

    def _load(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
        seen: set[Path] = set()
        for ep in range(self.meta.num_episodes):
            path = self.meta.data_file(ep)
            if path in seen:
                continue
            seen.add(path)
            table = self._load_file(path, ep)
            for k in self.keys:
                try:
                    parts[k].append(L.column_to_numpy(table.column(k), self.meta.features[k]))
                except (ValueError, pa.ArrowException) as e:
                    raise L.DatasetError(f"{L.where(path, ep, k)}: expected {self.meta.features[k].dtype} {self.meta.features[k].shape} ({e})") from None
        cols = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
        index = cols["index"].reshape(-1)
        n = self.meta.num_frames
        if len(index) < n or (len(index) and index.max() >= len(index)):
            order = np.full(max(n, int(index.max(initial=-1)) + 1), -1, dtype=np.int64)
            order[index] = np.arange(len(index))
            if (order[:n] < 0).any():
                missing = int(np.argmax(order[:n] < 0))
                ep = self.meta.episode_of(missing)
                raise L.DatasetError(f"{L.where(self.meta.data_file(ep), ep, 'index')}: frame index {missing} missing from the data files")
            cols = {k: v[order[:n]] for k, v in cols.items()}
        elif not np.array_equal(index, np.arange(len(index))):
            order = np.argsort(index, kind="stable")
            cols = {k: v[order] for k, v in cols.items()}
        return cols

    @property
    def cols(self) -> dict[str, np.ndarray]:
        if self._cols is None:
            self._cols = self._load()
        return self._cols

    def get(self, key: str, indices: np.ndarray) -> np.ndarray:
        return self.cols[key][indices]

    def episode_columns(self, ep: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        sl = slice(int(self.meta.ep_from[ep]), int(self.meta.ep_to[ep]))
        return {k: self.cols[k][sl] for k in keys if k in self.cols}

    def __getstate__(self) -> dict[str, Any]:
        return {"meta": self.meta, "keys": self.keys, "_cols": None}  # reloaded per worker, not pickled


def _offsets_from_seconds(key: str, seconds: Sequence[float], fps: float) -> np.ndarray:
    frames = np.asarray(seconds, dtype=np.float64) * fps
    rounded = np.round(frames)
    if np.abs(frames - rounded).max(initial=0) > 1e-3:
        raise ValueError(f"delta_timestamps[{key!r}]={list(seconds)} are not multiples of 1/fps = {1 / fps:.6f}s")
    return rounded.astype(np.int64)


class RobotDataset(Dataset):
    """One sample per frame: the window of ``n_obs_steps`` observations and ``horizon`` actions ending/starting there."""

    def __init__(
        self,
        root: Path | str,
        n_obs_steps: int = 1,
        horizon: int = 1,
        delta_timestamps: dict[str, Sequence[float]] | None = None,
        episodes: Sequence[int] | None = None,
        tolerance_s: float | None = None,
        camera_keys: Sequence[str] | None = None,
    ) -> None:
        if n_obs_steps < 1 or horizon < 1:
            raise ValueError(f"n_obs_steps and horizon must be >= 1, got {n_obs_steps}, {horizon}")
        self.meta = DatasetMeta(root, tolerance_s)
        self.root = self.meta.root
        self.n_obs_steps, self.horizon = n_obs_steps, horizon
        self.camera_keys = list(camera_keys) if camera_keys is not None else list(self.meta.camera_keys)
        unknown = [k for k in self.camera_keys if k not in self.meta.camera_keys]
        if unknown:
            raise ValueError(f"{self.root}: unknown camera keys {unknown}; dataset has {self.meta.camera_keys}")
        obs = np.arange(-(n_obs_steps - 1), 1)
        self.offsets: dict[str, np.ndarray] = {k: obs for k in [*self.camera_keys, STATE_KEY] if k in self.meta.features}
        for key in (ACTION_KEY, LATENT_ACTION_KEY):
            if key in self.meta.features:
                self.offsets[key] = np.arange(horizon)
        for key, secs in (delta_timestamps or {}).items():
            if key not in self.meta.features:
                raise ValueError(f"delta_timestamps key {key!r} is not a feature of {self.root}")
            self.offsets[key] = _offsets_from_seconds(key, secs, self.meta.fps)
        eps = range(self.meta.num_episodes) if episodes is None else episodes
        self._indices = np.concatenate(
            [np.arange(self.meta.ep_from[e], self.meta.ep_to[e]) for e in eps] or [np.zeros(0, np.int64)]
        )
        self.store = LowDimStore(self.meta)
        self._pool: ReaderPool | None = None

    def __len__(self) -> int:
        return len(self._indices)

    def drop_cameras(self) -> None:
        """Stop decoding camera frames (a feature cache stands in for them); low-dim features stay."""
        for key in self.camera_keys:
            self.offsets.pop(key, None)
        self.camera_keys = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None  # FFmpeg handles never cross process boundaries; each worker opens its own
        return state

    @property
    def pool(self) -> ReaderPool:
        if self._pool is None:
            self._pool = ReaderPool(self.meta.tolerance_s)
        return self._pool

    def _frames(self, ep: int, key: str, frames: np.ndarray) -> np.ndarray:
        path = self.meta.video_file(ep, key)
        times = [self.meta.video_time(ep, key, int(f)) for f in frames]
        try:
            out = self.pool.get(path).frames_at(times)  # [T, H, W, 3]
        except L.DatasetError as e:
            raise L.DatasetError(f"episode={ep}, field={key}: {e}") from None
        want = self.meta.features[key].shape
        if out.shape[1:] != tuple(want):
            raise L.DatasetError(f"{L.where(path, ep, key)}: decoded frames are {out.shape[1:]}, meta/info.json says {tuple(want)}")
        return out

    def _window(self, ep: int, frame: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = frame + offsets
        n = int(self.meta.ep_len[ep])
        return np.clip(idx, 0, n - 1), (idx < 0) | (idx >= n)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        g = int(self._indices[i])
        ep = self.meta.episode_of(g)
        frame = g - int(self.meta.ep_from[ep])
        start = int(self.meta.ep_from[ep])
        out: dict[str, Any] = {}
        pads: dict[str, np.ndarray] = {}
        for key, offs in self.offsets.items():
            idx, pad = self._window(ep, frame, offs)
            pads[key] = pad
            if key in self.camera_keys:
                imgs = self._frames(ep, key, idx)
                out[key] = chw_from_hwc(imgs)  # [T, H, W, 3] -> [T, 3, H, W]
            else:
                out[key] = torch.from_numpy(np.ascontiguousarray(self.store.get(key, start + idx)))
        obs_key = STATE_KEY if STATE_KEY in pads else next((k for k in self.camera_keys), None)
        out["obs_is_pad"] = torch.from_numpy(pads[obs_key]) if obs_key else torch.zeros(self.n_obs_steps, dtype=torch.bool)
        if ACTION_KEY in pads:
            out["action_is_pad"] = torch.from_numpy(pads[ACTION_KEY])
        if LATENT_ACTION_KEY in pads:
            out["latent_is_pad"] = torch.from_numpy(pads[LATENT_ACTION_KEY])
        out["is_pad"] = {k: torch.from_numpy(v) for k, v in pads.items()}  # per windowed key (renamed ones too)
        task_index = int(self.store.get("task_index", np.array([g])).reshape(-1)[0])
        out["task"] = self.meta.tasks[task_index] if 0 <= task_index < len(self.meta.tasks) else ""
        out["episode_index"], out["index"] = ep, g
        return out

    def get_frame(self, index: int) -> dict[str, Any]:
        """One frame by global index: images uint8 ``[3, H, W]``, low-dim features as 1-D tensors, task text."""
        ep = self.meta.episode_of(index)
        frame = index - int(self.meta.ep_from[ep])
        out: dict[str, Any] = {}
        for key in self.camera_keys:
            img = self._frames(ep, key, np.array([frame]))[0]
            out[key] = chw_from_hwc(img)  # [H, W, 3] -> [3, H, W]
        for key in self.store.keys:
            out[key] = torch.from_numpy(np.ascontiguousarray(self.store.get(key, np.array([index]))[0]))
        out["task"] = self.meta.tasks[int(out["task_index"].reshape(-1)[0])]
        return out

    def get_episode(self, ep: int, decode_video: bool = True) -> dict[str, Any]:
        """A whole episode: low-dim ``[N, ...]`` numpy arrays and (optionally) uint8 ``[N, H, W, 3]`` frames."""
        if not 0 <= ep < self.meta.num_episodes:
            raise IndexError(f"episode {ep} out of range 0..{self.meta.num_episodes - 1} of {self.root}")
        out: dict[str, Any] = dict(self.store.episode_columns(ep, self.store.keys))
        if decode_video:
            frames = np.arange(int(self.meta.ep_len[ep]))
            for key in self.camera_keys:
                out[key] = self._frames(ep, key, frames)
        out["task"] = self.meta.task_of_episode(ep)
        return out
