"""Normalization stats computed once and handed over: a ``shared`` memo (what rank 0 gives the other ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openlbm.data import mixture_stats
from openlbm.data.mixture import DataConfig, SourceConfig


def _build(root: Path):  # noqa: ANN202
    return DataConfig(sources=(SourceConfig(root),)).build(None, n_obs_steps=2, horizon=4, batch_size=2, seed=0)


def test_a_shared_memo_is_filled_once_and_reused(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo: dict = {}
    with mixture_stats.shared(memo):
        first = _build(tiny).stats  # computes, fills the memo
    assert len(memo) == 1

    def refuse(parts):  # noqa: ANN001, ANN202
        raise AssertionError("stats recomputed")

    monkeypatch.setattr(mixture_stats, "compute_merged_stats", refuse)
    handed = dict(memo)  # what another rank receives
    with mixture_stats.shared(handed):
        assert _build(tiny).stats == first
    with pytest.raises(AssertionError, match="recomputed"):  # outside a shared block: computed as before
        _build(tiny)
