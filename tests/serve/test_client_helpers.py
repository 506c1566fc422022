"""Torch-free client pieces: request validation (frames and windows), import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from openlbm.embodiment import EmbodimentSpec
from openlbm.serve import protocol

SPEC = EmbodimentSpec("arm", ("front", "wrist"), (8, 6), state_dim=4, action_dim=3)
SPECS = {"arm": SPEC, "other": EmbodimentSpec("other", ("front",), (4, 4), 2, 2)}


def _obs(**override: object) -> dict:
    obs = protocol.make_observation(
        {"front": np.zeros((8, 6, 3), np.uint8), "wrist": np.ones((8, 6, 3), np.uint8)},
        np.arange(4, dtype=np.float32),
        "stack the cups",
    )
    obs.update(override)
    return {k: v for k, v in obs.items() if v is not None}


def test_parse_accepts_slash_and_dot_keys_and_float64_state() -> None:
    parsed = protocol.parse_observation(_obs(), SPECS, "arm")
    assert parsed.embodiment == "arm" and parsed.prompt == "stack the cups" and parsed.chunk_index == 0
    dotted = {k.replace("/", "."): v for k, v in _obs().items()}
    dotted["observation.state"] = np.arange(4, dtype=np.float64)
    parsed2 = protocol.parse_observation({**dotted, "reset": True}, SPECS, "arm")
    assert parsed2.state.dtype == np.float32 and parsed2.state.shape == (1, 4) and parsed2.reset
    np.testing.assert_array_equal(parsed2.images["wrist"], parsed.images["wrist"])


def test_without_episode_key_a_request_is_one_frame_of_the_connections_episode() -> None:
    f = protocol.parse_observation(_obs(), SPECS, "arm", n_obs_steps=3)
    assert f.is_frame and not f.reset and f.state.shape == (1, 4) and f.images["front"].shape == (1, 8, 6, 3)


def test_a_single_frame_window_is_an_episode_start_window() -> None:
    w = protocol.parse_observation(_obs(episode_key=5), SPECS, "arm", n_obs_steps=3)
    assert not w.is_frame and w.episode_key == 5
    assert w.is_pad.tolist() == [True, True, False] and w.state.shape == (3, 4)
    assert w.images["front"].shape == (3, 8, 6, 3)
    np.testing.assert_array_equal(w.state[0], w.state[2])  # padding repeats the frame (the dataset's convention)


def test_a_window_passes_through_with_its_padding_and_chunk_index() -> None:
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8) for c in ("front", "wrist")}
    state = rng.normal(size=(3, 4)).astype(np.float32)
    pad = np.array([True, False, False])
    prefix = rng.normal(size=(5, 3)).astype(np.float32)
    req = protocol.make_observation(
        images, state, "p", is_pad=pad, chunk_index=7, episode_key=9, action_prefix=prefix, frozen_steps=2
    )
    w = protocol.parse_observation(req, SPECS, "arm", n_obs_steps=3)
    assert w.is_pad.tolist() == pad.tolist() and w.chunk_index == 7 and w.frozen_steps == 2
    np.testing.assert_array_equal(w.action_prefix, prefix)
    np.testing.assert_array_equal(w.state, state)
    np.testing.assert_array_equal(w.images["wrist"], images["wrist"])
    del req["observation/is_pad"]
    assert not protocol.parse_observation(req, SPECS, "arm", n_obs_steps=3).is_pad.any()


def _window(t: int, **override: object) -> dict:
    obs = protocol.make_observation(
        {"front": np.zeros((t, 8, 6, 3), np.uint8), "wrist": np.zeros((t, 8, 6, 3), np.uint8)},
        np.zeros((t, 4), np.float32),
        "p",
        episode_key=1,
    )
    obs.update(override)
    return obs


@pytest.mark.parametrize(
    ("obs", "match"),
    [
        (_window(2), "a window of 2 frames; this policy takes one frame or n_obs_steps=3"),
        (_window(3, **{"observation/state": np.zeros((2, 4), np.float32)}), "window lengths differ"),
        (_window(3, **{"observation/is_pad": np.array([False, True, False])}), "padding must be a prefix"),
        (_window(3, **{"observation/is_pad": np.array([True, True, True])}), "last frame real"),
        (_window(3, **{"observation/is_pad": np.array([0, 0, 0])}), "bool numpy array"),
        (_window(3, chunk_index=-1), "chunk_index: expected an int with 0 <= value"),
        (_window(3, chunk_index="0"), "chunk_index: expected an int with 0 <= value"),
        (_window(3, episode_key=2**63), "episode_key: expected an int with 0 <= value"),
        (_window(1, **{"observation/is_pad": np.array([True])}), "single frame it can only be"),
        (_window(3, action_prefix=np.zeros((4, 2), np.float32)), r"action_prefix: expected a float32 numpy array \[K, 3\]"),
        (_window(3, action_prefix=np.full((4, 3), np.nan, np.float32)), "action_prefix: contains NaN"),
        (_window(3, action_prefix=np.zeros((4, 3), np.float32), frozen_steps=5), "frozen_steps: 5 exceeds"),
        (_window(3, frozen_steps=1), "frozen_steps: only together with action_prefix"),
        (_window(3, reset=True), "reset: only for frame requests"),
        (_obs(chunk_index=1), r"\['chunk_index'\]: only in a window request"),
        (_obs(**{"observation/state": np.zeros((3, 4), np.float32)}), "a frame request holds one frame"),
    ],
)
def test_bad_windows_are_rejected_with_named_field(obs: dict, match: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=match):
        protocol.parse_observation(obs, SPECS, "arm", n_obs_steps=3)


@pytest.mark.parametrize(
    ("obs", "match"),
    [
        ([1, 2], "must be a msgpack map"),
        (_obs(prompt=None), r"missing keys \['prompt'\]"),
        (_obs(extra=1), r"unexpected keys \['extra'\]"),
        (_obs(**{"observation/images/front": np.zeros((8, 6, 3), np.float32)}), "dtype uint8"),
        (
            _obs(**{"observation/images/front": np.zeros((6, 8, 3), np.uint8)}),
            r"wrong shape: expected \[8, 6, 3\]",
        ),
        (_obs(**{"observation/images/front": np.zeros((800, 600, 3), np.uint8)}), "oversized image"),
        (_obs(**{"observation/images/front": "jpeg?"}), "got str"),
        (_obs(**{"observation/state": np.array([1, 2, 3, 4])}), "dtype float32, got int64"),
        (_obs(**{"observation/state": np.zeros(5, np.float32)}), r"expected shape \[4\]"),
        (_obs(**{"observation/state": np.array([0, np.nan, 0, 0], np.float32)}), "NaN"),
        (_obs(**{"observation/state": np.array([0, 1e300, 0, 0])}), "NaN or inf"),
        (_obs(**{"observation/state": np.full(4, 1e30, np.float32)}), r"observation/state: \|value\| 1e\+30 exceeds"),
        (_obs(**{"observation/state": np.array([0, -2e6, 0, 0], np.float32)}), "exceeds the accepted bound"),
        (_obs(prompt=5), "instruction as a string"),
        (_obs(prompt="x" * 5000), "at most"),
        (_obs(embodiment="nope"), "unknown embodiment"),
        (_obs(embodiment="other"), r"unexpected keys \['observation/images/wrist'\]"),
        (_obs(reset="yes"), "expected a bool"),
        ({**_obs(), "observation.state": np.zeros(4, np.float32)}, "given twice"),
        ({1: 2}, "keys must be strings"),
    ],
)
def test_parse_rejects_with_named_field(obs: object, match: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=match):
        protocol.parse_observation(obs, SPECS, "arm")


def test_client_module_does_not_import_torch() -> None:
    code = "import sys, openlbm.serve.client, openlbm.serve.codec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
