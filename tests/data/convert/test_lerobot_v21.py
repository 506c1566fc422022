"""LeRobot v2.1 -> v3 on the fixture written by lerobot 0.3.3: round trip against the raw files, planted defects."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from convert_helpers import LEROBOT_V21, MIN_PSNR_DB, episodes, psnr

from openlbm.data.convert.driver import convert
from openlbm.data.convert.lerobot_v21 import LeRobotV21Source
from openlbm.data.convert.source import SourceError

CAMS = ("observation.images.top", "observation.images.wrist")


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_round_trip_every_frame_action_and_instruction(tmp_path: Path) -> None:
    report = convert(LeRobotV21Source(LEROBOT_V21), tmp_path / "out", "lerobot-v2.1")
    assert report.problems == []
    got = episodes(tmp_path / "out")
    tasks = {r["task_index"]: r["task"] for r in map(json.loads, (LEROBOT_V21 / "meta/tasks.jsonl").read_text().splitlines())}
    assert len(got) == 3
    for e, ep in enumerate(got):
        table = pq.read_table(LEROBOT_V21 / f"data/chunk-000/episode_{e:06d}.parquet")
        for key in ("observation.state", "action"):
            np.testing.assert_array_equal(ep[key], np.array(table.column(key).to_pylist(), np.float32))
        np.testing.assert_array_equal(ep["next.reward"].reshape(-1), np.array(table.column("next.reward").to_pylist(), np.float32))
        assert ep["task"] == tasks[table.column("task_index")[0].as_py()]
        for cam in CAMS:
            src = _decode(LEROBOT_V21 / f"videos/chunk-000/{cam}/episode_{e:06d}.mp4")
            assert ep[cam].shape == src.shape == (table.num_rows, *src.shape[1:])
            worst = min(psnr(a, b) for a, b in zip(ep[cam], src, strict=True))
            assert worst >= MIN_PSNR_DB, (e, cam, worst)
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "toy_arm" and info["fps"] == 10
    assert info["features"]["observation.state"]["names"] == [f"joint_{i}" for i in range(6)]


def _planted(tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(LEROBOT_V21, root)
    edit(root)
    return root


def _drop_column(path: Path, key: str) -> None:
    t = pq.read_table(path)
    pq.write_table(t.drop_columns([key]), path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set_state_shape(root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [7]
    (root / "meta/info.json").write_text(json.dumps(info))


def _short_parquet(path: Path) -> None:
    t = pq.read_table(path)
    pq.write_table(t.slice(0, t.num_rows - 2), path)


def _short_video(path: Path) -> None:
    frames = _decode(path)[:-3]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))


D, V = "data/chunk-000", "videos/chunk-000"
DEFECTS = {
    "missing episode file": (lambda r: (r / D / "episode_000001.parquet").unlink(), r"episode 1: data file .*episode_000001.parquet missing"),
    "missing video file": (lambda r: (r / V / "observation.images.wrist/episode_000002.mp4").unlink(),
                           r"episode_000002.mp4, episode 2, key observation.images.wrist: video file missing"),
    "missing key": (lambda r: _drop_column(r / D / "episode_000000.parquet", "action"), r"episode_000000.parquet, episode 0: key 'action' missing"),
    "truncated parquet": (lambda r: _truncate(r / D / "episode_000002.parquet"), r"episode_000002.parquet, episode 2: unreadable parquet"),
    "truncated video": (lambda r: _truncate(r / V / "observation.images.top/episode_000001.mp4"),
                        r"episode 1, key observation.images.top: .*episode_000001.mp4"),
    "wrong shape": (_set_state_shape, r"episode_000000.parquet, episode 0, key observation.state: shape does not match \(7,\)"),
    "mismatched lengths": (lambda r: _short_parquet(r / D / "episode_000001.parquet"),
                           r"episode_000001.parquet, episode 1: 9 rows but meta/episodes.jsonl says length 11"),
    "video shorter than data": (lambda r: _short_video(r / V / "observation.images.top/episode_000000.mp4"),
                                r"episode 0, key observation.images.top: .*no frame within"),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_planted_defect_is_named(tmp_path: Path, name: str) -> None:
    edit, pattern = DEFECTS[name]
    root = _planted(tmp_path, edit)
    with pytest.raises(SourceError, match=pattern) as err:
        convert(LeRobotV21Source(root), tmp_path / "out", "lerobot-v2.1")
    assert "\n" not in str(err.value)


def test_not_v2_and_broken_metadata_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"not a LeRobot v2.x dataset"):
        LeRobotV21Source(tmp_path)
    root = _planted(tmp_path, lambda r: (r / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "x"}\n{oops\n'))
    with pytest.raises(SourceError, match=r"meta/tasks.jsonl, line 2: invalid JSON"):
        LeRobotV21Source(root)
