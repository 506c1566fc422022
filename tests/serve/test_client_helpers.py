"""Torch-free client pieces: request validation, chunk broker, temporal ensembling, import hygiene."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from openlbm.serve import protocol
from openlbm.serve.client import ChunkBroker, TemporalEnsembler

SPEC = protocol.WireSpec("arm", ("front", "wrist"), (8, 6), state_dim=4, action_dim=3)
SPECS = {"arm": SPEC, "other": protocol.WireSpec("other", ("front",), (4, 4), 2, 2)}


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
    assert parsed.embodiment == "arm" and parsed.prompt == "stack the cups" and not parsed.reset
    dotted = {k.replace("/", "."): v for k, v in _obs().items()}
    dotted["observation.state"] = np.arange(4, dtype=np.float64)
    parsed2 = protocol.parse_observation({**dotted, "reset": True}, SPECS, "arm")
    assert parsed2.state.dtype == np.float32 and parsed2.reset
    np.testing.assert_array_equal(parsed2.images["wrist"], parsed.images["wrist"])


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


def test_chunk_broker_executes_n_steps_per_chunk() -> None:
    calls: list[int] = []

    def infer(obs: dict) -> dict:
        calls.append(obs["t"])
        return {"actions": np.arange(10, dtype=np.float32)[:, None] + 100 * len(calls)}

    broker = ChunkBroker(3, infer)
    got = [float(broker.step({"t": t})[0]) for t in range(7)]
    assert calls == [0, 3, 6]
    assert got == [100, 101, 102, 200, 201, 202, 300]
    broker.reset()
    assert broker.needs_chunk and float(broker.step({"t": 7})[0]) == 400


def _brute_force_ensemble(chunks: list[np.ndarray], t: int, coeff: float) -> np.ndarray:
    h = chunks[0].shape[0]
    preds = [chunks[s][t - s] for s in range(t + 1) if t - s < h]  # oldest first
    w = np.exp(-coeff * np.arange(len(preds)))
    return (np.stack(preds) * w[:, None]).sum(0) / w.sum()


@pytest.mark.parametrize("coeff", [0.0, 0.01, 0.5, -0.2])
def test_temporal_ensembler_matches_definition(coeff: float) -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(5, 2)) for _ in range(12)]
    ens = TemporalEnsembler(coeff)
    for t, chunk in enumerate(chunks):
        np.testing.assert_allclose(
            ens.update(chunk), _brute_force_ensemble(chunks, t, coeff), rtol=1e-5, atol=1e-6
        )
    ens.reset()
    np.testing.assert_allclose(ens.update(chunks[3]), chunks[3][0], rtol=1e-6)


def test_client_module_does_not_import_torch() -> None:
    code = "import sys, openlbm.serve.client, openlbm.serve.codec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
