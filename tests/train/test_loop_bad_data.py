"""`lbm train` refuses a dataset with a planted defect before the first step: one line naming file, episode and
field, no traceback, non-zero exit, nothing written to the run dir. Each case plants one defect in a copy of a
small dataset written by the real writer and runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
CAM = "observation.images.corner2"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"


def _rewrite_parquet(path: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    t = pq.read_table(path)
    pq.write_table(fn(t).replace_schema_metadata(t.schema.metadata), path)


def _set_value(key: str, value: float) -> Callable[[Path], None]:
    """Plant ``value`` at episode 1, frame 3, dim 2 of the vector column ``key``, in a still readable parquet."""
    def fn(t: pa.Table) -> pa.Table:
        values = np.stack(t.column(key).to_pylist()).astype(np.float32)  # [N, D]
        ep = t.column("episode_index").to_numpy()
        values[np.flatnonzero(ep == 1)[3], 2] = value
        col = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])  # [N*D] -> [N, D]
        return t.set_column(t.column_names.index(key), key, col)

    return lambda root: _rewrite_parquet(root / DATA, fn)


def _edit_info(root: Path, fn: Callable[[dict], None]) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    fn(info)
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))


def _fps_changed(root: Path) -> None:
    _edit_info(root, lambda info: info.update(fps=20))


def _action_int64(root: Path) -> None:
    _edit_info(root, lambda info: info["features"]["action"].update(dtype="int64"))


def _timestamps_past_video(root: Path) -> None:
    """Episode 2's frames point one second past the end of the (shared) video file."""

    def fn(t: pa.Table) -> pa.Table:
        for end in ("from_timestamp", "to_timestamp"):
            name = f"videos/{CAM}/{end}"
            vals = t.column(name).to_pylist()
            vals[2] += 1.0
            t = t.set_column(t.column_names.index(name), name, pa.array(vals, pa.float64()))
        return t

    _rewrite_parquet(root / EPISODES, fn)


# defect -> (plant, text the one-line error must contain: file, episode (when the defect has one), field)
DEFECTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "NaN in action": (_set_value("action", np.nan), (DATA, "episode 1", "field action", "NaN")),
    "state of 1e30": (_set_value("observation.state", 1e30),
                      (DATA, "episode 1", "frame 3", "field observation.state", "exceeds the bound")),
    "a plausible value changed on disk": (_set_value("action", -3e-13), (DATA, "content changed")),
    "fps changed in info.json": (_fps_changed, ("meta/info.json", f"field {CAM}", "fps")),
    "timestamps past the video": (_timestamps_past_video, (VIDEO, "episode 2", f"field {CAM}")),
    "action dtype int64 in info.json": (_action_int64, (DATA, "field action", "int64")),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_train_refuses_planted_defect_before_first_step(tiny_dataset: Path, tmp_path: Path, defect: str) -> None:
    plant, must_name = DEFECTS[defect]
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    plant(data)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "openlbm.cli", "train", "debug", "--dataset", str(data), "--run-dir", str(run),
         "--steps", "3", "--checkpoint.every", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    for text in (str(data), *must_name):
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
