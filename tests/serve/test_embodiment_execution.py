"""A per-embodiment chunk schedule (``PolicyConfig.embodiment_execution``, e.g. ALOHA's temporal ensembling) is what
that embodiment executes in process, through ``RemotePolicy`` and through the server's per-connection executor,
while the policy's other embodiment keeps the policy-level schedule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from policy_helpers import make_stats, randomize_zero_init

from openlbm.configs.presets import ALOHA_EXECUTION, policy_preset, preset
from openlbm.policies.config import EmbodimentExecution
from openlbm.policies.execution import ExecutionConfig
from openlbm.serve import protocol
from openlbm.serve.client import PolicyClient, RemotePolicy
from openlbm.serve.server import ServerConfig, serve_in_thread
from openlbm.types import EmbodimentSpec, EnvFrame, observation_from_frames

EMB = EmbodimentSpec("test_arm", ("front", "wrist"), (32, 32), state_dim=5, action_dim=3, fps=10.0)
BI = EmbodimentSpec("test_bimanual", ("top",), (32, 48), state_dim=4, action_dim=4, fps=50.0)
BI_EXECUTION = ExecutionConfig(n_action_steps=1, temporal_ensemble=0.5)
STEPS = 6


def _policy(overrides: tuple[EmbodimentExecution, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = replace(policy_preset("debug"), embodiment_execution=overrides)
    policy = cfg.build([EMB, BI], {e.name: make_stats(e) for e in (EMB, BI)}).eval()
    return randomize_zero_init(policy, 0)


def _frames(emb: EmbodimentSpec, t: int) -> list[EnvFrame]:
    rng = np.random.default_rng(10 + t)
    images = {c: rng.integers(0, 256, (*emb.image_size, 3), dtype=np.uint8) for c in emb.cameras}
    return [EnvFrame(images, rng.normal(size=emb.state_dim).astype(np.float32), "lift it")]


def _run(policy, emb: EmbodimentSpec) -> tuple[np.ndarray, int]:
    """``[STEPS, A]`` executed by ``select_action`` as ``emb``, and how many chunks were predicted."""
    calls = []
    predict = policy.predict_chunk

    def counting(obs, **kw):
        calls.append(obs.batch_size)
        return predict(obs, **kw)

    policy.predict_chunk = counting
    try:
        policy.reset()
        with torch.inference_mode():
            out = [policy.select_action(observation_from_frames(_frames(emb, t), emb.name))[0].numpy()
                   for t in range(STEPS)]
    finally:
        del policy.predict_chunk
    return np.stack(out), len(calls)


def test_in_process_each_embodiment_runs_its_own_schedule() -> None:
    policy = _policy((EmbodimentExecution(BI.name, 1, 0.5),))
    assert policy.embodiment.name == EMB.name and policy.execution == ExecutionConfig(n_action_steps=4)
    _, calls = _run(policy, EMB)
    assert calls == 2  # the policy-level schedule: a chunk at steps 0 and 4
    policy.embodiment = BI  # what the eval runner does for the suite's robot
    assert policy.execution == BI_EXECUTION
    got, calls = _run(policy, BI)
    assert calls == STEPS  # temporal ensembling: a chunk every step
    # the same actions as that execution set explicitly on a policy without overrides (same weights)
    plain = _policy(())
    plain.embodiment = BI
    plain.set_execution(BI_EXECUTION)
    np.testing.assert_allclose(got, _run(plain, BI)[0], atol=1e-6)
    plain.set_execution(plain.default_execution())
    assert np.abs(got - _run(plain, BI)[0]).max() > 1e-3  # and not what the policy-level schedule executes
    # the runner's run-time choice (mode) keeps the embodiment's schedule; one it cannot run is a clear error
    policy.set_execution(replace(policy.default_execution(), mode="sync"))
    assert policy.execution == BI_EXECUTION and policy.base_execution == ExecutionConfig(n_action_steps=4)
    with pytest.raises(ValueError, match="embodiment 'test_bimanual' executes .*temporal_ensemble=0.5"):
        policy.set_execution(ExecutionConfig(n_action_steps=4, mode="async", delay_steps=1))
    policy.embodiment = EMB
    assert policy.execution == ExecutionConfig(n_action_steps=4)


def test_embodiment_schedules_off_runs_the_chosen_execution_everywhere() -> None:
    """``--no-embodiment-schedule``: async on an embodiment whose schedule ensembles runs the policy-level chunks."""
    policy = _policy((EmbodimentExecution(BI.name, 1, 0.5),))
    policy.embodiment = BI
    with pytest.raises(ValueError, match="--no-embodiment-schedule runs n_action_steps=4"):
        policy.set_execution(ExecutionConfig(n_action_steps=4, mode="async", delay_steps=1))
    policy.embodiment_schedules = False
    chosen = ExecutionConfig(n_action_steps=4, mode="async", delay_steps=1)
    policy.set_execution(chosen)
    assert policy.execution == chosen
    got, calls = _run(policy, BI)
    assert calls == 2  # chunked every 4 steps, not ensembled every step
    plain = _policy(())
    plain.embodiment = BI
    plain.set_execution(chosen)
    np.testing.assert_allclose(got, _run(plain, BI)[0], atol=1e-6)
    with serve_in_thread(policy, ServerConfig(port=0, execution=chosen)) as server:
        meta = RemotePolicy(f"ws://127.0.0.1:{server.port}").metadata
    assert meta["executions"][BI.name] == {**chosen.to_dict(), "noise_seed": 0}


def test_served_each_embodiment_runs_its_own_schedule() -> None:
    policy = _policy((EmbodimentExecution(BI.name, 1, 0.5),))
    policy.embodiment = BI
    want, _ = _run(policy, BI)
    policy.embodiment = EMB
    with serve_in_thread(policy, ServerConfig(port=0)) as server:
        url = f"ws://127.0.0.1:{server.port}"
        meta = RemotePolicy(url).metadata
        assert meta["execution"] == {**ExecutionConfig(n_action_steps=4).to_dict(), "noise_seed": 0}
        assert meta["executions"][BI.name] == {**BI_EXECUTION.to_dict(), "noise_seed": 0}
        with RemotePolicy(url, embodiment=BI.name) as remote:
            assert remote.execution == BI_EXECUTION
            got = np.stack([remote.select_action(observation_from_frames(_frames(BI, t), BI.name))[0].numpy()
                            for t in range(STEPS)])
        np.testing.assert_allclose(got, want, atol=1e-4)
        client = PolicyClient(f"127.0.0.1:{server.port}")  # one frame per step: the server's executor
        try:
            frames = [_frames(BI, t)[0] for t in range(STEPS)]
            got = np.stack([client.infer(protocol.make_observation(f.images, f.state, f.instruction,
                                                                   embodiment=BI.name))["actions"][0] for f in frames])
        finally:
            client.close()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_the_aloha_presets_carry_alohas_schedule() -> None:
    from openlbm.envs.suites import robot_name

    assert ALOHA_EXECUTION.embodiment == robot_name("aloha")
    for cfg in (preset("aloha").policy, preset("aloha-debug").policy, policy_preset("aloha")):
        assert cfg.schedule(robot_name("aloha")) == (1, 0.01) and cfg.schedule("other") == (cfg.n_action_steps, None)
    assert policy_preset("aloha").horizon == 50 and policy_preset("small").embodiment_execution == ()
    with pytest.raises(ValueError, match="n_action_steps in"):
        replace(policy_preset("debug"), embodiment_execution=(EmbodimentExecution("x", 9),))
