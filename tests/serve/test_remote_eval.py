"""``lbm eval --server ws://...`` (against a real ``lbm serve`` process) gives, per episode, the same success and
step count as evaluating the same policy in-process, with the same chunks: the client asks for a chunk every
``n_action_steps`` steps and sends the window its ChunkExecutor keeps; in sync and in RTC execution. Evaluating
a server whose execution differs from the evaluation's is refused before any rollout."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from openlbm.eval.runner import EvalConfig, evaluate
from openlbm.policies.lbm import LBMPolicy
from openlbm.serve.client import RemotePolicy
from openlbm.serve.launch import spawn_server

TASKS = "reach-v3,drawer-open-v3"
MAX_STEPS = 24


@pytest.fixture(scope="module")
def metaworld_policy_dir(tmp_path_factory: pytest.TempPathFactory, policy_builder) -> Path:
    from openlbm.envs.metaworld import MetaWorldConfig, embodiment

    emb = embodiment(MetaWorldConfig(cameras=("corner2",), image_size=(32, 32), max_steps=MAX_STEPS))
    return policy_builder(emb, seed=1).save(tmp_path_factory.mktemp("mw_policy"))


def _episodes(out: Path) -> dict[str, tuple]:
    rows = [json.loads(line) for p in sorted(out.glob("episodes*.jsonl")) for line in p.read_text().splitlines()]
    return {r["episode_id"]: (r["task"], r["seed"], r["success"], r["steps"], r["error"]) for r in rows}


@pytest.mark.parametrize(("execution", "delay"), [("sync", 0), ("rtc", 2)])
def test_remote_eval_equals_local_eval(
    metaworld_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, execution: str, delay: int
) -> None:
    common = dict(
        policy=str(metaworld_policy_dir), tasks=TASKS, episodes_per_task=2, max_steps=MAX_STEPS, num_workers=2,
        record_video=False, progress=False, report=False, execution=execution, delay_steps=delay,
    )
    # In-process: every chunk the policy computes, in call order (rows: the env slots that needed one).
    local_chunks: list[torch.Tensor] = []
    predict = LBMPolicy.predict_chunk

    def recording_predict(self, obs, *args, **kwargs):
        out = predict(self, obs, *args, **kwargs)
        local_chunks.append(out.detach().cpu())
        return out

    monkeypatch.setattr(LBMPolicy, "predict_chunk", recording_predict)
    local = evaluate(EvalConfig(out=tmp_path / "local", **common))

    # Remote: every chunk the client received over the wire, in call order.
    remote_chunks: list[torch.Tensor] = []
    remote_predict = RemotePolicy._predict

    def recording_remote(self, window, *args):
        receive = remote_predict(self, window, *args)

        def recorded():
            out = receive()
            remote_chunks.append(out.detach().cpu())
            return out

        return recorded

    monkeypatch.setattr(RemotePolicy, "_predict", recording_remote)
    flags = ["--device", "cpu", "--execution", execution, "--delay-steps", str(delay)]
    proc, port = spawn_server(metaworld_policy_dir, tmp_path / "serve.log", flags)
    try:
        remote = evaluate(EvalConfig(out=tmp_path / "remote", server=f"ws://127.0.0.1:{port}", **common))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    want, got = _episodes(tmp_path / "local"), _episodes(tmp_path / "remote")
    assert len(want) == 4 and all(e[4] is None for e in want.values()), want
    assert got == want  # per episode: task, seed, success, steps
    assert local.num_episodes == remote.num_episodes == 4 and local.mean_steps == remote.mean_steps
    # Success/steps alone could agree by luck (an untrained policy fails both ways): the chunks must agree too,
    # and they must depend on the observation (no degenerate policy).
    n_act = LBMPolicy.load(metaworld_policy_dir).config.n_action_steps
    # A remote chunk is recorded when read: in RTC the last ones launched (one per env slot) may never be due.
    unread = len(local_chunks) - len(remote_chunks)
    assert len(remote_chunks) >= 4 * (MAX_STEPS // n_act) // 2 and 0 <= unread <= (2 if delay else 0)
    for a, b in zip(local_chunks, remote_chunks, strict=False):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    firsts = torch.cat(local_chunks).flatten(1)  # [N, H*A]
    assert float(torch.cdist(firsts, firsts).add(torch.eye(len(firsts)) * 1e9).min()) > 1e-3
    assert np.isfinite(firsts.numpy()).all()


def test_remote_eval_refuses_a_server_executing_otherwise(metaworld_policy_dir: Path, tmp_path: Path) -> None:
    proc, port = spawn_server(metaworld_policy_dir, tmp_path / "serve.log", ["--device", "cpu"])
    try:
        cfg = EvalConfig(server=f"ws://127.0.0.1:{port}", tasks=TASKS, episodes_per_task=1, out=tmp_path / "e",
                         execution="async", delay_steps=1, record_video=False, progress=False, report=False)
        with pytest.raises(ValueError, match=r"executes differently than expected.*'mode': \('async', 'sync'\)"):
            evaluate(cfg)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
