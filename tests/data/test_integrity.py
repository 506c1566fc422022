"""Nothing bad trains: content hashes, video ranges, empty episodes and value bounds, each planted in a dataset the
real writer made and caught by ``validate_dataset`` and by ``require_valid`` (what ``lbm train`` runs first)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    CAM,
    FEATURES,
    action_of,
    edit_episodes,
    make_dataset,
    set_vector_value,
    smooth,
    state_of,
)

from openlbm import bounds
from openlbm.cli import main
from openlbm.data.checksums import CHECKSUMS_PATH, read_checksums
from openlbm.data.dataset import DatasetMeta, RobotDataset
from openlbm.data.derive import strip_actions
from openlbm.data.layout import DatasetError
from openlbm.data.mixture import SourceConfig, infer_embodiments
from openlbm.data.validate import Problem, require_valid, validate_dataset
from openlbm.data.writer import DatasetWriter
from openlbm.serve import protocol
from openlbm.types import EmbodimentSpec

DATA = "data/chunk-000/file-000.parquet"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def _hits(problems: list[Problem], text: str) -> list[Problem]:
    assert any(text in p.message for p in problems), f"{text!r} not reported; got {[str(p) for p in problems]}"
    return [p for p in problems if text in p.message]


def _refused(root: Path, *texts: str) -> str:
    with pytest.raises(DatasetError) as e:
        require_valid([root])
    msg = str(e.value)
    assert "\n" not in msg and all(t in msg for t in texts), msg
    return msg


def _set_action(root: Path, rel: str, row: int, dim: int, value: float) -> None:
    set_vector_value(root, rel, "action", row, dim, value)


def _edit_episodes(root: Path, ep: int, rel: str = EPISODES, **values: object) -> None:
    edit_episodes(root, ep, rel, **values)


# ------------------------------------------------------------------------------------------------ content hashes
def test_writer_records_every_file_and_validate_catches_silent_corruption(tiny: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    recorded = read_checksums(tiny)
    assert recorded is not None and set(recorded) == {DATA, VIDEO}  # the finalized (joined) files
    assert validate_dataset(tiny) == []
    _set_action(tiny, DATA, 6, 1, -3e-13)  # plausible value, readable file: only the hash can tell
    problems = validate_dataset(tiny)
    assert [(p.file, p.episode) for p in problems] == [(DATA, 0)]
    assert "content changed since it was written" in problems[0].message
    _refused(tiny, DATA, "content changed")  # training refuses it too
    assert main(["data", "validate", str(tiny)]) == 1
    capsys.readouterr()
    assert main(["data", "validate", "--fast", str(tiny)]) == 0  # --fast skips the hashes, and says so
    assert "content hashes not checked" in capsys.readouterr().out


def test_video_hash_mismatch_names_the_video(tiny: Path) -> None:
    with open(tiny / VIDEO, "ab") as f:
        f.write(b"\0" * 16)  # trailing bytes: the video still probes and decodes the same
    [hit] = _hits(validate_dataset(tiny), "content changed")
    assert (hit.file, hit.episode) == (VIDEO, 0)
    require_valid([tiny])  # video hashes are left to `lbm data validate` (reading every video per run is costly)


def test_unfinalized_episodes_are_hashed_at_commit_and_reopen_drops_stale_lines(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "u", (5, 8), finalize=False)
    recorded = read_checksums(root)
    assert recorded is not None and len(recorded) == 4  # per episode: its data parquet and its video
    with open(root / CHECKSUMS_PATH, "a") as f:
        f.write('{"path": "data/chunk-000/file-009.parquet", "sha256": "00"}\n{"path": "torn')  # crash leftovers
    assert validate_dataset(root) == []  # a torn last line never committed anything
    DatasetWriter.open(root).close()
    assert read_checksums(root) == recorded


def test_datasets_without_hashes_load_with_a_note_and_write_hashes_adds_them(
        tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny / CHECKSUMS_PATH).unlink()  # as another tool (lerobot) writes it
    assert validate_dataset(tiny) == []
    assert len(RobotDataset(tiny)) == 19
    assert main(["data", "validate", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "2 data/video file(s) have no recorded sha256" in out and out.splitlines()[-1].endswith("OK")
    assert main(["data", "validate", "--write-hashes", str(tiny)]) == 0
    assert "recorded the sha256 of 2 file(s)" in capsys.readouterr().out
    assert set(read_checksums(tiny) or {}) == {DATA, VIDEO}
    _set_action(tiny, DATA, 0, 0, 0.5)
    assert main(["data", "validate", "--write-hashes", str(tiny)]) == 1  # never blesses a changed file
    _hits(validate_dataset(tiny), "content changed")


def test_derived_copies_record_their_own_files(tiny: Path, tmp_path: Path) -> None:
    out = strip_actions(tiny, tmp_path / "stripped")
    recorded = read_checksums(out)
    assert recorded is not None and set(recorded) == {DATA, VIDEO}
    assert recorded[VIDEO] == read_checksums(tiny)[VIDEO]  # type: ignore[index]  # the linked video: same bytes
    assert validate_dataset(out) == []


# ------------------------------------------------------------------------------------------------ video ranges
def _shift(root: Path, ep: int, by: float, start: bool = True) -> None:
    row = next(r for r in pq.read_table(root / EPISODES).to_pylist() if r["episode_index"] == ep)
    t0, t1 = row[f"videos/{CAM}/from_timestamp"], row[f"videos/{CAM}/to_timestamp"]
    _edit_episodes(root, ep, **{f"videos/{CAM}/from_timestamp": t0 + by * start, f"videos/{CAM}/to_timestamp": t1 + by})


@pytest.mark.parametrize(("plant", "episode", "text"), [
    (lambda r: _shift(r, 1, 0.3), 2, "overlaps episode 1's"),  # 3 frames of episode 2 trained as episode 1's
    (lambda r: _shift(r, 2, 0.5), 2, "the range lies outside the file"),
    (lambda r: _shift(r, 2, 0.05, start=False), 2, "to_timestamp - from_timestamp = 0.6500s, expected 0.6000s"),
])
def test_video_ranges_are_disjoint_inside_the_file_and_as_long_as_the_episode(tiny: Path, plant, episode: int,
                                                                              text: str) -> None:
    plant(tiny)
    [hit] = _hits(validate_dataset(tiny), text)
    assert hit.episode == episode and hit.field == CAM
    assert hit.file in (VIDEO, "meta/episodes")
    _refused(tiny, text, f"episode {episode}", f"field {CAM}")


# ------------------------------------------------------------------------------------------------ empty episodes
def test_zero_length_episode_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "z", (5, 8, 6), finalize=False)
    data = root / "data/chunk-000/file-002.parquet"  # episode 2's own file (unfinalized)
    t = pq.read_table(data)
    pq.write_table(t.slice(0, 0), data)
    _edit_episodes(root, 2, "meta/episodes/chunk-000/file-002.parquet", length=0, dataset_to_index=13,
                   **{f"videos/{CAM}/to_timestamp": 0.0})
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "total_frames": 13}))
    [hit] = _hits(validate_dataset(root), "episode has 0 frames")
    assert (hit.episode, hit.field) == (2, "length")
    _refused(root, "episode 2", "field length", "0 frames")


def test_episode_shorter_than_one_observation_window_is_refused_naming_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "s", (5, 1, 6), finalize=False)
    assert validate_dataset(root) == []  # one frame is an episode...
    [hit] = _hits(validate_dataset(root, min_length=2), "shorter than one observation window of 2")
    assert (hit.file, hit.episode, hit.field) == ("meta/episodes", 1, "length")
    with pytest.raises(DatasetError, match=r"episode 1, field length: episode has 1 frames, shorter than one"):
        require_valid([root], min_length=2)  # ...but not one window of a policy with 2 observation steps
    assert main(["data", "validate", "--min-length", "2", str(root)]) == 1
    assert "shorter than one observation window" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ value bounds
def _write_with_state(root: Path, ep: int, t: int, value: float) -> Path:
    """Two episodes written by the real writer (it takes any finite value), one state entry set to ``value``."""
    with DatasetWriter.create(root, FEATURES, fps=10.0) as w:
        for e, n in enumerate((5, 6)):
            for k in range(n):
                state = state_of(e, k)
                if (e, k) == (ep, t):
                    state[2] = value
                w.add_frame({CAM: smooth(e, k), "observation.state": state, "action": action_of(e, k),
                             "next.success": k == n - 1}, task="t")
            w.save_episode()
    return root


def test_values_beyond_the_shared_bound_are_refused_naming_file_episode_frame_feature(tmp_path: Path) -> None:
    root = _write_with_state(tmp_path / "b", 1, 4, 1e30)
    [hit] = _hits(validate_dataset(root), "exceeds the bound 1e+06")
    assert (hit.file, hit.episode, hit.field) == (DATA, 1, "observation.state")
    assert "|value| 1e+30 at frame 4, dim 2" in hit.message
    _refused(root, DATA, "episode 1", "frame 4", "field observation.state")
    # the server refuses the same value with the same bound
    spec = EmbodimentSpec("arm", ("cam",), (32, 32), state_dim=3, action_dim=2)
    assert spec.max_abs_state == bounds.DEFAULT_MAX_ABS
    obs = protocol.make_observation({"cam": smooth(1, 4)}, np.array([1, 4, 1e30], np.float32), "t")
    with pytest.raises(protocol.ProtocolError, match="exceeds the accepted bound"):
        protocol.parse_observation(obs, {"arm": spec}, "arm")


def test_a_dataset_declares_a_wider_bound_per_feature(tmp_path: Path) -> None:
    root = _write_with_state(tmp_path / "w", 0, 2, 5e6)
    _hits(validate_dataset(root), "exceeds the bound")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["max_abs"] = 1e7
    (root / "meta/info.json").write_text(json.dumps(info))
    assert validate_dataset(root) == []
    require_valid([root])
    # the declared bound travels with the policy to the server: the served embodiment accepts what trained
    [emb] = infer_embodiments([SourceConfig(root=str(root))], [DatasetMeta(root)])
    served = EmbodimentSpec.from_dict(emb.to_dict())
    assert served.max_abs_state == 1e7
    meta = protocol.build_metadata([served], horizon=4, n_action_steps=2, n_obs_steps=1, policy={},
                                   max_message_bytes=1 << 20, max_batch=1)
    assert meta["embodiments"][emb.name]["max_abs_state"] == 1e7
    state = np.array([1, 2, 5e6], np.float32)
    obs = protocol.make_observation({emb.cameras[0]: smooth(0, 2)}, state, "t")
    np.testing.assert_array_equal(protocol.parse_observation(obs, {emb.name: served}, emb.name).state[0], state)
    obs = protocol.make_observation({emb.cameras[0]: smooth(0, 2)}, np.array([1, 2, 2e7], np.float32), "t")
    with pytest.raises(protocol.ProtocolError, match="exceeds the accepted bound 1e"):
        protocol.parse_observation(obs, {emb.name: served}, emb.name)
    info["features"]["observation.state"]["max_abs"] = "big"
    (root / "meta/info.json").write_text(json.dumps(info))
    [hit] = _hits(validate_dataset(root), "max_abs must be a positive number")
    assert (hit.file, hit.field) == ("meta/info.json", "observation.state")
