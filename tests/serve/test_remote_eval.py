"""``lbm eval --server ws://...`` gives the same episodes as evaluating the same policy in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openlbm.eval.runner import EvalConfig, evaluate
from openlbm.policies.lbm import LBMPolicy
from openlbm.serve.server import ServerConfig, serve_in_thread

TASK = "reach-v3"
NOISE_SEED = ServerConfig().noise_seed
_PREDICT_CHUNK = LBMPolicy.predict_chunk


@pytest.fixture(scope="module")
def metaworld_policy_dir(tmp_path_factory: pytest.TempPathFactory, policy_builder) -> Path:
    from openlbm.envs.metaworld import MetaWorldConfig, embodiment

    emb = embodiment(MetaWorldConfig(cameras=("corner2",), image_size=(32, 32), max_steps=30))
    return policy_builder(emb, seed=1).save(tmp_path_factory.mktemp("mw_policy"))


def _episodes(out: Path) -> dict[str, tuple]:
    rows = [json.loads(line) for p in sorted(out.glob("episodes*.jsonl")) for line in p.read_text().splitlines()]
    return {r["episode_id"]: (r["task"], r["seed"], r["success"], r["steps"], r["error"]) for r in rows}


def _recording(calls: list[torch.Tensor]):
    """``LBMPolicy.predict_chunk`` that also keeps every chunk it returns (rows: one per env / request)."""

    def predict_chunk(self, obs, *args, **kwargs):
        out = _PREDICT_CHUNK(self, obs, *args, **kwargs)
        calls.extend(out.detach().cpu())
        return out

    return predict_chunk


def _sorted_chunks(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Chunks in a canonical order: local runs batch both envs in one call, remote runs send one per connection."""
    flat = torch.stack(chunks).flatten(1)  # [N, H, A] -> [N, H*A]
    keys = [row.tolist() for row in flat]
    return flat[sorted(range(len(keys)), key=keys.__getitem__)]


def test_remote_eval_equals_local_eval(
    metaworld_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = dict(
        policy=str(metaworld_policy_dir), tasks=TASK, episodes_per_task=2, max_steps=30, num_workers=2,
        record_video=False, progress=False, report=False, noise_seed=NOISE_SEED,
    )
    local_chunks: list[torch.Tensor] = []
    monkeypatch.setattr(LBMPolicy, "predict_chunk", _recording(local_chunks))
    local = evaluate(EvalConfig(out=tmp_path / "local", **common))

    served = LBMPolicy.load(metaworld_policy_dir).eval()
    remote_chunks: list[torch.Tensor] = []
    monkeypatch.setattr(LBMPolicy, "predict_chunk", _recording(remote_chunks))
    with serve_in_thread(served, ServerConfig(port=0, noise_seed=NOISE_SEED)) as server:
        url = f"ws://127.0.0.1:{server.port}"
        remote = evaluate(EvalConfig(out=tmp_path / "remote", server=url, **common))

    want, got = _episodes(tmp_path / "local"), _episodes(tmp_path / "remote")
    assert len(want) == 2 and all(e[4] is None for e in want.values()), want
    assert got == want
    assert local.num_episodes == remote.num_episodes == 2 and local.mean_steps == remote.mean_steps
    # Success/steps alone could agree by luck (an untrained policy fails both ways): the actions must agree too.
    assert len(local_chunks) == len(remote_chunks) > 2
    torch.testing.assert_close(_sorted_chunks(remote_chunks), _sorted_chunks(local_chunks), rtol=1e-5, atol=1e-5)
