"""The counter-based per-sample generator: reproducible, independent of how a batch is split, well distributed,
and built without a ``torch.Generator`` per sample."""

from __future__ import annotations

import pytest
import torch

from openlbm.models.rng import SampleRNG, counter_normal, counter_uniform


def _draws(seeds: list[int]) -> list[torch.Tensor]:
    rng = SampleRNG(len(seeds), torch.device("cpu"), torch.tensor(seeds))
    return [rng.rand((2 * len(seeds), 3)), rng.randn((len(seeds), 4, 5)), rng.rand((len(seeds),))]


def test_a_sample_gets_the_same_numbers_however_the_batch_is_split() -> None:
    whole = _draws([11, 12, 13])
    parts = [_draws([11]), _draws([12, 13])]
    for k in range(3):
        rows = whole[k].shape[0] // 3
        torch.testing.assert_close(whole[k][:rows], parts[0][k], rtol=0, atol=0)
        torch.testing.assert_close(whole[k][rows:], parts[1][k], rtol=0, atol=0)


def test_subsets_continue_the_draw_count_of_their_batch() -> None:
    rng = SampleRNG(3, torch.device("cpu"), torch.tensor([11, 12, 13]))
    first, second = rng.subset(torch.tensor([0, 2])), rng.subset(torch.tensor([1]))
    a, b = first.rand((2, 3)), second.rand((1, 3))
    noise = rng.randn((3, 4, 5))  # after both subsets' draws, as a batch of one embodiment would draw it
    alone = SampleRNG(1, torch.device("cpu"), torch.tensor([12]))
    torch.testing.assert_close(b, alone.rand((1, 3)), rtol=0, atol=0)
    torch.testing.assert_close(noise[1:2], alone.randn((1, 4, 5)), rtol=0, atol=0)
    torch.testing.assert_close(a[1:], SampleRNG(1, torch.device("cpu"), torch.tensor([13])).rand((1, 3)), rtol=0, atol=0)


def test_streams_and_seeds_differ_and_repeat() -> None:
    seeds = torch.tensor([5, 6, 2**62 + 5])
    u = counter_uniform(seeds, 0, 64)
    assert torch.equal(u, counter_uniform(seeds, 0, 64))
    assert not torch.equal(u, counter_uniform(seeds, 1, 64))
    assert len({tuple(r.tolist()) for r in u}) == 3  # seeds differing only in their high bits differ too


def test_the_numbers_are_well_distributed() -> None:
    seeds = torch.arange(1000, dtype=torch.int64) * 7919
    u = counter_uniform(seeds, 3, 200)  # 200k uniforms
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    assert float((counts / u.numel() - 0.05).abs().max()) < 0.003
    z = counter_normal(seeds, 4, 200)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(z.std()) == pytest.approx(1.0, abs=0.01)
    flat = z.flatten()
    assert abs(float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1])) < 0.01  # neighbours independent
    rows = torch.corrcoef(z[:50])  # samples with neighbouring seeds: independent rows
    assert float((rows - torch.eye(50)).abs().max()) < 0.35


def test_no_generator_object_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a torch.Generator was built")

    monkeypatch.setattr(torch, "Generator", refuse)
    rng = SampleRNG(256, torch.device("cpu"), torch.arange(256))
    assert rng.randn((256, 16, 7)).shape == (256, 16, 7)
