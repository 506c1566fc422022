"""Statistics are exact: every quantile equals ``numpy.quantile`` of the concatenated data, with bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import CAM, make_dataset, make_variant

from openlbm.data.stats import (
    IMAGE_FRAMES_PER_EPISODE,
    QUANTILES,
    ImageHistogram,
    compute_stats,
    episode_stats,
    exact_stats,
    image_frame_indices,
    merge_moments,
    parquet_column,
)
from openlbm.types import FeatureSpec


def _assert_exact(st: dict, x: np.ndarray) -> None:
    """Quantiles/min/max bit-identical to numpy on ``x`` ([N, D] float64); moments to float rounding."""
    for name, q in QUANTILES.items():
        np.testing.assert_array_equal(np.asarray(st[name]).reshape(-1), np.quantile(x, q, axis=0), err_msg=name)
    np.testing.assert_array_equal(np.asarray(st["min"]).reshape(-1), x.min(0))
    np.testing.assert_array_equal(np.asarray(st["max"]).reshape(-1), x.max(0))
    np.testing.assert_allclose(np.asarray(st["mean"]).reshape(-1), x.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(st["std"]).reshape(-1), x.std(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("bits", "collect"), [(12, 8192), (4, 1), (8, 16)])
def test_exact_stats_equal_numpy_on_hard_columns(bits: int, collect: int) -> None:
    rng = np.random.default_rng(0)
    n = 5003
    x = np.stack([
        rng.normal(0, 1, n),                                # smooth
        np.round(rng.normal(0, 2, n)),                      # heavy ties
        np.full(n, 7.25),                                   # constant
        rng.choice([-0.0, 0.0, 1.0], n),                    # signed zeros and a binary gripper
        rng.standard_cauchy(n) * 1e30,                      # huge range, both signs
        np.where(rng.random(n) < 0.02, 40.0, rng.random(n)),  # 2% outliers at the top
    ], 1).astype(np.float32)
    # chunks of uneven sizes from three sources: the selection passes re-read them
    cuts = [0, 1, 700, 2000, 2001, 4100, n]
    sources = [lambda a=a, b=b: [x[a:b]] for a, b in zip(cuts[:2], cuts[1:3], strict=True)]
    sources.append(lambda: [x[cuts[i]:cuts[i + 1]] for i in range(2, len(cuts) - 1)])
    st = exact_stats(sources, bits=bits, collect=collect)
    _assert_exact(st, x.astype(np.float64))
    assert st["count"] == [n]


def test_episode_stats_and_merged_moments() -> None:
    rng = np.random.default_rng(1)
    eps = [rng.normal(i, i + 1, (n, 2)).astype(np.float32) for i, n in enumerate((10, 50, 7))]
    for e in eps:
        _assert_exact(episode_stats({"a": e})["a"], e.astype(np.float64))
    agg = merge_moments([episode_stats({"a": e}) for e in eps])["a"]
    x = np.concatenate(eps).astype(np.float64)
    np.testing.assert_allclose(agg["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(agg["std"], x.std(0), rtol=1e-9)
    np.testing.assert_allclose(agg["min"], x.min(0))
    assert agg["count"] == [67] and "q99" not in agg  # quantiles cannot be merged from episode rows


def _write_column(path: Path, x: np.ndarray) -> None:
    flat = pa.array(x.reshape(-1), pa.float32())  # [N, D] -> [N*D]
    table = pa.table({"action": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})
    pq.write_table(table, path)  # one row group, as the dataset writer makes them


def _peak_bytes(path: Path, spec: FeatureSpec) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        # a small selection state (<= 4 dims x 10 brackets x max(3 x 2**8 bin counters, 512 keys) x 8 B = 240 KiB)
        # so that the chunk pipeline dominates the peak
        st = exact_stats([parquet_column([path], "action", spec, chunk_rows=4096)], bits=8, collect=512)
        return tracemalloc.get_traced_memory()[1], st
    finally:
        tracemalloc.stop()


def _arrow_peak_bytes(path: Path, spec: FeatureSpec) -> int:
    """Peak growth of pyarrow's memory pool (invisible to tracemalloc) over one chunked pass of the column."""
    base = peak = pa.total_allocated_bytes()
    for _ in parquet_column([path], "action", spec, chunk_rows=4096)():
        peak = max(peak, pa.total_allocated_bytes())
    return peak - base


def test_quantile_memory_does_not_grow_with_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    spec = FeatureSpec("float32", (4,))
    data = {}
    for n in (20_000, 200_000):
        data[n] = rng.normal(0, 1, (n, 4)).astype(np.float32)
        data[n][:, 1] = np.round(data[n][:, 1] * 3)  # ties too
        _write_column(tmp_path / f"{n}.parquet", data[n])
    _peak_bytes(tmp_path / "20000.parquet", spec)  # warm-up: first-use allocations of pyarrow/numpy are not data
    peaks = []
    for n, x in data.items():
        peak, st = _peak_bytes(tmp_path / f"{n}.parquet", spec)
        _assert_exact(st, x.astype(np.float64))
        peaks.append(peak)
    # 10x the data, chunked reads: the peak may move only within the selection state's fixed bound; loading the
    # column whole would add 200k x 4 float64 = 6.4 MB
    assert peaks[1] < peaks[0] + 240 * 1024, peaks
    assert peaks[1] < 200_000 * 4 * 8 / 3, peaks
    # Arrow's side of the reads: a few pages (and the ~1 MB dictionary page), not the column; 1M rows = 16 MB
    _write_column(tmp_path / "big.parquet", rng.normal(0, 1, (1_000_000, 4)).astype(np.float32))
    arrow = [_arrow_peak_bytes(tmp_path / f, spec) for f in ("200000.parquet", "big.parquet")]
    assert arrow[1] < arrow[0] + 2**20 and arrow[1] < 1_000_000 * 4 * 4 / 4, arrow


def test_image_histogram_is_numpy_on_the_pixels() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (4, 6, 8, 3), np.uint8), (rng.random((9, 6, 8, 3)) * 40).astype(np.uint8)
    ha, hb = ImageHistogram(), ImageHistogram()
    ha.add(a, 4)
    hb.add(b, 30)
    st = ha.merge(hb).stats()
    _assert_exact(st, np.concatenate([a, b]).reshape(-1, 3) / 255.0)
    assert np.asarray(st["mean"]).shape == (3, 1, 1) and st["count"] == [34]
    assert image_frame_indices(5, 20) == [0, 1, 2, 3, 4] and image_frame_indices(100, 3) == [0, 50, 99]


def test_dataset_stats_are_exact_written_and_recomputed(tiny: Path) -> None:
    from openlbm.data.dataset import RobotDataset

    ds = RobotDataset(tiny)
    eps = [ds.get_episode(e) for e in range(3)]
    written = json.loads((tiny / "meta/stats.json").read_text())
    recomputed = compute_stats(tiny)
    for stats in (written, recomputed):
        for key in ("observation.state", "action", "timestamp"):
            x = np.concatenate([e[key] for e in eps]).astype(np.float64).reshape(19, -1)
            _assert_exact(stats[key], x)
            assert stats[key]["count"] == [19]
    # images: every pixel of the stated frame sample, as decoded from the videos
    pixels = np.concatenate([e[CAM][image_frame_indices(len(e[CAM]), IMAGE_FRAMES_PER_EPISODE)] for e in eps])
    _assert_exact(recomputed[CAM], pixels.reshape(-1, 3) / 255.0)
    assert recomputed[CAM]["count"] == [19]


def test_action_less_dataset_stats_have_no_action_and_the_same_rest(tiny: Path, tmp_path: Path) -> None:
    full = compute_stats(tiny)
    for state in (True, False):
        video = make_variant(tmp_path / f"video_{state}", action=False, state=state)
        stats = compute_stats(video, write=True)
        assert "action" not in stats and ("observation.state" in stats) == state
        for key in ("timestamp", CAM, *(["observation.state"] if state else [])):
            assert stats[key] == full[key], key  # the same frames: the same exact numbers
        assert json.loads((video / "meta/stats.json").read_text()) == stats


def test_writer_and_lbm_data_stats_give_the_same_image_stats(tmp_path: Path) -> None:
    # sharp pattern: lossy coding changes pixels, so stats of the original frames would differ from decoded ones
    from data_helpers import pattern

    root = make_dataset(tmp_path / "p", (30, 7), image=pattern)
    written = json.loads((root / "meta/stats.json").read_text())
    assert written == compute_stats(root)  # one computation: identical numbers, images included


def test_nan_in_a_column_is_a_clear_error(tmp_path: Path) -> None:
    from openlbm.data.layout import DatasetError

    x = np.ones((10, 4), np.float32)
    x[3, 2] = np.nan
    _write_column(tmp_path / "bad.parquet", x)
    with pytest.raises(DatasetError, match=r"bad.parquet, field=action: contains NaN"):
        exact_stats([parquet_column([tmp_path / "bad.parquet"], "action", FeatureSpec("float32", (4,)))])
    with pytest.raises(ValueError, match="NaN in the data"):
        exact_stats([lambda: [x]])


def test_stats_while_recording_and_after_reopen(tmp_path: Path) -> None:
    from openlbm.data.writer import DatasetWriter

    root = make_dataset(tmp_path / "r", (5, 8), finalize=False)
    during = json.loads((root / "meta/stats.json").read_text())
    exact = compute_stats(root)
    # exact moments and image stats after each save_episode; low-dim quantiles wait for finalize/open
    assert "q99" not in during["action"] and during[CAM] == exact[CAM]
    np.testing.assert_allclose(during["action"]["mean"], exact["action"]["mean"], rtol=1e-9)
    DatasetWriter.open(root)  # e.g. after a crash: derived files are rewritten, complete and exact
    assert json.loads((root / "meta/stats.json").read_text()) == exact


def test_lbm_data_stats_cli(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from openlbm.cli import main
    from openlbm.data.writer import DatasetWriter

    (tiny / "meta/image_histograms.json").unlink()
    assert main(["data", "stats", str(tiny)]) == 0
    assert json.loads((tiny / "meta/stats.json").read_text()) == compute_stats(tiny)
    assert (tiny / "meta/image_histograms.json").exists()
    empty = tmp_path / "empty"
    DatasetWriter.create(empty, {"action": FeatureSpec("float32", (2,))}, fps=10)
    capsys.readouterr()
    assert main(["data", "stats", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no episodes" in err
