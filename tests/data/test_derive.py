"""``strip_actions`` / ``lbm data strip-actions``: an action-less copy that validates, shares the videos, keeps the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_helpers import CAM

from openlbm.data.dataset import RobotDataset
from openlbm.data.derive import strip_actions
from openlbm.data.layout import DatasetError
from openlbm.data.validate import validate_dataset


@pytest.mark.parametrize("keep_state", [True, False])
def test_strip_actions_copies_all_but_the_actions(tiny: Path, tmp_path: Path, keep_state: bool) -> None:
    out = strip_actions(tiny, tmp_path / "video", keep_state=keep_state)
    assert validate_dataset(out) == []
    gone = ["action"] + ([] if keep_state else ["observation.state"])
    a, b = RobotDataset(tiny), RobotDataset(out)
    assert not b.meta.has_action and b.meta.has_state == keep_state and b.meta.tasks == a.meta.tasks
    assert sorted(b.meta.features) == sorted(k for k in a.meta.features if k not in gone)
    for ep in range(3):
        x, y = a.get_episode(ep), b.get_episode(ep)
        assert sorted(y) == sorted(k for k in x if k not in gone)
        for k in y:  # decoded frames included: the very same video files
            assert y[k] == x[k] if k == "task" else np.array_equal(y[k], x[k]), (ep, k)
    for f in a.meta.root.glob("videos/**/*.mp4"):  # hard links, not re-encoded copies
        assert (out / f.relative_to(tiny)).stat().st_ino == f.stat().st_ino
    stats = json.loads((out / "meta/stats.json").read_text())
    assert not set(gone) & set(stats) and stats[CAM] == a.meta.stats[CAM]
    for f in [*out.glob("data/**/*.parquet"), *out.glob("meta/episodes/**/*.parquet")]:
        cols = pq.read_table(f).column_names
        assert not [c for c in cols if any(c == g or c.startswith(f"stats/{g}/") for g in gone)], (f, cols)
    derived = json.loads((out / "meta/derived.json").read_text())
    assert derived["dropped_features"] == gone and derived["from"] == str(tiny.resolve())
    assert not list(tmp_path.glob(".*partial*"))  # the staging folder became the dataset


def test_strip_actions_refusals(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full exists and is not empty"):
        strip_actions(tiny, tmp_path / "full")
    once = strip_actions(tiny, tmp_path / "once")
    with pytest.raises(DatasetError, match="has no action; nothing to strip"):
        strip_actions(once, tmp_path / "twice")
    assert validate_dataset(strip_actions(once, tmp_path / "bare", keep_state=False)) == []  # state alone: fine
    with pytest.raises(DatasetError, match="outside the source"):
        strip_actions(tiny, tiny / "inside")
    (tiny / "meta/stats.json").write_text("{}")  # an invalid source is refused, naming the problem
    with pytest.raises(DatasetError, match="no stats for feature"):
        strip_actions(tiny, tmp_path / "from_bad")


def test_strip_actions_cli_and_a_killed_run_leftover(tiny: Path, tmp_path: Path) -> None:
    leftover = tmp_path / ".video.partial"  # what a killed run leaves: cleared by the next one
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "junk.parquet").write_bytes(b"half")
    proc = subprocess.run([sys.executable, "-m", "openlbm.cli", "data", "strip-actions", str(tiny),
                           str(tmp_path / "video"), "--no-keep-state"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("state removed): OK")
    assert not leftover.exists() and not (tmp_path / "video" / "data" / "junk.parquet").exists()
    meta = RobotDataset(tmp_path / "video").meta
    assert (meta.has_action, meta.has_state) == (False, False)
    proc = subprocess.run([sys.executable, "-m", "openlbm.cli", "data", "strip-actions", str(tmp_path / "nope"),
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
