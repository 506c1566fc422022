"""select_action: per-slot history, chunk schedule (sync / async / RTC), temporal ensembling, reset; encoding
once per chunk; RTC's guided sampling agrees with the committed actions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from policy_helpers import ARM, make_obs, make_stats, randomize_zero_init

from openlbm.configs.presets import policy_preset as preset
from openlbm.policies.execution import ExecutionConfig, Guidance, delay_steps, frame_key, rtc_weights
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
        self.guidance: list[object] = []
        policy.predict_chunk = self  # type: ignore[method-assign]

    def __call__(self, obs: Observation, *args: object, **kwargs: object) -> torch.Tensor:
        out = self.inner(obs, *args, **kwargs)
        self.calls.append((obs.batch_size, out))
        self.windows.append((obs, kwargs.get("chunk_index"), kwargs.get("episode_key")))
        self.guidance.append(kwargs.get("guidance"))
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


def _run(policy: LBMPolicy, execution: ExecutionConfig, steps: int, seed: int = 5) -> tuple[torch.Tensor, Spy]:
    """Executed actions ``[B, steps, A]`` of ``policy`` under ``execution`` on fixed frames, and its chunk calls."""
    policy.set_execution(execution)
    frames = make_obs([ARM] * 2, t=steps, seed=seed)
    spy = Spy(policy)
    with torch.inference_mode():
        actions = torch.stack([policy.select_action(step_obs(frames, t)) for t in range(steps)], dim=1)
    del policy.predict_chunk  # back to the class's method
    return actions, spy


def test_async_computes_each_chunk_d_steps_ahead_and_uses_it_from_row_d(debug_policy: LBMPolicy) -> None:
    """With delay d the chunk observed at step t is executed from row d at step t + d; each chunk gives s actions."""
    policy = debug_policy.eval()
    s, d = policy.config.n_action_steps, 2
    actions, spy = _run(policy, ExecutionConfig(n_action_steps=s, mode="async", delay_steps=d), steps=3 * s)
    assert len(spy.calls) == 4  # launched at steps 0, s - d, 2s - d, 3s - d
    c = [chunk for _, chunk in spy.calls]  # [B, H, A] each
    assert [idx for _, idx, _ in spy.windows] == [[k, k] for k in range(4)]
    frames = make_obs([ARM] * 2, t=3 * s, seed=5)
    for k in (1, 2, 3):
        torch.testing.assert_close(spy.windows[k][0].state[:, -1], frames.state[:, k * s - d])
    torch.testing.assert_close(actions[:, :s], c[0][:, :s])  # the first chunk is waited for
    torch.testing.assert_close(actions[:, s : 2 * s], c[1][:, d : d + s])
    torch.testing.assert_close(actions[:, 2 * s :], c[2][:, d : d + s])
    assert all(g is None or all(x is None for x in g) for g in spy.guidance)  # naive async: no guidance


def test_async_with_the_delay_equal_to_the_steps_per_chunk(debug_policy: LBMPolicy) -> None:
    """d = s: each chunk is launched the step it takes over (the first one's successor at once)."""
    policy = debug_policy.eval()
    s = d = policy.config.n_action_steps
    actions, spy = _run(policy, ExecutionConfig(n_action_steps=s, mode="async", delay_steps=d), steps=3 * s)
    c = [chunk for _, chunk in spy.calls]
    assert len(c) == 4 and [idx for _, idx, _ in spy.windows] == [[k, k] for k in range(4)]
    frames = make_obs([ARM] * 2, t=3 * s, seed=5)
    for k, t in ((1, 0), (2, s), (3, 2 * s)):  # chunk k observed at step t
        torch.testing.assert_close(spy.windows[k][0].state[:, -1], frames.state[:, t])
    torch.testing.assert_close(actions[:, :s], c[0][:, :s])
    torch.testing.assert_close(actions[:, s : 2 * s], c[1][:, d : d + s])
    torch.testing.assert_close(actions[:, 2 * s :], c[2][:, d : d + s])


def test_sync_mode_is_async_with_zero_delay(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    s = policy.config.n_action_steps
    sync, _ = _run(policy, ExecutionConfig(n_action_steps=s), steps=2 * s + 1)
    zero, _ = _run(policy, ExecutionConfig(n_action_steps=s, mode="async", delay_steps=0), steps=2 * s + 1)
    torch.testing.assert_close(sync, zero)


def test_rtc_guides_the_next_chunk_with_the_committed_actions(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    s, d, h = policy.config.n_action_steps, 2, policy.config.horizon
    actions, spy = _run(policy, ExecutionConfig(n_action_steps=s, mode="rtc", delay_steps=d), steps=3 * s)
    assert spy.guidance[0] == [None, None]  # the first chunk has nothing to agree with
    c = [chunk for _, chunk in spy.calls]
    g1, g2 = spy.guidance[1][0], spy.guidance[2][1]
    # chunk 1 was launched at step s - d: its rows line up with chunk 0's rows s - d ..; chunk 2's with chunk 1's s ..
    assert g1.frozen == d and g1.prefix.shape == (h - (s - d), ARM.action_dim)
    torch.testing.assert_close(g1.prefix, c[0][0, s - d :])
    torch.testing.assert_close(g2.prefix, c[1][1, s:])
    torch.testing.assert_close(actions[:, s : 2 * s], c[1][:, d : d + s])


def _seam_jumps(actions: torch.Tensor, chunks: list[torch.Tensor], s: int, d: int) -> torch.Tensor:
    """|executed action at each seam - what the previous chunk had planned for that step| ``[seams, B]``."""
    jumps = []
    for k in range(1, len(chunks)):
        t = k * s  # the first step executed from chunk k
        if t >= actions.shape[1]:
            break
        planned = chunks[k - 1][:, t - (0 if k == 1 else (k - 1) * s - d)]  # previous chunk's row for step t
        jumps.append((actions[:, t] - planned).norm(dim=-1))
    return torch.stack(jumps)


def test_rtc_makes_a_flow_policys_chunks_continuous_at_the_seam(debug_policy: LBMPolicy) -> None:
    """Same frames and noise: RTC's seam jump is a fraction of naive async's (an output that depends on the input)."""
    policy = debug_policy.eval()
    s, d = policy.config.n_action_steps, 2
    naive, spy_n = _run(policy, ExecutionConfig(n_action_steps=s, mode="async", delay_steps=d), steps=3 * s)
    rtc, spy_r = _run(policy, ExecutionConfig(n_action_steps=s, mode="rtc", delay_steps=d), steps=3 * s)
    jn = _seam_jumps(naive, [c for _, c in spy_n.calls], s, d)
    jr = _seam_jumps(rtc, [c for _, c in spy_r.calls], s, d)
    assert float(jn.mean()) > 0.5  # the untrained policy's chunks disagree: the test can fail
    assert float(jr.mean()) < 0.35 * float(jn.mean())


def test_rtc_sampling_reproduces_the_frozen_prefix(debug_policy: LBMPolicy) -> None:
    policy = debug_policy.eval()
    obs = make_obs([ARM] * 2)
    with torch.inference_mode():
        free = policy.predict_chunk(obs)
        prev = policy.predict_chunk(obs, chunk_index=[3, 3])  # another sample: disagrees with ``free``
        d = 2
        guided = policy.predict_chunk(obs, guidance=[Guidance(prev[0, 2:], d), None])
    assert float((free[0, :d] - prev[0, 2 : 2 + d]).abs().max()) > 1.0
    err = (guided[0, :d] - prev[0, 2 : 2 + d]).abs().max()
    assert float(err) < 0.1 * float((free[0, :d] - prev[0, 2 : 2 + d]).abs().max())
    torch.testing.assert_close(guided[1], free[1], rtol=0, atol=0)  # unguided rows: exactly the plain sampler


def test_rtc_weights_follow_the_paper() -> None:
    w = rtc_weights(horizon=8, overlap=6, frozen=2)
    assert w[:2].tolist() == [1.0, 1.0] and w[6:].tolist() == [0.0, 0.0]
    c = torch.tensor([(6 - i) / 5 for i in (2, 3, 4, 5)])
    torch.testing.assert_close(w[2:6], c * torch.expm1(c) / math.expm1(1.0))
    assert all(w[i] > w[i + 1] for i in range(1, 6))


def test_delay_steps_at_the_control_rate() -> None:
    assert [delay_steps(ms, 80.0) for ms in (0, 50, 100, 200)] == [0, 4, 8, 16]
    assert delay_steps(49.0, 10.0) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "sync", "delay_steps": 1}, "delay_steps is for mode async/rtc"),
        ({"mode": "async", "temporal_ensemble": 0.1}, "needs mode 'sync'"),
        ({"mode": "later"}, "execution mode must be one of"),
        ({"n_action_steps": 4, "mode": "async", "delay_steps": 5}, r"d <= n_action_steps=4"),
        ({"n_action_steps": 6, "mode": "async", "delay_steps": 3}, r"s \+ d <= horizon=8"),
        ({"n_action_steps": 9}, "exceeds the policy's horizon=8"),
    ],
)
def test_bad_execution_is_refused_in_one_line(debug_policy: LBMPolicy, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        debug_policy.set_execution(ExecutionConfig(**kwargs))


def test_rtc_needs_the_flow_head() -> None:
    policy = replace(preset("debug"), head="diffusion").build([ARM], {"arm": make_stats(ARM)})
    with pytest.raises(ValueError, match="'rtc' needs the flow head"):
        policy.set_execution(ExecutionConfig(n_action_steps=4, mode="rtc", delay_steps=1))
    randomize_zero_init(policy)


def test_a_reset_discards_a_failed_chunk_still_in_flight() -> None:
    """A remote chunk that failed must not make the slot unresettable (the server's frame connections rely on it)."""
    from openlbm.policies.execution import ChunkExecutor

    executor = ChunkExecutor(2, 8, ExecutionConfig(n_action_steps=4, mode="async", delay_steps=2), {"arm": ARM})
    frames = make_obs([ARM], t=3)
    calls = []

    def predict(window, requests):
        calls.append(len(requests))
        if len(calls) == 1:
            return torch.ones(1, 8, 3)

        def fail():
            raise RuntimeError("server went away")

        return fail

    for t in range(3):  # the second chunk is launched at step s - d = 2 and is not due yet
        executor.step(step_obs(frames, t), predict)
    assert calls == [1, 1] and executor.slots[0].pending is not None
    executor.reset([0])
    assert executor.slots[0].pending is None and executor.slots[0].chunk is None


@pytest.mark.parametrize(
    "execution, n_obs, exact",
    [
        (ExecutionConfig(n_action_steps=4), 2, True),
        (ExecutionConfig(n_action_steps=1), 2, True),
        (ExecutionConfig(n_action_steps=3), 3, True),
        (ExecutionConfig(n_action_steps=6), 1, True),
        (ExecutionConfig(n_action_steps=2, temporal_ensemble=0.1), 2, True),
        (ExecutionConfig(n_action_steps=4, mode="async", delay_steps=2), 2, False),
        (ExecutionConfig(n_action_steps=4, mode="rtc", delay_steps=4), 2, False),
    ],
)
def test_frames_needed_promises_only_frames_never_read(execution: ExecutionConfig, n_obs: int, exact: bool) -> None:
    """A frame announced as not needed is never read (by a window or an episode key), whatever the schedule and
    the resets; under the sync schedule the announcement is exact, so with long chunks most frames go unrendered."""
    from openlbm.policies.execution import ChunkExecutor

    executor = ChunkExecutor(n_obs, 8, execution, {"arm": ARM})
    gen = torch.Generator().manual_seed(0)
    frames = make_obs([ARM] * 3, t=1)
    read: set[int] = set()

    def predict(window: Observation, requests: list) -> torch.Tensor:
        read.update(int(v) for v in window.state[..., 0].flatten())  # [n, T] frame ids
        return torch.randn(len(requests), 8, ARM.action_dim, generator=gen)

    announced: dict[int, bool] = {}
    fresh = [True] * 3
    # frames whose slot restarted, or the run ended, before they could be read: announced, rightly, but unread
    cut = {1000 * i + t for i in range(3) for t in range(60 - n_obs, 60)}
    for t in range(60):
        needed = executor.frames_needed() if t else [True] * 3
        resets = [i for i in range(3) if t and torch.rand(1, generator=gen).item() < 0.04]
        executor.reset(resets)
        state = frames.state.clone()
        for i in range(3):
            fid = 1000 * i + t
            state[i, 0, 0] = fid
            # a reset slot's first frame is announced by the reset, not by the schedule that preceded it
            announced[fid] = needed[i] or i in resets
            if i in resets:
                cut.update(1000 * i + t - k for k in range(1, n_obs + 1))
            if i in resets or fresh[i]:
                read.add(fid)  # the episode key reads the first frame after a reset
                fresh[i] = False
        executor.step(Observation(images=frames.images, state=state, instruction=frames.instruction,
                                  embodiment=frames.embodiment), predict)
    assert all(announced[f] for f in read), sorted(f for f in read if not announced[f])
    if exact:
        assert {f for f, need in announced.items() if need} - cut == read - cut
    if execution.n_action_steps >= 4 and exact:
        assert sum(announced.values()) < 0.7 * len(announced)
