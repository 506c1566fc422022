"""``validate_dataset`` catches each planted defect; the reader fails with errors naming file/episode/field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import CAM, FIXTURES, make_dataset, make_variant, smooth

from openlbm.cli import main
from openlbm.data.dataset import RobotDataset
from openlbm.data.layout import DatasetError
from openlbm.data.validate import require_valid, validate_dataset
from openlbm.data.video import encode_video

DATA = "data/chunk-000/file-001.parquet"  # episode 1 (unfinalized: one file per episode)
VIDEO = f"videos/{CAM}/chunk-000/file-001.mp4"


def _rewrite(root: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    path = root / DATA
    t = pq.read_table(path)
    pq.write_table(fn(t).replace_schema_metadata(t.schema.metadata), path)


def _set(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    return t.set_column(t.column_names.index(name), name, arr)


def _nan(t: pa.Table) -> pa.Table:
    state = np.stack(t.column("observation.state").to_pylist()).astype(np.float32)
    state[2, 1] = np.nan
    return _set(t, "observation.state", pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 3))


def _float64(t: pa.Table) -> pa.Table:
    action = np.stack(t.column("action").to_pylist()).astype(np.float64)
    return _set(t, "action", pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 2))


DEFECTS: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    "truncated mp4": (lambda r: (r / VIDEO).write_bytes((r / VIDEO).read_bytes()[:500]), "unreadable video", CAM),
    "missing parquet": (lambda r: (r / DATA).unlink(), "data parquet missing", None),
    "frame-count mismatch": (lambda r: encode_video(r / VIDEO, np.stack([smooth(1, t) for t in range(6)]), 10.0),
                             "6 video frames", CAM),
    "NaN": (lambda r: _rewrite(r, _nan), "NaN/inf", "observation.state"),
    "wrong dtype": (lambda r: _rewrite(r, _float64), "declares float32", "action"),
    "unknown key": (lambda r: _rewrite(r, lambda t: t.append_column("gripper.force", pa.array(np.zeros(t.num_rows)))),
                    "unknown feature key", "gripper.force"),
    "fps mismatch": (lambda r: encode_video(r / VIDEO, np.stack([smooth(1, t) for t in range(8)]), 20.0),
                     "stream fps 20.000 != dataset fps 10", CAM),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_validate_catches_planted_defect(tmp_path: Path, defect: str) -> None:
    root = make_dataset(tmp_path / "d", (5, 8, 6), finalize=False)
    assert validate_dataset(root) == []
    plant, message, field = DEFECTS[defect]
    plant(root)
    problems = validate_dataset(root)
    hits = [p for p in problems if message in p.message]
    assert hits, f"{defect}: not reported; got {[str(p) for p in problems]}"
    assert field is None or any(p.field == field for p in hits)
    assert main(["data", "validate", str(root)]) == 1


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_require_valid_refuses_planted_defect_without_reading_packets(tmp_path: Path, defect: str) -> None:
    """What `lbm train` runs before step 1: the same checks, each video's frames counted from its header."""
    root = make_dataset(tmp_path / "d", (5, 8, 6), finalize=False)
    require_valid([root])
    plant, message, field = DEFECTS[defect]
    plant(root)
    with pytest.raises(DatasetError) as e:
        require_valid([root])
    assert message in str(e.value) and str(root) in str(e.value)
    assert field is None or f"field {field}" in str(e.value)


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
