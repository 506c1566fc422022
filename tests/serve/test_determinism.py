"""``LBMPolicy.noise_seed``: fresh noise per chunk keyed by (seed, window, chunk index), so every client (and every
env of a batch) gets the answer it would get alone, and evaluation is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openlbm.types import EnvFrame, Observation, observation_from_frames


def _frames(policy, seeds: list[int]) -> list[EnvFrame]:
    emb = policy.embodiments[0]
    out = []
    for s in seeds:
        rng = np.random.default_rng(s)
        images = {c: rng.integers(0, 256, (*emb.image_size, 3), dtype=np.uint8) for c in emb.cameras}
        out.append(EnvFrame(images, rng.normal(size=emb.state_dim).astype(np.float32), f"instruction {s}"))
    return out


def _window(policy, seeds: list[int]) -> Observation:
    """A full ``T = n_obs_steps`` window per sample (frame repeated, first ones flagged as padding)."""
    obs = observation_from_frames(_frames(policy, seeds), policy.embodiments[0].name)
    t = policy.config.n_obs_steps
    pad = torch.zeros(len(seeds), t, dtype=torch.bool)
    pad[:, :-1] = True
    return Observation(
        images={k: v.expand(-1, t, -1, -1, -1).contiguous() for k, v in obs.images.items()},  # [B, 1, ...] -> [B, T, ...]
        state=obs.state.expand(-1, t, -1).contiguous(),  # [B, 1, S] -> [B, T, S]
        instruction=obs.instruction,
        embodiment=obs.embodiment,
        obs_is_pad=pad,
    )


@pytest.fixture
def seeded(policy):
    old = policy.noise_seed
    policy.noise_seed = 7
    yield policy
    policy.noise_seed = old


def test_a_chunk_does_not_depend_on_batch_size_position_or_global_rng(seeded) -> None:
    seeds = [3, 4, 5]
    torch.manual_seed(0)
    batched = seeded.predict_chunk(_window(seeded, seeds))  # [3, H, A]
    torch.manual_seed(1)  # the global RNG must not matter
    alone = torch.cat([seeded.predict_chunk(_window(seeded, [s])) for s in seeds])
    swapped = seeded.predict_chunk(_window(seeded, seeds[::-1])).flip(0)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, swapped, rtol=1e-5, atol=1e-6)
    seeded.noise_seed = 8  # a different seed is a different (but again fixed) sample
    assert not torch.allclose(seeded.predict_chunk(_window(seeded, [3])), alone[:1], atol=1e-3)


def test_each_chunk_gets_fresh_noise(seeded) -> None:
    """Not one fixed noise tensor: another episode or another chunk of the same episode draws new noise; the same
    (episode key, chunk index) draws the same noise whatever the window holds now."""
    obs = _window(seeded, [3, 4])
    first = seeded.initial_noise(obs)  # no keys: two episode starts, keyed by their frames
    assert not torch.allclose(first[0], first[1])
    torch.testing.assert_close(first, seeded.initial_noise(obs), rtol=0, atol=0)  # reproducible
    later = seeded.initial_noise(obs, [1, 5], episode_key=[11, 12])
    again = seeded.initial_noise(_window(seeded, [6, 7]), [1, 5], episode_key=[11, 12])
    torch.testing.assert_close(later, again, rtol=0, atol=0)
    assert not torch.allclose(later[0], seeded.initial_noise(obs, [2, 5], episode_key=[11, 12])[0])
    assert abs(float(first.std()) - 1.0) < 0.3  # a standard normal draw


def test_select_action_of_a_batch_equals_each_env_run_alone(seeded) -> None:
    seeded.reset()
    steps = seeded.config.n_action_steps + 2  # crosses a chunk boundary
    batched = []
    for t in range(steps):
        obs = observation_from_frames(_frames(seeded, [100 * t, 100 * t + 1]), seeded.embodiments[0].name)
        batched.append(seeded.select_action(obs))
    for slot in range(2):
        seeded.reset()
        for t in range(steps):
            obs = observation_from_frames(_frames(seeded, [100 * t + slot]), seeded.embodiments[0].name)
            torch.testing.assert_close(seeded.select_action(obs)[0], batched[t][slot], rtol=1e-5, atol=1e-6)
    seeded.reset()


def test_without_a_seed_sampling_uses_the_global_rng_as_before(policy) -> None:
    old = policy.noise_seed
    policy.noise_seed = None
    try:
        obs = _window(policy, [9])
        torch.manual_seed(5)
        a = policy.predict_chunk(obs)
        torch.manual_seed(5)
        b = policy.predict_chunk(obs)
        c = policy.predict_chunk(obs)
    finally:
        policy.noise_seed = old
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_an_explicit_generator_still_wins_over_noise_seed(seeded) -> None:
    obs = _window(seeded, [11])
    a = seeded.predict_chunk(obs, generator=torch.Generator().manual_seed(123))
    b = seeded.predict_chunk(obs, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, seeded.predict_chunk(obs), atol=1e-3)
