"""Served means evaluated, in every execution mode: in-process ``select_action``, ``RemotePolicy`` (windows, its own
executor configured from the metadata), our ``PolicyClient`` and the real openpi-client sending one frame per
control step (the server's per-connection executor) execute identical actions; the execution travels in the
metadata and a client expecting another one is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from openlbm.policies.execution import ExecutionConfig
from openlbm.serve import protocol
from openlbm.serve.client import PolicyClient, RemotePolicy
from openlbm.serve.server import ServerConfig, serve_in_thread
from openlbm.types import EnvFrame, observation_from_frames

STEPS, RESET_AT = 11, 7
"""Steps per run; slot 1 starts a new episode at RESET_AT (crosses several chunk seams before and after)."""
MODES = {
    "sync": ExecutionConfig(n_action_steps=4),
    "ensemble": ExecutionConfig(n_action_steps=4, temporal_ensemble=0.5),
    "async": ExecutionConfig(n_action_steps=4, mode="async", delay_steps=2),
    "rtc": ExecutionConfig(n_action_steps=4, mode="rtc", delay_steps=2),
}
LOOP = Path(__file__).with_name("openpi_client_loop.py")


def _frames(emb, t: int) -> list[EnvFrame]:
    out = []
    for b in range(2):
        rng = np.random.default_rng(100 * t + b)
        images = {c: rng.integers(0, 256, (*emb.image_size, 3), dtype=np.uint8) for c in emb.cameras}
        out.append(EnvFrame(images, rng.normal(size=emb.state_dim).astype(np.float32), f"task {b}"))
    return out


def _in_process(policy, execution: ExecutionConfig) -> np.ndarray:
    """``[STEPS, 2, A]`` executed by ``LBMPolicy.select_action``."""
    emb = policy.embodiments[0]
    policy.set_execution(execution)
    out = []
    with torch.inference_mode():
        for t in range(STEPS):
            if t == RESET_AT:
                policy.reset([1])
            out.append(policy.select_action(observation_from_frames(_frames(emb, t), emb.name)).numpy())
    policy.set_execution(policy.default_execution())
    return np.stack(out)


def _remote(port: int, emb) -> np.ndarray:
    out = []
    with RemotePolicy(f"ws://127.0.0.1:{port}") as remote:
        for t in range(STEPS):
            if t == RESET_AT:
                remote.reset([1])
            out.append(remote.select_action(observation_from_frames(_frames(emb, t), emb.name)).numpy())
    return np.stack(out)


def _frame_clients(port: int, emb) -> np.ndarray:
    """Torch-free: one connection per robot, one frame per step; slot 1's new episode is a new connection."""
    clients = [PolicyClient(f"127.0.0.1:{port}") for _ in range(2)]
    out = []
    for t in range(STEPS):
        if t == RESET_AT:
            clients[1].close()
            clients[1] = PolicyClient(f"127.0.0.1:{port}")
        row = []
        for b, f in enumerate(_frames(emb, t)):
            reply = clients[b].infer(protocol.make_observation(f.images, f.state, f.instruction))["actions"]
            assert reply.shape == (1, emb.action_dim)
            row.append(reply[0])
        out.append(np.stack(row))
    for c in clients:
        c.close()
    return np.stack(out)


def _openpi_loop(py: Path, port: int, emb, tmp: Path) -> np.ndarray:
    frames = [_frames(emb, t) for t in range(STEPS)]
    np.savez(
        tmp / "frames.npz",
        state=np.stack([[f.state for f in row] for row in frames]),  # [T, B, S]
        prompts=np.array([f.instruction for f in frames[0]]),
        resets=np.array([[RESET_AT, 1]]),
        **{f"images_{c}": np.stack([[f.images[c] for f in row] for row in frames]) for c in emb.cameras},
    )
    run = subprocess.run([str(py), str(LOOP), str(port), str(tmp / "frames.npz")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return np.asarray(json.loads(run.stdout)["actions"], dtype=np.float32)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_client_executes_the_in_process_actions(
    mode: str, policy, openpi_python: Path, tmp_path: Path
) -> None:
    execution, emb = MODES[mode], policy.embodiments[0]
    want = _in_process(policy, execution)
    assert want.shape == (STEPS, 2, emb.action_dim)
    assert np.abs(np.diff(want, axis=0)).max() > 0.1  # the actions follow the observations
    with serve_in_thread(policy, ServerConfig(port=0, execution=execution)) as server:
        served = {
            "RemotePolicy": _remote(server.port, emb),
            "PolicyClient frames": _frame_clients(server.port, emb),
            "openpi-client frames": _openpi_loop(openpi_python, server.port, emb, tmp_path),
        }
    for name, got in served.items():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{name} ({mode})")


def test_modes_differ_so_the_comparison_means_something(policy) -> None:
    runs = {m: _in_process(policy, e) for m, e in MODES.items()}
    for a in MODES:
        for b in MODES:
            if a < b:
                assert np.abs(runs[a] - runs[b]).max() > 0.05, (a, b)


def test_the_execution_is_in_the_metadata_and_checked(policy) -> None:
    execution = MODES["rtc"]
    with serve_in_thread(policy, ServerConfig(port=0, execution=execution, noise_seed=3)) as server:
        url = f"ws://127.0.0.1:{server.port}"
        with RemotePolicy(url, expect={"mode": "rtc", "delay_steps": 2, "noise_seed": 3}) as remote:
            assert remote.execution == execution
            assert remote.metadata["execution"] == {**execution.to_dict(), "noise_seed": 3}
        with pytest.raises(ValueError, match=r"executes differently than expected.*'delay_steps': \(1, 2\)"):
            RemotePolicy(url, expect={"delay_steps": 1})
        with pytest.raises(ValueError, match=r"'noise_seed': \(0, 3\)"):
            RemotePolicy(url, expect={"noise_seed": 0})
