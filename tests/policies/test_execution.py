"""select_action: per-slot history, action queue, temporal ensembling, reset; encoding once per chunk."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from policy_helpers import ARM, make_obs, make_stats

from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.lbm import LBMPolicy
from openlbm.types import Observation


def step_obs(obs: Observation, t: int) -> Observation:
    """Step ``t`` of a multi-step observation as a live ``T = 1`` observation."""
    return Observation(
        images={k: v[:, t : t + 1] for k, v in obs.images.items()},
        state=obs.state[:, t : t + 1],
        instruction=obs.instruction,
        embodiment=obs.embodiment,
    )


class Spy:
    """Wraps ``policy.predict_chunk``, recording each call's batch size and returned chunk."""

    def __init__(self, policy: LBMPolicy) -> None:
        self.inner = policy.predict_chunk
        self.calls: list[tuple[int, torch.Tensor]] = []
        policy.predict_chunk = self  # type: ignore[method-assign]

    def __call__(self, obs: Observation) -> torch.Tensor:
        out = self.inner(obs)
        self.calls.append((obs.batch_size, out))
        return out


def test_queue_executes_n_action_steps_per_chunk(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    n_act = policy.config.n_action_steps
    frames = make_obs([ARM] * 2, t=2 * n_act)
    torch.manual_seed(0)
    # The first chunk is predicted from frame 0 repeated (padding), exactly what predict_chunk sees here:
    first = make_obs([ARM] * 2, t=2 * n_act)
    first.images = {k: v[:, :1].expand(-1, 2, -1, -1, -1) for k, v in first.images.items()}
    first.state = first.state[:, :1].expand(-1, 2, -1)
    expected = policy.predict_chunk(first)
    spy = Spy(policy)
    torch.manual_seed(0)
    actions = torch.stack([policy.select_action(step_obs(frames, t)) for t in range(2 * n_act)], dim=1)
    assert actions.shape == (2, 2 * n_act, ARM.action_dim)
    assert len(spy.calls) == 2  # one chunk per n_action_steps
    assert torch.allclose(actions[:, :n_act], expected[:, :n_act], atol=1e-6)
    assert torch.equal(actions[:, n_act:], spy.calls[1][1][:, :n_act])


def test_reset_one_slot_only_repredicts_that_slot(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    frames = make_obs([ARM] * 3, t=3)
    spy = Spy(policy)
    policy.select_action(step_obs(frames, 0))
    policy.reset([1])
    policy.select_action(step_obs(frames, 1))
    assert [b for b, _ in spy.calls] == [3, 1]
    assert policy.executor.slots[1].n_real == 1 and policy.executor.slots[0].n_real == 2
    policy.reset()
    policy.select_action(step_obs(frames, 2))
    assert [b for b, _ in spy.calls] == [3, 1, 3]


def test_temporal_ensembling_weights_older_predictions_more() -> None:
    torch.manual_seed(0)
    m = 0.5
    policy = replace(preset("debug"), temporal_ensemble=m).build([ARM], {"arm": make_stats(ARM)}).eval()
    frames = make_obs([ARM], t=3)
    spy = Spy(policy)
    out = [policy.select_action(step_obs(frames, t)) for t in range(3)]
    assert len(spy.calls) == 3  # a chunk every step
    c = [chunk[0] for _, chunk in spy.calls]  # [H, A] each
    assert torch.allclose(out[0][0], c[0][0])
    w = [math.exp(-m * i) for i in range(3)]
    expected = (w[0] * c[0][2] + w[1] * c[1][1] + w[2] * c[2][0]) / sum(w)
    assert torch.allclose(out[2][0], expected, atol=1e-6)


def test_encoding_runs_once_per_chunk(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    counts = {"vision": 0, "prepare": 0, "trunk": 0}
    policy.model.vision.register_forward_hook(lambda *a: counts.__setitem__("vision", counts["vision"] + 1))
    policy.model.trunk.register_forward_hook(lambda *a: counts.__setitem__("trunk", counts["trunk"] + 1))
    prepare = policy.model.trunk.prepare

    def counted(*args, **kwargs):
        counts["prepare"] += 1
        return prepare(*args, **kwargs)

    policy.model.trunk.prepare = counted  # type: ignore[method-assign]
    policy.predict_chunk(make_obs([ARM] * 2), num_steps=7)
    assert counts == {"vision": 1, "prepare": 1, "trunk": 7}
