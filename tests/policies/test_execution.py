"""select_action: per-slot history, action queue, temporal ensembling, reset; encoding once per chunk."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from policy_helpers import ARM, make_obs, make_stats

from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.execution import frame_key
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
        self.windows: list[tuple[Observation, object, object]] = []
        policy.predict_chunk = self  # type: ignore[method-assign]

    def __call__(self, obs: Observation, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.inner(obs, *args, **kwargs)
        self.calls.append((obs.batch_size, out))
        self.windows.append((obs, kwargs.get("chunk_index"), kwargs.get("episode_key")))
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
    first.obs_is_pad = torch.tensor([[True, False]] * 2)  # the copy is padding
    expected = policy.predict_chunk(first)  # no keys: the first chunk of an episode starting at the last frame
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
    policy.model.vision.backbone.register_forward_hook(lambda *a: counts.__setitem__("vision", counts["vision"] + 1))
    policy.model.trunk.register_forward_hook(lambda *a: counts.__setitem__("trunk", counts["trunk"] + 1))
    prepare = policy.model.trunk.prepare

    def counted(*args, **kwargs):
        counts["prepare"] += 1
        return prepare(*args, **kwargs)

    policy.model.trunk.prepare = counted  # type: ignore[method-assign]
    policy.predict_chunk(make_obs([ARM] * 2), num_steps=7)
    assert counts == {"vision": 1, "prepare": 1, "trunk": 7}


def test_windows_are_consecutive_frames_and_chunk_index_counts_per_slot(debug_policy: LBMPolicy) -> None:
    """The model sees the last ``n_obs_steps`` *env steps* (not the last requests), padded at the episode start;
    each slot's chunk index counts its chunks since its reset (it keys the sampling noise)."""
    policy = debug_policy.eval()
    n_act, n_obs = policy.config.n_action_steps, policy.config.n_obs_steps
    steps = 2 * n_act + 1
    obs = make_obs([ARM] * 2, t=steps, seed=4)
    spy = Spy(policy)
    policy.reset()
    for t in range(steps):
        if t == n_act:
            policy.reset([1])  # slot 1 starts a new episode at step n_act
        policy.select_action(step_obs(obs, t))
    (first, idx1, key1), (second, idx2, key2), (third, idx3, key3) = spy.windows
    assert idx1 == [0, 0] and first.obs_is_pad.tolist() == [[True] * (n_obs - 1) + [False]] * 2
    assert idx2 == [1, 0]  # slot 0: its 2nd chunk; slot 1: the first of its new episode
    # The episode key is the first frame's: kept by slot 0, new for slot 1's new episode.
    assert key2[0] == key3[0] == key1[0] and key2[1] == key3[1] != key1[1]
    assert key2[1] == frame_key({c: v[1, n_act] for c, v in obs.images.items()}, obs.state[1, n_act], obs.instruction[1], ARM)
    # Slot 0's window at step n_act holds steps n_act - n_obs + 1 .. n_act, consecutive.
    torch.testing.assert_close(second.state[0], obs.state[0, n_act - n_obs + 1 : n_act + 1])
    assert second.obs_is_pad[1].tolist() == [True] * (n_obs - 1) + [False]
    torch.testing.assert_close(second.state[1, -1], obs.state[1, n_act])
    assert idx3 == [2, 1]
    torch.testing.assert_close(third.state[0], obs.state[0, 2 * n_act - n_obs + 1 : 2 * n_act + 1])
