"""``validate_dataset`` catches each planted defect; the reader fails with errors naming file/episode/field."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import CAM, FIXTURES, edit_episodes, make_dataset, make_variant, set_vector_value, smooth

from openlbm.cli import main
from openlbm.data.dataset import RobotDataset
from openlbm.data.layout import DatasetError
from openlbm.data.validate import require_valid, validate_dataset
from openlbm.data.video import encode_video

DATA = "data/chunk-000/file-001.parquet"  # episode 1 (unfinalized: one file per episode)
VIDEO = f"videos/{CAM}/chunk-000/file-001.mp4"
EPISODES = "meta/episodes/chunk-000/file-001.parquet"
JOINED_VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"  # finalized: every episode in one file
JOINED_EPISODES = "meta/episodes/chunk-000/file-000.parquet"
INFO, STATS = "meta/info.json", "meta/stats.json"


def _rewrite(root: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    path = root / DATA
    t = pq.read_table(path)
    pq.write_table(fn(t).replace_schema_metadata(t.schema.metadata), path)


def _set(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, arr)


def _float64(t: pa.Table) -> pa.Table:
    action = np.stack(t.column("action").to_pylist()).astype(np.float64)
    return _set(t, "action", pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 2))


def _column(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """Plant: replace the scalar column ``name`` of episode 1's parquet by ``fn(column)``."""
    return lambda r: _rewrite(r, lambda t: _set(t, name, pa.array(fn(t.column(name).to_numpy()))))


def _json(rel: str, fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        d = json.loads((root / rel).read_text())
        fn(d)
        (root / rel).write_text(json.dumps(d))
    return plant


def _empty_episode(root: Path) -> None:
    """Episode 1 keeps its files but holds no frames, with consistent offsets: only its length is wrong."""
    pq.write_table(pq.read_table(root / DATA).slice(0, 0), root / DATA)
    edit_episodes(root, 1, EPISODES, length=0, dataset_to_index=5, **{f"videos/{CAM}/to_timestamp": 0.0})
    edit_episodes(root, 2, "meta/episodes/chunk-000/file-002.parquet", dataset_from_index=5, dataset_to_index=11)
    _json(INFO, lambda i: i.update(total_frames=11))(root)
    _rewrite_rows(root, "data/chunk-000/file-002.parquet", 5)


def _rewrite_rows(root: Path, rel: str, first: int) -> None:
    t = pq.read_table(root / rel)
    index = pa.array(np.arange(first, first + t.num_rows, dtype=np.int64))
    pq.write_table(_set(t, "index", index).replace_schema_metadata(t.schema.metadata), root / rel)


def _overlap(root: Path) -> None:
    """Episode 2's video range starts 0.3 s early, inside episode 1's frames of the same file."""
    row = next(r for r in pq.read_table(root / JOINED_EPISODES).to_pylist() if r["episode_index"] == 2)
    t0, t1 = row[f"videos/{CAM}/from_timestamp"], row[f"videos/{CAM}/to_timestamp"]
    edit_episodes(root, 2, JOINED_EPISODES, **{f"videos/{CAM}/from_timestamp": t0 - 0.3,
                                               f"videos/{CAM}/to_timestamp": t1 - 0.3})


@dataclass(frozen=True)
class Defect:
    """One planted defect: what ``validate_dataset`` must say, and where."""

    plant: Callable[[Path], None]
    message: str
    """Text the problem's message must contain."""
    file: str
    """The file the problem must name (relative to the dataset root)."""
    field: str | None
    """The feature or column it must name (``None``: a whole-file problem)."""
    finalized: bool = False
    """Plant into a finalized dataset (episodes joined into one file) instead of one file per episode."""


DEFECTS: dict[str, Defect] = {
    # files
    "truncated mp4": Defect(lambda r: (r / VIDEO).write_bytes((r / VIDEO).read_bytes()[:500]), "unreadable video",
                            VIDEO, CAM),
    "missing video": Defect(lambda r: (r / VIDEO).unlink(), "video file missing", VIDEO, CAM),
    "missing parquet": Defect(lambda r: (r / DATA).unlink(), "data parquet missing", DATA, None),
    "truncated parquet": Defect(lambda r: (r / DATA).write_bytes((r / DATA).read_bytes()[:300]),
                                "unreadable parquet", DATA, None),
    "missing stats": Defect(lambda r: (r / STATS).unlink(), "stats.json missing", STATS, None),
    # video streams and ranges
    "frame-count mismatch": Defect(lambda r: encode_video(r / VIDEO, np.stack([smooth(1, t) for t in range(6)]), 10.0),
                                   "6 video frames", VIDEO, CAM),
    "fps mismatch": Defect(lambda r: encode_video(r / VIDEO, np.stack([smooth(1, t) for t in range(8)]), 20.0),
                           "stream fps 20.000 != dataset fps 10", VIDEO, CAM),
    "resolution mismatch": Defect(lambda r: encode_video(r / VIDEO, np.stack([smooth(1, t, 16, 16) for t in range(8)]),
                                                         10.0), "frames are 16x16", VIDEO, CAM),
    "overlapping video ranges": Defect(_overlap, "overlaps episode 1's", JOINED_VIDEO, CAM, finalized=True),
    # columns
    "NaN": Defect(lambda r: set_vector_value(r, DATA, "observation.state", 2, 1, np.nan), "NaN/inf", DATA,
                  "observation.state"),
    "state of 1e30": Defect(lambda r: set_vector_value(r, DATA, "observation.state", 3, 2, 1e30),
                            "exceeds the bound 1e+06", DATA, "observation.state"),
    "wrong dtype": Defect(lambda r: _rewrite(r, _float64), "declares float32", DATA, "action"),
    "unknown key": Defect(lambda r: _rewrite(r, lambda t: t.append_column("gripper.force",
                                                                          pa.array(np.zeros(t.num_rows)))),
                          "unknown feature key", DATA, "gripper.force"),
    "feature missing": Defect(lambda r: _rewrite(r, lambda t: t.drop_columns(["action"])),
                              "declared feature missing from data", DATA, "action"),
    "frame_index gap": Defect(_column("frame_index", lambda c: np.where(c == 3, 4, c)),
                              "frame_index is not 0..length-1", DATA, "frame_index"),
    "timestamp off": Defect(_column("timestamp", lambda c: c + np.float32(0.05)), "!= frame/fps", DATA, "timestamp"),
    "task_index out of range": Defect(_column("task_index", lambda c: c + 7), "task_index outside 0..1", DATA,
                                      "task_index"),
    "rows missing": Defect(lambda r: _rewrite(r, lambda t: t.slice(0, 7)), "7 data rows but episode length 8", DATA,
                           "length"),
    "silent value corruption": Defect(lambda r: set_vector_value(r, DATA, "action", 6, 1, -3e-13),
                                      "content changed since it was written", DATA, None),
    # metadata
    "zero-length episode": Defect(_empty_episode, "episode has 0 frames", "meta/episodes", "length"),
    "offsets off": Defect(lambda r: edit_episodes(r, 1, EPISODES, dataset_from_index=4, dataset_to_index=12),
                          "!= expected [5, 13)", "meta/episodes", "dataset_from_index"),
    "total_frames off": Defect(_json(INFO, lambda i: i.update(total_frames=20)), "total_frames 20 != 19", INFO,
                               "total_frames"),
    "dataset fps not a number": Defect(_json(INFO, lambda i: i.update(fps="ten")), "field=fps: expected a number",
                                       INFO, None),
    "dataset fps 0": Defect(_json(INFO, lambda i: i.update(fps=0)), "fps must be > 0", INFO, "fps"),
    "bad max_abs": Defect(_json(INFO, lambda i: i["features"]["action"].update(max_abs=-1)),
                          "max_abs must be a positive number", INFO, "action"),
    "stats NaN": Defect(_json(STATS, lambda s: s["observation.state"].update(mean=[float("nan")] * 3)),
                        "mean contains NaN/inf", STATS, "observation.state"),
    "stats shape": Defect(_json(STATS, lambda s: s["action"].update(std=[1.0])), "std has shape (1,), expected (2,)",
                          STATS, "action"),
}
"""The planted-defect set: each a real defect of a dataset the real writer made, each its own case."""


def _planted(tmp_path: Path, name: str) -> tuple[Path, Defect]:
    d = DEFECTS[name]
    root = make_dataset(tmp_path / "d", (5, 8, 6), finalize=d.finalized)
    assert validate_dataset(root) == []
    d.plant(root)
    return root, d


@pytest.mark.parametrize("name", list(DEFECTS))
def test_validate_catches_planted_defect(tmp_path: Path, name: str) -> None:
    root, d = _planted(tmp_path, name)
    problems = validate_dataset(root)
    hits = [p for p in problems if d.message in p.message]
    assert hits, f"{name}: not reported; got {[str(p) for p in problems]}"
    assert any((p.file, p.field) == (d.file, d.field) for p in hits), [str(p) for p in hits]
    assert main(["data", "validate", str(root)]) == 1


@pytest.mark.parametrize("name", [n for n in DEFECTS if n != "silent value corruption"])
def test_require_valid_refuses_planted_defect_without_reading_packets(tmp_path: Path, name: str) -> None:
    """What `lbm train` runs before step 1: the same checks, each video's frames counted from its header, naming
    the dataset, the file and the field in one line. (A corrupt *video* that still probes is the reader's to
    name; video hashes are `lbm data validate`'s: see test_integrity.)"""
    root, d = _planted(tmp_path, name)
    with pytest.raises(DatasetError) as e:
        require_valid([root])
    msg = str(e.value)
    assert "\n" not in msg and d.message in msg and str(root) in msg and d.file in msg, msg
    assert d.field is None or f"field {d.field}" in msg


def test_reader_errors_name_file_episode_field(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "r", (5, 8, 6), finalize=False)
    (root / VIDEO).write_bytes((root / VIDEO).read_bytes()[:500])
    ds = RobotDataset(root)
    ds[0]
    with pytest.raises(DatasetError, match=r"episode=1, field=observation.images.cam: file=.*file-001.mp4"):
        ds[6]
    (root / DATA).unlink()
    with pytest.raises(FileNotFoundError, match=r"file-001.parquet, episode=1: data parquet missing"):
        RobotDataset(root)[0]
    short = make_dataset(tmp_path / "s", (5, 8), finalize=False)
    encode_video(short / VIDEO, np.stack([smooth(1, t) for t in range(6)]), 10.0)
    with pytest.raises(DatasetError, match="no frame within"):
        RobotDataset(short)[12]  # frame 7 of episode 1: beyond the 6 frames the video holds
    info = json.loads((short / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (short / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v2 is not supported"):
        RobotDataset(short)


def test_fixtures_validate_clean() -> None:
    for name in ("example_av1", "example_h264"):
        if not (FIXTURES / name).exists():
            pytest.skip(f"LeRobot fixtures not found at {FIXTURES}")
        assert validate_dataset(FIXTURES / name) == []
        require_valid([FIXTURES / name])


@pytest.mark.parametrize("state", [True, False])
def test_action_less_datasets_are_valid_and_reported(tmp_path: Path, state: bool,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = make_variant(tmp_path / "video", action=False, state=state)
    assert validate_dataset(root) == []
    require_valid([root])
    assert main(["data", "validate", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{root}: OK"
    assert f"{root}: actions: no (action-less), state: {'yes' if state else 'no'}" in out
    assert any("action-less: usable for video objectives" in line for line in out)
    # an action-less dataset is still checked: a planted defect is found
    (root / "meta/stats.json").write_text("{}")
    assert any(p.field == CAM for p in validate_dataset(root))
