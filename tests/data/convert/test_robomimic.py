"""robomimic HDF5 -> v3 on the h5py-written fixture: round trip against the raw file, options, planted defects."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from convert_helpers import MIN_PSNR_DB, ROBOMIMIC, episodes, psnr

from openlbm.data.convert.driver import convert
from openlbm.data.convert.robomimic import RobomimicSource
from openlbm.data.convert.source import SourceError

LOW_DIM = ["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]  # sorted: the documented default
CAMS = {"agentview_image": "observation.images.agentview", "robot0_eye_in_hand_image": "observation.images.robot0_eye_in_hand"}


def test_round_trip_every_frame_action_and_instruction(tmp_path: Path) -> None:
    report = convert(RobomimicSource(ROBOMIMIC), tmp_path / "out", "robomimic")
    assert report.problems == []
    got = episodes(tmp_path / "out")
    with h5py.File(ROBOMIMIC, "r") as f:
        demos = sorted(f["data"], key=lambda d: int(d.split("_")[1]))
        assert len(got) == len(demos) == 3
        for ep, d in zip(got, demos, strict=True):
            g = f["data"][d]
            np.testing.assert_array_equal(ep["action"], g["actions"][()].astype(np.float32))
            state = np.concatenate([g["obs"][k][()].reshape(len(g["actions"]), -1) for k in LOW_DIM], 1)
            np.testing.assert_array_equal(ep["observation.state"], state.astype(np.float32))
            np.testing.assert_array_equal(ep["next.reward"].reshape(-1), g["rewards"][()].astype(np.float32))
            np.testing.assert_array_equal(ep["next.done"].reshape(-1), g["dones"][()].astype(bool))
            np.testing.assert_array_equal(ep["observation.environment_state"], g["states"][()].astype(np.float32))
            for src_key, v3_key in CAMS.items():
                src = g["obs"][src_key][()]
                assert ep[v3_key].shape == src.shape
                worst = min(psnr(a, b) for a, b in zip(ep[v3_key], src, strict=True))
                assert worst >= MIN_PSNR_DB, (d, v3_key, worst)
            assert ep["task"] == "lift the cube"  # env_name "Lift" in data.attrs["env_args"]
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["fps"] == 20.0 and info["robot_type"] == "panda"  # env_kwargs control_freq / robots
    assert info["features"]["observation.state"]["names"][:2] == ["object[0]", "object[1]"]


def test_state_keys_filter_key_and_task_override(tmp_path: Path) -> None:
    src = RobomimicSource(ROBOMIMIC, task="lift it", state_keys=["robot0_gripper_qpos", "robot0_eef_pos"],
                          filter_key="train")
    assert len(src) == 2 and src.features()["observation.state"].shape == (5,)
    ep = src.episode(1)
    assert ep.task == "lift it" and ep.origin.endswith("data/demo_2")  # mask/train = demo_0, demo_2
    with h5py.File(ROBOMIMIC, "r") as f:
        obs = f["data/demo_2/obs"]
        want = np.concatenate([obs["robot0_gripper_qpos"][()], obs["robot0_eef_pos"][()]], 1).astype(np.float32)
    np.testing.assert_array_equal(ep.frames["observation.state"], want)


def _planted(tmp_path: Path, edit: Callable[[h5py.File], None]) -> Path:
    path = tmp_path / "bad.hdf5"
    shutil.copy(ROBOMIMIC, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_libero_instruction_comes_from_problem_info(tmp_path: Path) -> None:
    path = _planted(tmp_path, lambda f: f["data"].attrs.__setitem__(
        "problem_info", json.dumps({"language_instruction": "put the bowl on the plate"})))
    assert RobomimicSource(path).task == "put the bowl on the plate"


def _replace(f: h5py.File, key: str, value: np.ndarray) -> None:
    del f[key]
    f[key] = value


DEFECTS = {
    "missing key": (lambda f: f.__delitem__("data/demo_1/actions"), r"data/demo_1: key 'actions' missing"),
    "wrong shape": (lambda f: _replace(f, "data/demo_1/actions", np.zeros((12, 6))),
                    r"data/demo_1, key action: per-frame shape \(6,\), expected \(7,\)"),
    "mismatched lengths": (lambda f: _replace(f, "data/demo_2/obs/robot0_eef_pos", np.zeros((6, 3))),
                           r"data/demo_2/obs: low-dim keys have different lengths .*'robot0_eef_pos': 6"),
    "image length": (lambda f: _replace(f, "data/demo_2/obs/agentview_image", np.zeros((5, 32, 32, 3), np.uint8)),
                     r"data/demo_2: keys have different numbers of frames .*'observation.images.agentview': 5"),
    "non-finite": (lambda f: f["data/demo_0/actions"].__setitem__((3, 2), np.nan), r"data/demo_0, key action: NaN/inf at frame 3"),
    "num_samples": (lambda f: f["data/demo_1"].attrs.__setitem__("num_samples", 99), r"data/demo_1: attrs num_samples=99"),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_planted_defect_is_named(tmp_path: Path, name: str) -> None:
    edit, pattern = DEFECTS[name]
    path = _planted(tmp_path, edit)
    with pytest.raises(SourceError, match=pattern) as err:
        convert(RobomimicSource(path), tmp_path / "out", "robomimic")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file_and_bad_options_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.hdf5"
    path.write_bytes(ROBOMIMIC.read_bytes()[: ROBOMIMIC.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cut.hdf5: cannot open HDF5 file \(truncated or not HDF5\)"):
        RobomimicSource(path)
    with pytest.raises(SourceError, match=r"filter key mask/test not found \(available: \['train', 'valid'\]\)"):
        RobomimicSource(ROBOMIMIC, filter_key="test")
    with pytest.raises(SourceError, match=r"state keys \['joint_pos'\] not found"):
        RobomimicSource(ROBOMIMIC, state_keys=["joint_pos"])


def test_odd_image_size_is_refused_before_writing(tmp_path: Path) -> None:
    path = _planted(tmp_path, lambda f: [_replace(f, f"data/{d}/obs/agentview_image",
                                                  np.zeros((len(f[f"data/{d}/actions"]), 33, 32, 3), np.uint8)) for d in f["data"]])
    with pytest.raises(SourceError, match=r"bad.hdf5, key observation.images.agentview: images are 33x32; .* even height"):
        convert(RobomimicSource(path), tmp_path / "out", "robomimic")
    assert not (tmp_path / "out").exists()


def test_low_dim_only_file_converts(tmp_path: Path) -> None:
    def drop_images(f: h5py.File) -> None:
        for d in f["data"]:
            for k in CAMS:
                del f[f"data/{d}/obs/{k}"]

    report = convert(RobomimicSource(_planted(tmp_path, drop_images)), tmp_path / "out", "robomimic")
    assert report.problems == [] and report.frames == 28
    assert not any(k.startswith("observation.images.") for k in episodes(tmp_path / "out")[0])
