"""The observation/action dictionaries exchanged with the policy server (openpi-style flat dicts).

Two kinds of request, told apart by ``episode_key``:

- A **frame** (no ``episode_key``): one control step of the connection's episode, what a plain openpi client sends.
  The server keeps the connection's observation history and chunk schedule in a
  :class:`openlbm.policies.execution.ChunkExecutor` (the code in-process execution runs) and answers the one
  action to execute now, ``actions`` ``[1, A]``. Send one frame per control step; the episode starts over on a new
  connection or with ``"reset": true``.
- A **window** (with ``episode_key``): the whole ``n_obs_steps`` observation window, built by the client's own
  ``ChunkExecutor`` (:class:`openlbm.serve.client.RemotePolicy`); the answer is the chunk ``[horizon, A]`` and
  depends only on the request (the server keeps no state for it).

Request (one msgpack map per websocket binary frame)::

    "observation/images/<camera>"  uint8   [Hi, Wi, 3]     one per camera of the embodiment (dots also accepted:
                                           or [T, Hi, Wi, 3]  "observation.images.<camera>"); T only in a window
    "observation/state"            float32 [S] or [T, S]    native state dim of the embodiment (float64 accepted);
                                                            every value finite with |x| <= its max_abs_state
    "prompt"                       str                      the language instruction (openpi's field name)
    "embodiment"                   str  (optional)          which embodiment of a multi-embodiment policy; default
                                                            the first one (see metadata)
    "reset"                        bool (optional, frame)   true: this frame starts a new episode
    "episode_key"                  int  (window)            the episode's noise stream, 0 <= key < 2**63: the
                                                            frame key of its first frame
    "chunk_index"                  int  (optional, window)  chunks requested since the episode start (default 0)
    "observation/is_pad"           bool [T] (optional, window) True for the frames before the episode start
                                                            (copies of its first frame); default all False
    "action_prefix"                float32 [K, A] (optional, window) real-time chunking: the previous chunk's
                                                            actions for this chunk's rows 0..K-1 (physical units)
    "frozen_steps"                 int  (with action_prefix) the prefix rows executed during this inference

A window has ``T = n_obs_steps`` frames, oldest first, all arrays with the same ``T``; a window of one frame
(``T = 1`` or no ``T`` axis) is an episode start: padded to ``n_obs_steps`` by repeating it, the copies flagged as
padding.

Response::

    "actions"        float32 [horizon, A]   a window's chunk, physical units, native action dim (like openpi);
                     or [1, A]              a frame's action to execute now
    "server_timing"  {"infer_ms": float, "queue_ms": float, "batch_size": int, "prev_total_ms": float}

Errors come back as a websocket *text* frame (openpi's convention) and the connection stays open.
This module is torch-free: the client and robot-side code import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from openlbm.bounds import first_out_of_bounds
from openlbm.embodiment import EmbodimentSpec

PROTOCOL = "openlbm-policy/1"
IMAGE_WIRE_PREFIX = "observation/images/"
STATE_WIRE_KEY = "observation/state"
PROMPT_KEY = "prompt"
EMBODIMENT_KEY = "embodiment"
RESET_KEY = "reset"
PREFIX_KEY = "action_prefix"
FROZEN_KEY = "frozen_steps"
IS_PAD_KEY = "observation/is_pad"
CHUNK_INDEX_KEY = "chunk_index"
EPISODE_KEY = "episode_key"
ACTIONS_KEY = "actions"
TIMING_KEY = "server_timing"
MAX_PROMPT_CHARS = 4096
"""Longer instructions are refused rather than silently truncated."""
class ProtocolError(ValueError):
    """An observation dict that does not match what the served policy expects."""


def image_wire_key(camera: str) -> str:
    """``"corner2"`` -> ``"observation/images/corner2"``."""
    return IMAGE_WIRE_PREFIX + camera


def canonical_key(key: str) -> str:
    """Map the dotted LeRobot spelling onto the slash spelling we document: ``observation.state`` -> ``observation/state``."""
    return key.replace(".", "/", 2) if key.startswith("observation.") else key


def observation_schema(spec: EmbodimentSpec) -> dict[str, dict[str, Any]]:
    """The metadata's description of one embodiment's request fields."""
    h, w = spec.image_size
    schema: dict[str, dict[str, Any]] = {
        image_wire_key(c): {"shape": [h, w, 3], "dtype": "uint8"} for c in spec.cameras
    }
    schema[STATE_WIRE_KEY] = {"shape": [spec.state_dim], "dtype": "float32"}
    schema[PROMPT_KEY] = {"type": "str", "max_chars": MAX_PROMPT_CHARS}
    return schema


@dataclass
class ParsedObservation:
    """A validated request: one full ``T = n_obs_steps`` observation window for one embodiment."""

    embodiment: str
    images: dict[str, np.ndarray]
    """camera -> uint8 ``[T, Hi, Wi, 3]``."""
    state: np.ndarray
    """float32 ``[T, S]``."""
    is_pad: np.ndarray
    """bool ``[T]``: True for the padding frames before the episode start."""
    prompt: str
    chunk_index: int
    episode_key: int | None
    """``None``: a frame of the connection's episode (the server's executor supplies the key)."""
    reset: bool = False
    """A frame that starts a new episode."""
    action_prefix: np.ndarray | None = None
    """float32 ``[K, A]``: real-time chunking's guidance target (a window's ``action_prefix``)."""
    frozen_steps: int = 0
    """Rows of ``action_prefix`` executed during this inference (weight 1)."""

    @property
    def is_frame(self) -> bool:
        """A single control step of the connection's episode (the server keeps its history)."""
        return self.episode_key is None

    def shape_key(self) -> tuple:
        """Requests with equal keys can be stacked into one batch."""
        guided = self.action_prefix is not None
        return (self.embodiment, tuple((c, a.shape) for c, a in self.images.items()), self.state.shape, guided)


def build_metadata(
    specs: list[EmbodimentSpec],
    *,
    horizon: int,
    n_action_steps: int,
    n_obs_steps: int,
    policy: Mapping[str, Any],
    max_message_bytes: int,
    max_batch: int,
    execution: Mapping[str, Any] | None = None,
    executions: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The first message on every connection: everything a client needs to build valid requests, and everything
    that changes the executed actions (``execution``: ``ExecutionConfig`` fields + ``noise_seed``, for the default
    embodiment; ``executions``: the same per embodiment, which differ where the policy gives an embodiment its own
    chunk schedule)."""
    return {
        "protocol": PROTOCOL,
        "server": "openlbm",
        "policy": dict(policy),
        "default_embodiment": specs[0].name,
        "embodiments": {
            s.name: {
                "cameras": list(s.cameras),
                "image_size": list(s.image_size),
                "state_dim": s.state_dim,
                "action_dim": s.action_dim,
                "fps": s.fps,
                "max_abs_state": s.max_abs_state,
                "observation": observation_schema(s),
                "action": {"key": ACTIONS_KEY, "shape": [horizon, s.action_dim], "dtype": "float32"},
            }
            for s in specs
        },
        "instruction_key": PROMPT_KEY,
        "optional_keys": [EMBODIMENT_KEY, RESET_KEY, EPISODE_KEY, CHUNK_INDEX_KEY, IS_PAD_KEY, PREFIX_KEY, FROZEN_KEY],
        "action_key": ACTIONS_KEY,
        "horizon": horizon,
        "n_action_steps": n_action_steps,
        "n_obs_steps": n_obs_steps,
        "execution": dict(execution or {}),
        "executions": {name: dict(ex) for name, ex in (executions or {}).items()},
        "history": "server per connection for frames; client for windows",
        "max_message_bytes": max_message_bytes,
        "max_batch": max_batch,
    }


def _check_image(key: str, value: Any, spec: EmbodimentSpec) -> np.ndarray:
    """-> uint8 ``[T, Hi, Wi, 3]`` (``T = 1`` for a single frame)."""
    h, w = spec.image_size
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{key}: expected a uint8 numpy array [{h}, {w}, 3], got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ProtocolError(f"{key}: expected dtype uint8, got {value.dtype}")
    if value.shape[-3:] != (h, w, 3) or value.ndim not in (3, 4):
        what = "oversized image" if value.size > h * w * 3 and value.ndim == 3 else "wrong shape"
        raise ProtocolError(
            f"{key}: {what}: expected [{h}, {w}, 3] or a window [T, {h}, {w}, 3] (channel-last), "
            f"got {list(value.shape)}"
        )
    return value if value.ndim == 4 else value[None]  # [Hi, Wi, 3] -> [1, Hi, Wi, 3]


def _check_state(key: str, value: Any, spec: EmbodimentSpec) -> np.ndarray:
    """-> float32 ``[T, S]``, finite and within the embodiment's ``max_abs_state``."""
    if not isinstance(value, np.ndarray):
        raise ProtocolError(
            f"{key}: expected a float32 numpy array [{spec.state_dim}], got {type(value).__name__}"
        )
    if value.dtype.kind != "f":
        raise ProtocolError(f"{key}: expected dtype float32, got {value.dtype}")
    if value.ndim not in (1, 2) or value.shape[-1] != spec.state_dim:
        raise ProtocolError(
            f"{key}: expected shape [{spec.state_dim}] or a window [T, {spec.state_dim}], got {list(value.shape)}"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf and is refused just below
        state = value.astype(np.float32)
    if not np.isfinite(state).all():
        raise ProtocolError(f"{key}: contains NaN or inf (or a value outside float32 range)")
    bad = first_out_of_bounds(state.reshape(-1, spec.state_dim), spec.max_abs_state)  # [T, S] or [S] -> [T, S]
    if bad is not None:
        raise ProtocolError(
            f"{key}: |value| {abs(bad[2]):.3g} exceeds the accepted bound {spec.max_abs_state:.3g} (wrong units or a "
            "corrupt reading?)"
        )
    return state if state.ndim == 2 else state[None]  # [S] -> [1, S]


def _check_window(
    raw_pad: Any, images: dict[str, np.ndarray], state: np.ndarray, n_obs_steps: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Pad a single frame to an episode-start window; check a given window's length and padding flags."""
    lengths = {STATE_WIRE_KEY: state.shape[0], **{image_wire_key(c): a.shape[0] for c, a in images.items()}}
    if len(set(lengths.values())) != 1:
        raise ProtocolError(f"window lengths differ between fields: {lengths}")
    t = state.shape[0]
    if t not in (1, n_obs_steps):
        raise ProtocolError(
            f"{STATE_WIRE_KEY}: a window of {t} frames; this policy takes one frame or n_obs_steps={n_obs_steps}"
        )
    if t == 1 and n_obs_steps > 1:
        # An episode start: the first frame repeated before itself, flagged as padding (the dataset's convention).
        pad = np.arange(n_obs_steps) < n_obs_steps - 1
        if raw_pad is not None and (not isinstance(raw_pad, np.ndarray) or raw_pad.shape != (1,) or raw_pad[0]):
            raise ProtocolError(f"{IS_PAD_KEY}: with a single frame it can only be [false], got {raw_pad!r:.60}")
        return {c: np.repeat(a, n_obs_steps, axis=0) for c, a in images.items()}, np.repeat(state, n_obs_steps, 0), pad
    if raw_pad is None:
        return images, state, np.zeros(t, dtype=bool)
    if not isinstance(raw_pad, np.ndarray) or raw_pad.dtype != np.bool_ or raw_pad.shape != (t,):
        raise ProtocolError(f"{IS_PAD_KEY}: expected a bool numpy array [{t}], got {raw_pad!r:.60}")
    n_pad = int(raw_pad.sum())
    if raw_pad[n_pad:].any() or raw_pad[-1]:
        raise ProtocolError(f"{IS_PAD_KEY}: padding must be a prefix and the last frame real, got {raw_pad.tolist()}")
    return images, state, raw_pad.copy()


def _check_int(key: str, value: Any) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ProtocolError(f"{key}: expected an int with 0 <= value < 2**63, got {value!r:.60}")
    return value


def _split_keys(msg: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in msg.items():
        if not isinstance(key, str):
            raise ProtocolError(f"observation keys must be strings, got {key!r:.40}")
        canon = canonical_key(key)
        if canon in out:
            raise ProtocolError(f"key {canon!r} given twice (in '/' and '.' spelling)")
        out[canon] = value
    return out


def parse_observation(
    msg: Any, specs: Mapping[str, EmbodimentSpec], default_embodiment: str, n_obs_steps: int = 1
) -> ParsedObservation:
    """Validate one decoded request against the served embodiments and return its full window.
    Raises :class:`ProtocolError` naming the field."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"an observation must be a msgpack map (dict), got {type(msg).__name__}")
    obs = _split_keys(msg)
    emb = obs.pop(EMBODIMENT_KEY, default_embodiment)
    if not isinstance(emb, str) or emb not in specs:
        raise ProtocolError(f"{EMBODIMENT_KEY}: unknown embodiment {emb!r:.60}; served: {sorted(specs)}")
    spec = specs[emb]
    reset = obs.pop(RESET_KEY, False)
    if not isinstance(reset, bool):
        raise ProtocolError(f"{RESET_KEY}: expected a bool, got {type(reset).__name__}")
    episode_key = obs.pop(EPISODE_KEY, None)
    window_only = {k: obs.pop(k) for k in (CHUNK_INDEX_KEY, IS_PAD_KEY, PREFIX_KEY, FROZEN_KEY) if k in obs}
    if episode_key is None and window_only:
        raise ProtocolError(f"{sorted(window_only)}: only in a window request (one with {EPISODE_KEY}); a frame "
                            "request is one control step and the server keeps its history")
    if episode_key is not None and reset:
        raise ProtocolError(f"{RESET_KEY}: only for frame requests; a window (with {EPISODE_KEY}) carries its history")
    _check_keys(obs, spec, emb)
    prompt = obs[PROMPT_KEY]
    if not isinstance(prompt, str):
        raise ProtocolError(
            f"{PROMPT_KEY}: expected the instruction as a string, got {type(prompt).__name__}"
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"{PROMPT_KEY}: {len(prompt)} characters, at most {MAX_PROMPT_CHARS} accepted")
    images = {c: _check_image(image_wire_key(c), obs[image_wire_key(c)], spec) for c in spec.cameras}
    state = _check_state(STATE_WIRE_KEY, obs[STATE_WIRE_KEY], spec)
    if episode_key is None:
        if state.shape[0] != 1 or any(a.shape[0] != 1 for a in images.values()):
            raise ProtocolError(f"a frame request holds one frame (no T axis); a window needs {EPISODE_KEY}")
        return ParsedObservation(emb, images, state, np.zeros(1, dtype=bool), prompt, 0, None, reset=reset)
    images, state, is_pad = _check_window(window_only.get(IS_PAD_KEY), images, state, n_obs_steps)
    prefix, frozen = _check_prefix(window_only.get(PREFIX_KEY), window_only.get(FROZEN_KEY), spec)
    chunk_index = _check_int(CHUNK_INDEX_KEY, window_only.get(CHUNK_INDEX_KEY, 0))
    return ParsedObservation(emb, images, state, is_pad, prompt, chunk_index, _check_int(EPISODE_KEY, episode_key),
                             action_prefix=prefix, frozen_steps=frozen)


def _check_keys(obs: dict[str, Any], spec: EmbodimentSpec, emb: str) -> None:
    expected = {*(image_wire_key(c) for c in spec.cameras), STATE_WIRE_KEY, PROMPT_KEY}
    missing, extra = sorted(expected - obs.keys()), sorted(obs.keys() - expected)
    if missing or extra:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unexpected keys {extra}"] if extra else []
        )
        raise ProtocolError(
            f"observation for embodiment {emb!r}: {'; '.join(parts)}; expected {sorted(expected)}"
        )


def _check_prefix(prefix: Any, frozen: Any, spec: EmbodimentSpec) -> tuple[np.ndarray | None, int]:
    """-> (float32 ``[K, A]`` or None, frozen rows)."""
    if prefix is None:
        if frozen is not None:
            raise ProtocolError(f"{FROZEN_KEY}: only together with {PREFIX_KEY}")
        return None, 0
    a = spec.action_dim
    if not isinstance(prefix, np.ndarray) or prefix.dtype.kind != "f" or prefix.ndim != 2 or prefix.shape[1] != a:
        raise ProtocolError(f"{PREFIX_KEY}: expected a float32 numpy array [K, {a}], got {prefix!r:.60}")
    if not np.isfinite(prefix).all():
        raise ProtocolError(f"{PREFIX_KEY}: contains NaN or inf")
    k = _check_int(FROZEN_KEY, 0 if frozen is None else frozen)
    if k > prefix.shape[0]:
        raise ProtocolError(f"{FROZEN_KEY}: {k} exceeds the prefix's {prefix.shape[0]} rows")
    return prefix.astype(np.float32), k


def make_observation(
    images: Mapping[str, np.ndarray],
    state: np.ndarray,
    prompt: str,
    *,
    embodiment: str | None = None,
    is_pad: np.ndarray | None = None,
    episode_key: int | None = None,
    chunk_index: int | None = None,
    action_prefix: np.ndarray | None = None,
    frozen_steps: int | None = None,
    reset: bool | None = None,
) -> dict[str, Any]:
    """Build a request dict from camera -> HWC uint8 images (``[Hi, Wi, 3]``, or a window ``[T, Hi, Wi, 3]``), a
    state (``[S]`` or ``[T, S]``) and the instruction; the optional fields as in the module docstring."""
    obs: dict[str, Any] = {
        image_wire_key(c): np.ascontiguousarray(img, dtype=np.uint8) for c, img in images.items()
    }
    obs[STATE_WIRE_KEY] = np.asarray(state, dtype=np.float32)
    obs[PROMPT_KEY] = prompt
    if embodiment is not None:
        obs[EMBODIMENT_KEY] = embodiment
    if is_pad is not None:
        obs[IS_PAD_KEY] = np.asarray(is_pad, dtype=bool)
    if episode_key is not None:
        obs[EPISODE_KEY] = int(episode_key)
    if chunk_index is not None:
        obs[CHUNK_INDEX_KEY] = int(chunk_index)
    if action_prefix is not None:
        obs[PREFIX_KEY] = np.ascontiguousarray(action_prefix, dtype=np.float32)
        obs[FROZEN_KEY] = int(frozen_steps or 0)
    if reset is not None:
        obs[RESET_KEY] = bool(reset)
    return obs
