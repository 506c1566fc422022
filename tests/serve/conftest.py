"""Shared fixtures: a real debug-preset LBMPolicy with made-up stats and randomised zero-init layers (its chunks
depend on the observation), saved to disk, and servers around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openlbm.serve import protocol
from openlbm.serve.server import ServerConfig
from openlbm.types import EmbodimentSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))
from policy_helpers import randomize_zero_init  # noqa: E402

NOISE_SEED = ServerConfig().noise_seed
"""The server's default sampling seed (see ``ServerConfig.noise_seed``)."""
EMB = EmbodimentSpec("test_arm", ("front", "wrist"), (32, 32), state_dim=5, action_dim=3, fps=10.0)


def made_up_stats(emb: EmbodimentSpec) -> dict[str, dict[str, list]]:
    """Plausible LeRobot-format stats (the numbers only need to be finite and distinct per dim)."""

    def vec(n: int, lo: float, hi: float) -> dict[str, list]:
        mean = np.linspace(lo, hi, n)
        return {
            "mean": mean.tolist(),
            "std": (0.5 + 0.1 * np.arange(n)).tolist(),
            "min": (mean - 2).tolist(),
            "max": (mean + 2).tolist(),
            "q01": (mean - 1.5).tolist(),
            "q99": (mean + 1.5).tolist(),
            "count": [1000],
        }

    stats = {"observation.state": vec(emb.state_dim, -0.3, 0.4), "action": vec(emb.action_dim, -0.2, 0.2)}
    for cam in emb.cameras:
        stats[f"observation.images.{cam}"] = {
            "mean": [[[0.45]], [[0.45]], [[0.4]]],
            "std": [[[0.25]], [[0.25]], [[0.25]]],
            "min": [[[0.0]], [[0.0]], [[0.0]]],
            "max": [[[1.0]], [[1.0]], [[1.0]]],
            "q01": [[[0.02]], [[0.02]], [[0.02]]],
            "q99": [[[0.98]], [[0.98]], [[0.98]]],
            "count": [1000],
        }
    return stats


def build_policy(emb: EmbodimentSpec = EMB, seed: int = 0) -> torch.nn.Module:
    from openlbm.configs.presets import policy_preset as preset

    torch.manual_seed(seed)
    policy = preset("debug").build([emb], {emb.name: made_up_stats(emb)}).eval()
    return randomize_zero_init(policy, seed)


@pytest.fixture(scope="session")
def policy_builder():
    """``policy_builder(embodiment, seed) -> LBMPolicy``: a fresh debug-preset policy with made-up stats."""
    return build_policy


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served_policy")
    build_policy().save(root)
    return root


@pytest.fixture(scope="session")
def policy(policy_dir: Path) -> torch.nn.Module:
    from openlbm.policies.lbm import LBMPolicy

    policy = LBMPolicy.load(policy_dir, device="cpu").eval()
    policy.noise_seed = NOISE_SEED  # what the server sets too: in-process answers are comparable with served ones
    return policy


def make_request(seed: int, emb: EmbodimentSpec = EMB, prompt: str = "push the red block") -> dict:
    """A window request (an episode-start frame with its ``episode_key``): its answer is a chunk."""
    rng = np.random.default_rng(seed)
    h, w = emb.image_size
    images = {cam: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in emb.cameras}
    state = rng.normal(size=emb.state_dim).astype(np.float32)
    return protocol.make_observation(images, state, prompt, episode_key=1000 + seed)


def _openpi_venv_dir() -> Path:
    cache = Path(os.environ.get("OPENLBM_CACHE", Path.home() / ".cache" / "openlbm"))
    return cache / "openpi-client-venv"


@pytest.fixture(scope="session")
def openpi_python() -> Path:
    """A venv holding the real PyPI ``openpi-client`` (it pins numpy<2, so it cannot share our interpreter)."""
    venv = _openpi_venv_dir()
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import openpi_client.websocket_client_policy, openpi_client.action_chunk_broker"]
    if py.exists() and subprocess.run(probe, capture_output=True, timeout=120).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    # openpi-client 0.1.2 imports typing_extensions without declaring it.
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "openpi-client", "typing_extensions"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0:
        out = pip.stdout + pip.stderr
        unreachable = (
            "No matching distribution",
            "Could not find a version",
            "NewConnectionError",
            "Network is unreachable",
        )
        if any(s in out for s in unreachable):
            pytest.skip(f"pip cannot reach a package index to install openpi-client: {out[-300:]}")
        raise RuntimeError(f"installing openpi-client into {venv} failed:\n{out[-2000:]}")
    subprocess.run(probe, check=True, timeout=120)
    return py


@pytest.fixture(scope="session")
def random_request():
    """``random_request(seed) -> dict``: a valid request for :data:`EMB` with seeded images/state."""
    return make_request


@pytest.fixture(scope="session")
def expected_chunk(policy: torch.nn.Module):
    """``expected_chunk(request) -> [H, A]``: the in-process ``predict_chunk`` answer for a request, alone."""
    from openlbm.serve.server import PolicyRunner, policy_facts

    specs, _, n_obs = policy_facts(policy)
    runner = PolicyRunner(policy, noise_seed=NOISE_SEED)

    def expected(req: dict) -> np.ndarray:
        parsed = protocol.parse_observation(req, {s.name: s for s in specs}, specs[0].name, n_obs)
        return runner([parsed])[0]

    return expected
