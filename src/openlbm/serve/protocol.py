"""The observation/action dictionaries exchanged with the policy server (openpi-style flat dicts).

Request (one msgpack map per websocket binary frame)::

    "observation/images/<camera>"   uint8   [Hi, Wi, 3]   one per camera of the embodiment (dots also accepted:
                                                         "observation.images.<camera>")
    "observation/state"             float32 [S]           native state dim of the embodiment (float64 accepted)
    "prompt"                        str                   the language instruction (openpi's field name)
    "embodiment"                    str     (optional)    which embodiment of a multi-embodiment policy; default
                                                         the first one (see metadata)
    "reset"                         bool    (optional)    true at an episode start: drops the server-side
                                                         observation history of this connection

Response::

    "actions"        float32 [horizon, A]   the predicted chunk, physical units, native action dim (like openpi)
    "server_timing"  {"infer_ms": float, "queue_ms": float, "batch_size": int, "prev_total_ms": float}

Errors come back as a websocket *text* frame (openpi's convention) and the connection stays open.
This module is torch-free: the client and robot-side code import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL = "openlbm-policy/1"
IMAGE_WIRE_PREFIX = "observation/images/"
STATE_WIRE_KEY = "observation/state"
PROMPT_KEY = "prompt"
EMBODIMENT_KEY = "embodiment"
RESET_KEY = "reset"
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


@dataclass(frozen=True)
class WireSpec:
    """One embodiment as seen on the wire: cameras, image size, state and action dims."""

    name: str
    """Embodiment name (the value of the optional ``embodiment`` request field)."""
    cameras: tuple[str, ...]
    """Camera names; each needs an ``observation/images/<camera>`` entry."""
    image_size: tuple[int, int]
    """``(height, width)`` every image must have, exactly."""
    state_dim: int
    """Length of ``observation/state``."""
    action_dim: int
    """Width of the returned ``actions``."""
    fps: float = 10.0
    """Control frequency the policy was trained at."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WireSpec:
        """Read :meth:`openlbm.types.EmbodimentSpec.to_dict` output (also the metadata's ``embodiments`` entries)."""
        return cls(
            name=str(d["name"]),
            cameras=tuple(str(c) for c in d["cameras"]),
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            state_dim=int(d["state_dim"]),
            action_dim=int(d["action_dim"]),
            fps=float(d.get("fps", 10.0)),
        )

    def observation_schema(self) -> dict[str, dict[str, Any]]:
        h, w = self.image_size
        schema: dict[str, dict[str, Any]] = {
            image_wire_key(c): {"shape": [h, w, 3], "dtype": "uint8"} for c in self.cameras
        }
        schema[STATE_WIRE_KEY] = {"shape": [self.state_dim], "dtype": "float32"}
        schema[PROMPT_KEY] = {"type": "str", "max_chars": MAX_PROMPT_CHARS}
        return schema


@dataclass
class ParsedObservation:
    """A validated request: one live frame for one embodiment."""

    embodiment: str
    images: dict[str, np.ndarray]
    """camera -> uint8 ``[Hi, Wi, 3]`` (a read-only view on the message buffer)."""
    state: np.ndarray
    """float32 ``[S]``."""
    prompt: str
    reset: bool

    def shape_key(self) -> tuple:
        """Requests with equal keys can be stacked into one batch."""
        return (self.embodiment, tuple((c, a.shape) for c, a in self.images.items()), self.state.shape)


def build_metadata(
    specs: list[WireSpec],
    *,
    horizon: int,
    n_action_steps: int,
    n_obs_steps: int,
    policy: Mapping[str, Any],
    max_message_bytes: int,
    max_batch: int,
) -> dict[str, Any]:
    """The first message on every connection: everything a client needs to build valid requests."""
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
                "observation": s.observation_schema(),
                "action": {"key": ACTIONS_KEY, "shape": [horizon, s.action_dim], "dtype": "float32"},
            }
            for s in specs
        },
        "instruction_key": PROMPT_KEY,
        "optional_keys": [EMBODIMENT_KEY, RESET_KEY],
        "action_key": ACTIONS_KEY,
        "horizon": horizon,
        "n_action_steps": n_action_steps,
        "n_obs_steps": n_obs_steps,
        "max_message_bytes": max_message_bytes,
        "max_batch": max_batch,
    }


def _check_image(key: str, value: Any, spec: WireSpec) -> np.ndarray:
    h, w = spec.image_size
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{key}: expected a uint8 numpy array [{h}, {w}, 3], got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ProtocolError(f"{key}: expected dtype uint8, got {value.dtype}")
    if value.shape != (h, w, 3):
        what = "oversized image" if value.size > h * w * 3 else "wrong shape"
        raise ProtocolError(f"{key}: {what}: expected [{h}, {w}, 3] (channel-last), got {list(value.shape)}")
    return value


def _check_state(key: str, value: Any, spec: WireSpec) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(
            f"{key}: expected a float32 numpy array [{spec.state_dim}], got {type(value).__name__}"
        )
    if value.dtype.kind != "f":
        raise ProtocolError(f"{key}: expected dtype float32, got {value.dtype}")
    if value.shape != (spec.state_dim,):
        raise ProtocolError(f"{key}: expected shape [{spec.state_dim}], got {list(value.shape)}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf and is refused just below
        state = value.astype(np.float32)
    if not np.isfinite(state).all():
        raise ProtocolError(f"{key}: contains NaN or inf (or a value outside float32 range)")
    return state


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


def parse_observation(msg: Any, specs: Mapping[str, WireSpec], default_embodiment: str) -> ParsedObservation:
    """Validate one decoded request against the served embodiments. Raises :class:`ProtocolError`."""
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
    image_keys = [image_wire_key(c) for c in spec.cameras]
    expected = {*image_keys, STATE_WIRE_KEY, PROMPT_KEY}
    missing, extra = sorted(expected - obs.keys()), sorted(obs.keys() - expected)
    if missing or extra:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unexpected keys {extra}"] if extra else []
        )
        raise ProtocolError(
            f"observation for embodiment {emb!r}: {'; '.join(parts)}; expected {sorted(expected)}"
        )
    prompt = obs[PROMPT_KEY]
    if not isinstance(prompt, str):
        raise ProtocolError(
            f"{PROMPT_KEY}: expected the instruction as a string, got {type(prompt).__name__}"
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"{PROMPT_KEY}: {len(prompt)} characters, at most {MAX_PROMPT_CHARS} accepted")
    images = {c: _check_image(k, obs[k], spec) for c, k in zip(spec.cameras, image_keys, strict=True)}
    state = _check_state(STATE_WIRE_KEY, obs[STATE_WIRE_KEY], spec)
    return ParsedObservation(embodiment=emb, images=images, state=state, prompt=prompt, reset=reset)


def make_observation(
    images: Mapping[str, np.ndarray],
    state: np.ndarray,
    prompt: str,
    *,
    embodiment: str | None = None,
    reset: bool = False,
) -> dict[str, Any]:
    """Build a request dict from camera -> HWC uint8 images, a state vector and the instruction."""
    obs: dict[str, Any] = {
        image_wire_key(c): np.ascontiguousarray(img, dtype=np.uint8) for c, img in images.items()
    }
    obs[STATE_WIRE_KEY] = np.asarray(state, dtype=np.float32)
    obs[PROMPT_KEY] = prompt
    if embodiment is not None:
        obs[EMBODIMENT_KEY] = embodiment
    if reset:
        obs[RESET_KEY] = True
    return obs
