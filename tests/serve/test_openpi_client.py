"""The real PyPI ``openpi-client`` (own venv, numpy<2) talks to our server: metadata, chunks, errors, auth. Its
frame-per-step loop in every execution mode: ``test_execution_modes.py``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from openlbm.serve.server import ServerConfig, serve_in_thread

SCRIPT = Path(__file__).with_name("openpi_client_script.py")


def _run_client(py: Path, port: int, api_key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(py), str(SCRIPT), str(port), api_key, "3", "3"], capture_output=True, text=True, timeout=120
    )


def test_openpi_client_against_our_server(
    openpi_python: Path, policy: torch.nn.Module, expected_chunk: Callable[[dict], np.ndarray]
) -> None:
    with serve_in_thread(policy, ServerConfig(port=0, api_key="s3cret")) as server:
        run = _run_client(openpi_python, server.port, "s3cret")
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout)
        refused = _run_client(openpi_python, server.port, "wrong-key")
    assert out["numpy"].startswith("1."), "the openpi-client venv should run its own numpy<2"
    assert {"embodiments", "horizon", "n_action_steps", "instruction_key", "action_key"} <= set(
        out["metadata_keys"]
    )
    h, a = policy.config.horizon, policy.embodiments[0].action_dim
    actions = np.asarray(out["actions"], dtype=np.float32)
    assert actions.shape == (3, h, a) and out["dtype"] == "float32"
    obs = {
        k: (np.asarray(v, dtype=np.uint8) if k.startswith("observation/images/") else v)
        for k, v in out["obs"].items()
    }
    obs["observation/state"] = np.asarray(obs["observation/state"], dtype=np.float32)
    obs["episode_key"] = int(obs["episode_key"])
    want = expected_chunk(obs)
    for got in actions:  # same observation three times -> the policy's chunk each time
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert all({"infer_ms", "queue_ms", "batch_size"} <= set(t) for t in out["timing"])
    assert "prev_total_ms" in out["timing"][1] and all(ms > 0 for ms in out["infer_ms"])
    assert out["error"] is not None and "missing keys ['observation/state']" in out["error"]
    assert out["after_error_shape"] == [h, a]
    assert out["broker_error"] == "IndexError"  # a chunk broker skipping frames fails loudly, never silently
    assert refused.returncode != 0 and "401" in refused.stderr
