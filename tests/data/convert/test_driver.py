"""The conversion driver: parallel = sequential, SIGKILL + resume = uninterrupted, refusals, validation reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from convert_helpers import LEROBOT_V21, ROBOMIMIC, assert_same_dataset

from openlbm.data import layout as L
from openlbm.data.convert.driver import ConvertOptions, convert
from openlbm.data.convert.lerobot_v21 import LeRobotV21Source
from openlbm.data.convert.robomimic import RobomimicSource
from openlbm.data.convert.source import SourceError


def many_demos(path: Path, n: int) -> Path:
    """A robomimic file of ``n`` distinct demos, made from the fixture's demos (actions shifted per copy)."""
    with h5py.File(ROBOMIMIC, "r") as src, h5py.File(path, "w") as dst:
        dst.create_group("data")
        for k, a in src["data"].attrs.items():
            dst["data"].attrs[k] = a
        for i in range(n):
            src.copy(src[f"data/demo_{i % 3}"], dst["data"], name=f"demo_{i}")
            acts = dst[f"data/demo_{i}/actions"]
            acts[...] = acts[()] + i
    return path


def test_parallel_workers_write_the_same_dataset_as_one(tmp_path: Path) -> None:
    src = many_demos(tmp_path / "many.hdf5", 6)
    one = convert(RobomimicSource(src), tmp_path / "one", "robomimic", ConvertOptions(workers=1))
    three = convert(RobomimicSource(src), tmp_path / "three", "robomimic", ConvertOptions(workers=3))
    assert one.problems == three.problems == []
    assert one.episodes == three.episodes == 6
    assert_same_dataset(tmp_path / "one", tmp_path / "three")


def _convert_cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "openlbm.cli", "data", "convert", str(src), str(dst), "--workers", "2"]


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_until_gone(pids: list[int]) -> None:
    for _ in range(240):  # generous: only a hang (workers waiting forever) fails this
        if not any(_alive(p) for p in pids):
            return
        time.sleep(0.5)
    for p in pids:
        if _alive(p):
            os.kill(p, signal.SIGKILL)
    raise AssertionError(f"worker processes {pids} outlived the killed conversion")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker pids from /proc (Linux)")
def test_sigkill_mid_conversion_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    total = 40
    src = many_demos(tmp_path / "many.hdf5", total)
    dst = tmp_path / "killed"
    proc = subprocess.Popen(_convert_cmd(src, dst), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # "episode k/N" after each commit
        if line.startswith("episode 3/"):
            workers = _children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(workers) == 2
    _wait_until_gone(workers)  # the orphaned workers leave on their own
    committed = len(L.read_episodes(dst))
    assert 3 <= committed < total, committed  # really interrupted mid-way, after some commits

    resumed = subprocess.run(_convert_cmd(src, dst), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"converted {total - committed} episodes ({total} episodes" in resumed.stdout
    assert resumed.stdout.strip().endswith(": OK")

    fresh = convert(RobomimicSource(src), tmp_path / "fresh", "robomimic", ConvertOptions(workers=1))
    assert fresh.problems == []
    assert_same_dataset(dst, tmp_path / "fresh")


def test_rerun_after_completion_is_a_no_op_and_other_settings_are_refused(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    first = convert(LeRobotV21Source(LEROBOT_V21), dst, "lerobot-v2.1")
    again = convert(LeRobotV21Source(LEROBOT_V21), dst, "lerobot-v2.1")
    assert (first.episodes, first.converted, again.episodes, again.converted) == (3, 3, 3, 0)
    assert again.problems == []
    with pytest.raises(SourceError, match=r"different settings \{'options'"):
        convert(LeRobotV21Source(LEROBOT_V21), dst, "lerobot-v2.1", ConvertOptions(video_codec="av1"))
    with pytest.raises(SourceError, match=r"different settings .*'format'"):
        convert(RobomimicSource(ROBOMIMIC), dst, "robomimic")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(SourceError, match=r"junk exists and is not empty"):
        convert(RobomimicSource(ROBOMIMIC), tmp_path / "junk", "robomimic")


def test_max_episodes_then_the_rest(tmp_path: Path) -> None:
    part = convert(RobomimicSource(ROBOMIMIC), tmp_path / "part", "robomimic", ConvertOptions(max_episodes=2))
    assert (part.episodes, part.problems) == (2, [])
    meta = json.loads((tmp_path / "part" / "meta/conversion.json").read_text())
    assert meta["format"] == "robomimic" and meta["options"]["max_episodes"] == 2


def test_validation_problems_are_reported_not_swallowed(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert convert(RobomimicSource(ROBOMIMIC), dst, "robomimic").problems == []
    # damage the finished dataset; a re-run (nothing left to convert) must still validate and report it
    data = dst / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data)
    idx = table.column_names.index("timestamp")
    ts = table.column("timestamp").to_numpy().copy()
    ts[4] += 1.0
    pq.write_table(table.set_column(idx, "timestamp", [ts.astype(np.float32)]), data)
    report = convert(RobomimicSource(ROBOMIMIC), dst, "robomimic")
    assert report.converted == 0
    assert any("timestamp" in str(p) for p in report.problems), report.problems


def test_defect_in_a_worker_stops_after_the_good_episodes_and_a_fixed_source_resumes(tmp_path: Path) -> None:
    src = many_demos(tmp_path / "many.hdf5", 8)
    with h5py.File(src, "r+") as f:
        good = f["data/demo_5/actions"][()]
        f["data/demo_5/actions"][2, 1] = np.inf
    dst = tmp_path / "out"
    with pytest.raises(SourceError, match=r"many.hdf5, data/demo_5, key action: NaN/inf at frame 2"):
        convert(RobomimicSource(src), dst, "robomimic", ConvertOptions(workers=2))
    assert len(L.read_episodes(dst)) == 5  # demos 0..4 committed, in order
    assert not list(dst.rglob("*.tmp"))  # episodes the workers encoded past the defect are not left behind
    with h5py.File(src, "r+") as f:
        f["data/demo_5/actions"][...] = good
    resumed = convert(RobomimicSource(src), dst, "robomimic", ConvertOptions(workers=2))
    assert (resumed.converted, resumed.episodes, resumed.problems) == (3, 8, [])
    convert(RobomimicSource(src), tmp_path / "fresh", "robomimic")
    assert_same_dataset(dst, tmp_path / "fresh")
