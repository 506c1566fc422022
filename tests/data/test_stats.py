"""Streaming statistics against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from openlbm.data.stats import RunningStats, aggregate_stats, compute_stats, episode_stats


def test_running_stats_match_numpy_with_widening_ranges() -> None:
    rng = np.random.default_rng(0)
    # batches whose ranges grow in both directions force the histogram to re-bin several times
    batches = [rng.normal(0, 1, (500, 3)), rng.normal(5, 0.1, (300, 3)), rng.uniform(-40, 2, (700, 3)),
               rng.exponential(3, (400, 3)) + 50]
    acc = RunningStats(bins=2048)
    for b in batches:
        acc.update(b)
    x = np.concatenate(batches)
    out = acc.result()
    np.testing.assert_allclose(out["mean"], x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(out["std"], x.std(0), rtol=1e-10)
    np.testing.assert_allclose(out["min"], x.min(0))
    np.testing.assert_allclose(out["max"], x.max(0))
    assert out["count"] == [len(x)]
    bin_width = (x.max(0) - x.min(0)) / 2048 * 4  # after doublings a bin is at most ~4x the ideal width
    for name, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):
        assert np.all(np.abs(np.asarray(out[name]) - np.quantile(x, q, axis=0)) <= bin_width + 1e-9), name
    assert acc.hist.size == 3 * 2048  # bounded memory, independent of the number of samples


def test_aggregate_of_episode_stats_is_exact_for_moments() -> None:
    rng = np.random.default_rng(1)
    eps = [rng.normal(i, i + 1, (n, 2)).astype(np.float32) for i, n in enumerate((10, 50, 7))]
    agg = aggregate_stats([episode_stats({"a": e}, ()) for e in eps])["a"]
    x = np.concatenate(eps).astype(np.float64)
    np.testing.assert_allclose(agg["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(agg["std"], x.std(0), rtol=1e-9)
    np.testing.assert_allclose(agg["min"], x.min(0))
    assert agg["count"] == [67]


def test_dataset_stats_match_numpy(tiny: Path) -> None:
    from openlbm.data.dataset import RobotDataset

    ds = RobotDataset(tiny)
    state = np.concatenate([ds.get_episode(e, decode_video=False)["observation.state"] for e in range(3)]).astype(np.float64)
    written = json.loads((tiny / "meta/stats.json").read_text())
    recomputed = compute_stats(tiny)
    for stats in (written, recomputed):
        st = stats["observation.state"]
        np.testing.assert_allclose(st["mean"], state.mean(0), rtol=1e-6)
        np.testing.assert_allclose(st["std"], state.std(0), rtol=1e-6)
        for name, q in (("q01", 0.01), ("q99", 0.99)):
            # 19 samples: any value between the neighbouring order statistics is a valid quantile estimate
            lo, hi = np.quantile(state, q, axis=0, method="lower"), np.quantile(state, q, axis=0, method="higher")
            tol = 0.01 * np.ptp(state, 0)
            assert np.all((lo - tol <= st[name]) & (st[name] <= hi + tol)), (name, st[name], lo, hi)
        assert st["count"] == [19]
    img = recomputed["observation.images.cam"]
    assert np.asarray(img["mean"]).shape == (3, 1, 1) and img["count"] == [19]
    frames = np.concatenate([ds.get_episode(e)["observation.images.cam"] for e in range(3)]) / 255.0
    np.testing.assert_allclose(np.asarray(img["mean"]).reshape(3), frames.reshape(-1, 3).mean(0), atol=0.02)
    np.testing.assert_allclose(np.asarray(written["observation.images.cam"]["std"]).reshape(3),
                               frames.reshape(-1, 3).std(0), atol=0.02)


def test_running_stats_rejects_empty_result() -> None:
    with pytest.raises(ValueError, match="before any update"):
        RunningStats().result()
