"""Normalization statistics of a mixture: exact state/action stats and pixel histograms over every source mapped
onto one embodiment (the sources of :mod:`openlbm.data.mixture`, possibly restricted to some episodes)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from openlbm.data import layout as L
from openlbm.data.stats import (
    IMAGE_FRAMES_PER_EPISODE,
    ChunkSource,
    ImageHistogram,
    array_source,
    dataset_image_histograms,
    episode_image_histogram,
    exact_stats,
    parquet_column,
)
from openlbm.types import ACTION_KEY, STATE_KEY

_SHARED: dict[str, dict[str, dict[str, list]]] | None = None


@contextlib.contextmanager
def shared(memo: dict[str, dict[str, dict[str, list]]]) -> Iterator[None]:
    """Within this block :func:`merged_stats` returns the stats ``memo`` holds for the same sources and adds the
    ones it computes: a distributed job computes them once (rank 0) and hands ``memo`` to the other ranks."""
    global _SHARED
    before, _SHARED = _SHARED, memo
    try:
        yield
    finally:
        _SHARED = before


def _key(parts: Sequence[Any]) -> str:
    """What the stats of ``parts`` depend on: each source's dataset, episodes, and the keys mapped onto the
    embodiment."""
    return json.dumps([[str(p.meta.root), p.source.episodes, p.emb.name, p.state_key, p.action_key,
                        sorted(p.cams.items())] for p in parts], default=str)


def merged_stats(parts: Sequence[Any]) -> dict[str, dict[str, list]]:
    """:func:`compute_merged_stats`, or the copy a :func:`shared` block already holds."""
    if _SHARED is None:
        return compute_merged_stats(parts)
    key = _key(parts)
    if key not in _SHARED:
        _SHARED[key] = compute_merged_stats(parts)
    return _SHARED[key]


def compute_merged_stats(parts: Sequence[Any]) -> dict[str, dict[str, list]]:
    """Exact stats of the embodiment keys over the union of the sources mapped onto one embodiment.

    State/action: :func:`~openlbm.data.stats.exact_stats` over every source's column (streamed, bounded memory),
    so quantiles equal ``np.quantile`` of the concatenated data. Cameras: the sources' pixel histograms added up
    (stored beside each dataset's stats, decoded from its videos if absent)."""
    out: dict[str, dict[str, list]] = {}
    for dst in (STATE_KEY, ACTION_KEY):
        cols = []
        for p in parts:
            src = p.state_key if dst == STATE_KEY else p.action_key
            if src is not None:
                cols.append(_column(p, src))
        if cols:
            out[dst] = exact_stats(cols)
    hists = [_image_histograms(p) if p.cams else {} for p in parts]
    for dst in parts[0].cams if parts else ():
        total = ImageHistogram()
        for p, h in zip(parts, hists, strict=True):
            total = total.merge(h[p.cams[dst]])
        out[dst] = total.stats()
    return out


def _column(p: Any, src: str) -> ChunkSource:
    """Column ``src`` of a source: streamed from its parquet files, or only its selected episodes' rows."""
    if p.source.episodes is None:
        return parquet_column(L.iter_data_files(p.meta.root, p.meta.episodes, p.meta.data_path), src, p.meta.features[src])
    return array_source(p.ds.store.get(src, p.ds._indices))  # the selected episodes' frames, in memory


def _image_histograms(p: Any) -> dict[str, ImageHistogram]:
    """Per-camera pixel histograms of a source: the dataset's, or decoded from its selected episodes only."""
    if p.source.episodes is None:
        return dataset_image_histograms(p.meta, IMAGE_FRAMES_PER_EPISODE)
    from openlbm.data.video import ReaderPool

    m, pool = p.meta, ReaderPool(tolerance_s=p.meta.tolerance_s)
    try:
        out = {}
        for cam in p.cams.values():
            hist = ImageHistogram()
            for ep in p.source.episodes:
                hist = hist.merge(episode_image_histogram(m.video_file(ep, cam), m.video_time(ep, cam, 0), int(m.ep_len[ep]),
                                                          m.fps, m.tolerance_s, IMAGE_FRAMES_PER_EPISODE, pool))
            out[cam] = hist
        return out
    finally:
        pool.close()
