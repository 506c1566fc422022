"""robomimic-style HDF5 (robomimic, LIBERO, MimicGen) as a :class:`~openlbm.data.convert.source.Source`.

The layout (robomimic's documented dataset structure)::

    data                       attrs: env_args (JSON: env_name, env_kwargs{control_freq, robots...}), total
      demo_0                   attrs: num_samples
        actions      [T, A]
        rewards      [T]        (optional)
        dones        [T]        (optional)
        states       [T, D]     (optional: flattened simulator state)
        obs/<key>    [T, ...]   images are ``*_image`` uint8 [T, H, W, 3]; everything else is low-dim
      demo_1 ...
    mask                       (optional) <filter key> -> array of demo names, e.g. "train", "valid"

Mapping to v3 features (see docs/dataset.md, "Converting other formats"):

=========================  ===================================================================================
source                     v3 feature
=========================  ===================================================================================
``obs/<cam>_image``        ``observation.images.<cam>`` (video)
low-dim ``obs/<key>``      concatenated into ``observation.state`` float32, keys in sorted name order unless
                           ``state_keys`` lists them (the order is recorded in the feature's ``names``)
``actions``                ``action`` float32
``rewards``                ``next.reward`` float32
``dones``                  ``next.done`` bool
``states``                 ``observation.environment_state`` float32
=========================  ===================================================================================

The instruction of every episode is, first match wins: the ``task`` argument (``--task``); LIBERO's
``data.attrs["problem_info"]["language_instruction"]``; the robomimic task table below for ``env_name``; else
``env_name`` split into words ("PickPlaceCan" -> "pick place can").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.data.convert.source import SourceEpisode, SourceError
from openlbm.types import ACTION_KEY, STATE_KEY, FeatureSpec, camera_key

IMAGE_SUFFIX = "_image"
DEFAULT_FPS = 20.0  # robosuite's default control_freq
TASKS = {
    "Lift": "lift the cube",
    "PickPlaceCan": "pick up the can and place it in its bin",
    "NutAssemblySquare": "fit the square nut onto the square peg",
    "ToolHang": "insert the hook into the base and hang the tool on it",
    "TwoArmTransport": "hand the object over and place it in the target bin",
    "Stack": "stack the red cube on the green cube",
    "StackThree": "stack the three cubes",
    "Square": "fit the square nut onto the square peg",
    "Threading": "thread the needle into the tripod hole",
    "Coffee": "put the pod in the coffee machine and close the lid",
}
"""Default instructions for robomimic / MimicGen ``env_name``s (extend with ``--task`` per file)."""


def _words(name: str) -> str:
    return " ".join(w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)) or name


def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


class RobomimicSource:
    """A robomimic HDF5 file opened for conversion (reopened lazily in each process; safe to fork)."""

    def __init__(self, root: Path | str, task: str | None = None, state_keys: Sequence[str] | None = None,
                 filter_key: str | None = None, fps: float | None = None) -> None:
        try:
            import h5py  # noqa: F401
        except ImportError:
            raise SourceError("robomimic HDF5 needs h5py: pip install 'openlbm[convert]'") from None
        self.root = Path(root)
        self._pid, self._h5 = -1, None
        f = self._file()
        if "data" not in f or not hasattr(f["data"], "keys"):
            raise SourceError(f"{self.root}: no 'data' group (not a robomimic HDF5 file)")
        data = f["data"]
        self.env_args = self._json_attr(data, "env_args")
        demos = [k for k in data if _demo_number(k) >= 0]
        if filter_key is not None:
            demos = self._filtered(f, filter_key, demos)
        self.demos = sorted(demos, key=_demo_number)  # robomimic's own order: demo_0, demo_1, ..., demo_10
        if not self.demos:
            raise SourceError(f"{self.root}: group 'data' has no demo_N groups")
        self.task = task or self._default_task(data)
        kwargs = self.env_args.get("env_kwargs") or {}
        self._fps = float(fps or kwargs.get("control_freq") or DEFAULT_FPS)
        robots = kwargs.get("robots")
        self._robot = (robots[0] if isinstance(robots, list) and robots else str(robots or "")).lower()
        self._features, self.state_keys, self.image_keys = self._inspect(self.demos[0], state_keys)

    # ------------------------------------------------------------------------------------------------ file
    def _file(self) -> Any:
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            # HDF5 handles must not cross a fork: each worker process opens its own
            if not self.root.is_file():
                raise SourceError(f"{self.root}: not a file (a robomimic dataset is one .hdf5 file)")
            try:
                self._h5 = h5py.File(self.root, "r")
            except (OSError, ValueError) as e:
                why = " ".join(str(e).split())  # h5py's messages span lines
                raise SourceError(f"{self.root}: cannot open HDF5 file (truncated or not HDF5): {why}") from None
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_h5": None, "_pid": -1}

    def _json_attr(self, group: Any, name: str) -> dict[str, Any]:
        raw = group.attrs.get(name)
        if raw is None:
            return {}
        try:
            out = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except json.JSONDecodeError as e:
            raise SourceError(f"{self.root}: data.attrs[{name!r}] is not valid JSON ({e})") from None
        return out if isinstance(out, dict) else {}

    def _filtered(self, f: Any, filter_key: str, demos: list[str]) -> list[str]:
        if "mask" not in f or filter_key not in f["mask"]:
            have = sorted(f["mask"]) if "mask" in f else []
            raise SourceError(f"{self.root}: filter key mask/{filter_key} not found (available: {have})")
        wanted = {x.decode() if isinstance(x, bytes) else str(x) for x in f["mask"][filter_key][()]}
        absent = sorted(wanted - set(demos))
        if absent:
            raise SourceError(f"{self.root}: mask/{filter_key} names demos not in 'data': {absent[:5]}")
        return [d for d in demos if d in wanted]

    def _default_task(self, data: Any) -> str:
        libero = self._json_attr(data, "problem_info").get("language_instruction")
        if isinstance(libero, str) and libero.strip():
            return libero.strip()
        name = str(self.env_args.get("env_name") or "")
        if not name:
            raise SourceError(f"{self.root}: data.attrs['env_args'] has no env_name and no --task was given")
        return TASKS.get(name, _words(name))

    def _inspect(self, demo: str, state_keys: Sequence[str] | None) -> tuple[dict[str, FeatureSpec], list[str], list[str]]:
        g = self._group(demo)
        obs = g.get("obs")
        obs_keys = sorted(obs) if obs is not None else []
        image_keys = [k for k in obs_keys if k.endswith(IMAGE_SUFFIX)]
        low_dim = [k for k in obs_keys if k not in image_keys]
        if state_keys is not None:
            bad = [k for k in state_keys if k not in low_dim]
            if bad:
                raise SourceError(f"{self.root}, data/{demo}/obs: state keys {bad} not found (low-dim keys: {low_dim})")
            low_dim = list(state_keys)
        feats: dict[str, FeatureSpec] = {}
        for k in image_keys:
            shape = tuple(obs[k].shape[1:])
            if len(shape) != 3 or shape[2] != 3:
                raise SourceError(f"{self.root}, data/{demo}/obs/{k}: expected [T, H, W, 3] images, got {obs[k].shape}")
            feats[camera_key(k[: -len(IMAGE_SUFFIX)])] = FeatureSpec("video", shape)
        if low_dim:
            names = tuple(f"{k}[{i}]" for k in low_dim for i in range(int(np.prod(obs[k].shape[1:]))))
            feats[STATE_KEY] = FeatureSpec("float32", (len(names),), names)
        if "actions" not in g:
            raise SourceError(f"{self.root}, data/{demo}: key 'actions' missing")
        feats[ACTION_KEY] = FeatureSpec("float32", (int(np.prod(g["actions"].shape[1:])),))
        if "rewards" in g:
            feats["next.reward"] = FeatureSpec("float32", (1,))
        if "dones" in g:
            feats["next.done"] = FeatureSpec("bool", (1,))
        if "states" in g:
            feats["observation.environment_state"] = FeatureSpec("float32", (int(np.prod(g["states"].shape[1:])),))
        return feats, low_dim, image_keys

    def _group(self, demo: str) -> Any:
        data = self._file()["data"]
        if demo not in data:
            raise SourceError(f"{self.root}: group data/{demo} missing")
        return data[demo]

    # ------------------------------------------------------------------------------------------------ Source
    @property
    def fps(self) -> float:
        return self._fps

    @property
    def robot_type(self) -> str:
        return self._robot

    def features(self) -> dict[str, FeatureSpec]:
        return dict(self._features)

    def __len__(self) -> int:
        return len(self.demos)

    def _read(self, g: Any, key: str, where: str) -> np.ndarray:
        if key not in g:
            raise SourceError(f"{where}: key '{key}' missing")
        try:
            return np.asarray(g[key][()])
        except (OSError, ValueError, KeyError) as e:
            raise SourceError(f"{where}/{key}: unreadable ({e})") from None

    def episode(self, index: int) -> SourceEpisode:
        if not 0 <= index < len(self.demos):
            raise IndexError(f"episode {index} out of range 0..{len(self.demos) - 1}")
        demo = self.demos[index]
        where = f"{self.root}, data/{demo}"
        g = self._group(demo)
        frames: dict[str, np.ndarray] = {}
        obs = g.get("obs", {})
        for k in self.image_keys:
            frames[camera_key(k[: -len(IMAGE_SUFFIX)])] = self._read(obs, k, f"{where}/obs")
        if self.state_keys:
            parts = [self._read(obs, k, f"{where}/obs") for k in self.state_keys]
            lengths = {k: len(p) for k, p in zip(self.state_keys, parts, strict=True)}
            if len(set(lengths.values())) != 1:
                raise SourceError(f"{where}/obs: low-dim keys have different lengths {lengths}")
            frames[STATE_KEY] = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1).astype(np.float32)  # [T, ...] -> [T, d]
        acts = self._read(g, "actions", where)
        frames[ACTION_KEY] = acts.reshape(len(acts), -1).astype(np.float32)  # [T, ...] -> [T, A]
        if "next.reward" in self._features:
            frames["next.reward"] = self._read(g, "rewards", where).astype(np.float32).reshape(-1, 1)  # [T] -> [T, 1]
        if "next.done" in self._features:
            frames["next.done"] = self._read(g, "dones", where).astype(bool).reshape(-1, 1)  # [T] -> [T, 1]
        if "observation.environment_state" in self._features:
            st = self._read(g, "states", where)
            frames["observation.environment_state"] = st.reshape(len(st), -1).astype(np.float32)  # [T, ...] -> [T, D]
        declared = g.attrs.get("num_samples")
        if declared is not None and int(declared) != len(acts):
            raise SourceError(f"{where}: attrs num_samples={int(declared)} but 'actions' has {len(acts)} rows")
        return SourceEpisode(index=index, task=self.task, frames=frames, origin=where)

    def __iter__(self) -> Iterator[SourceEpisode]:
        for i in range(len(self)):
            yield self.episode(i)
