"""The RLDS/TFDS reader against a dataset written by tensorflow-datasets itself (tools/fixtures/make_rlds.py).

``tests/fixtures/rlds/expected.json`` is what TensorFlow read back from those files: values via
``builder.as_dataset``, decoded pixels, and the sha256 of every encoded image as parsed by ``tf.train.Example``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import multiprocessing
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openlbm.data.convert.rlds import RLDSSource, _codepoints
from openlbm.data.convert.rlds_map import SHIPPED_KEYMAP, load_keymap
from openlbm.data.convert.source import Source, SourceError
from openlbm.data.convert.tfrecord import _example_class, iter_records, masked_crc32c, parse_example

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "rlds"
VERSION_DIR = FIXTURE / "tiny_oxe_rlds" / "1.0.0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
CAMS = ("image", "wrist_image")
SHARD0 = "tiny_oxe_rlds-train.tfrecord-00000-of-00002"


def tf_episodes() -> list[dict]:
    """TensorFlow's reading, in the order the reader numbers episodes (splits as listed, shard by shard)."""
    return [ep for split in EXPECTED["splits"].values() for ep in split["episodes"]]


def raw_images(split: str, shard_index: int) -> dict[str, list[bytes]]:
    shard = VERSION_DIR / EXPECTED["splits"][split]["shards"][shard_index]
    [(_, data)] = list(iter_records(shard))
    ex = parse_example(data, shard.name)
    return {cam: ex[f"steps/observation/{cam}"] for cam in CAMS}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def test_reads_every_step_as_tensorflow_does() -> None:
    src = RLDSSource(FIXTURE)  # the parent of the version folder is accepted too
    assert isinstance(src, Source)
    ref = tf_episodes()
    assert len(src) == len(ref) == 4
    # the default rule (this dataset is not in the shipped key map)
    feats = src.features()
    assert {k: (f.dtype, f.shape) for k, f in feats.items()} == {
        "observation.images.image": ("video", (32, 32, 3)),
        "observation.images.wrist_image": ("video", (32, 32, 3)),
        "observation.state": ("float32", (8,)),
        "action": ("float32", (7,)),
        "observation.ee_pose": ("float32", (3,)),  # a zlib-encoded tensor
        "observation.proprio.gripper_open": ("float32", (1,)),  # nested observation keys become features
        "observation.proprio.joint_pos": ("float32", (6,)),
        "next.reward": ("float32", (1,)),
    }
    assert (src.fps, src.robot_type) == (10.0, "")
    episodes = list(src)
    shards = [(split, i) for split in EXPECTED["splits"] for i in range(2)]
    for i, (ep, tf_ep, (split, shard)) in enumerate(zip(episodes, ref, shards, strict=True)):
        assert ep.index == i and ep.origin == f"{EXPECTED['splits'][split]['shards'][shard]} record 0"
        assert ep.task == tf_ep["instruction"][0] and set(tf_ep["instruction"]) == {ep.task}
        np.testing.assert_array_equal(ep.frames["action"], np.array(tf_ep["action"], np.float32))
        np.testing.assert_array_equal(ep.frames["observation.state"], np.array(tf_ep["state"], np.float32))
        np.testing.assert_array_equal(ep.frames["next.reward"][:, 0], np.array(tf_ep["reward"], np.float32))
        np.testing.assert_array_equal(ep.frames["observation.proprio.joint_pos"], np.array(tf_ep["joint_pos"], np.float32))
        np.testing.assert_array_equal(ep.frames["observation.ee_pose"], np.array(tf_ep["ee_pose"], np.float32))
        assert ep.frames["observation.proprio.gripper_open"][:, 0].tolist() == [float(g) for g in tf_ep["gripper_open"]]
        # episode boundaries: one source episode = one TFDS episode, first/last steps where TF puts them
        n = len(tf_ep["is_first"])
        assert tf_ep["is_first"] == [t == 0 for t in range(n)] and tf_ep["is_last"] == [t == n - 1 for t in range(n)]
        assert {k: len(v) for k, v in ep.frames.items()} == dict.fromkeys(feats, n)
        raw = raw_images(split, shard)
        for cam in CAMS:
            frames = ep.frames[f"observation.images.{cam}"]
            assert [hashlib.sha256(b).hexdigest() for b in raw[cam]] == tf_ep["jpeg_sha256"][cam]
            for t, blob in enumerate(raw[cam]):
                # the same bytes TF parsed, decoded here on their own: identical pixels
                np.testing.assert_array_equal(frames[t], np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
                # and TF's own JPEG decoder (a different IDCT) agrees to within a few levels
                tf_px = np.frombuffer(base64.b64decode(tf_ep["pixels_b64"][cam][t]), np.uint8).reshape(32, 32, 3)
                assert np.abs(frames[t].astype(int) - tf_px).max() <= 8 and psnr(frames[t], tf_px) >= 40
    # random access returns the same episodes as the sequential pass, in any order
    for i in (3, 0, 2, 1):
        e = src.episode(i)
        assert e.origin == episodes[i].origin and e.task == episodes[i].task
        for k, v in e.frames.items():
            np.testing.assert_array_equal(v, episodes[i].frames[k])
    with pytest.raises(IndexError):
        src.episode(4)


def test_source_works_in_forked_workers(tmp_path: Path) -> None:
    """The conversion driver forks workers that inherit the opened source (see source.py; it is not pickled):
    reading there after the parent has read (open shard handles, a filled offset cache) gives the parent's data."""
    src = RLDSSource(VERSION_DIR)
    parent = src.episode(1).frames["action"]  # fills the offset cache, opens shards
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=lambda i=i: np.save(tmp_path / f"child{i}.npy", src.episode(1).frames["action"]))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"child{i}.npy"), parent)


def test_split_selection() -> None:
    src = RLDSSource(VERSION_DIR, splits=("val",))
    assert len(src) == 2 and [e.task for e in src] == [e["instruction"][0] for e in EXPECTED["splits"]["val"]["episodes"]]
    with pytest.raises(SourceError, match=r"unknown split\(s\) \['test'\]"):
        RLDSSource(VERSION_DIR, splits=("test",))


def write_keymap(tmp_path: Path, datasets: dict) -> Path:
    path = tmp_path / "keymap.json"
    path.write_text(json.dumps({"datasets": datasets}))
    return path


def test_user_keymap_overrides_the_default_rule(tmp_path: Path) -> None:
    keymap = write_keymap(tmp_path, {
        "tiny_oxe_rlds": {"fps": 5, "robot_type": "should lose to the versioned entry"},
        "tiny_oxe_rlds/1.0.0": {
            "robot_type": "toy_arm",
            "cameras": {"steps/observation/wrist_image": "wrist"},
            "state": ["steps/reward", "steps/observation/proprio"],  # in this order; a dict: its leaves, sorted
            "task": "episode_metadata/file_path",  # an episode-level text
            "extra": {"steps/discount": "observation.discount"},
        },
    })
    src = RLDSSource(VERSION_DIR, keymap=keymap)
    assert (src.fps, src.robot_type) == (5.0, "toy_arm")  # fields merge: fps from the name entry
    feats = src.features()
    assert list(feats) == ["observation.images.wrist", "observation.state", "action", "observation.discount",
                           "next.reward"]
    assert feats["observation.state"].shape == (8,)
    assert feats["observation.state"].names == ("reward", "proprio.gripper_open",
                                                *(f"proprio.joint_pos_{i}" for i in range(6)))
    for ep, tf_ep in zip(src, tf_episodes(), strict=True):
        assert ep.task == tf_ep["file_path"] == f"raw/episode_{tf_ep['episode_id']}.npz"
        expected_state = np.concatenate([np.array(tf_ep["reward"], np.float32)[:, None],
                                         np.array(tf_ep["gripper_open"], np.float32)[:, None],
                                         np.array(tf_ep["joint_pos"], np.float32)], axis=1)
        np.testing.assert_array_equal(ep.frames["observation.state"], expected_state)
        np.testing.assert_array_equal(ep.frames["observation.discount"], np.ones((len(expected_state), 1), np.float32))
        assert ep.frames["observation.images.wrist"].shape == (len(expected_state), 32, 32, 3)


def test_default_extras_skip_a_name_the_state_uses(tmp_path: Path) -> None:
    src = RLDSSource(VERSION_DIR, keymap=write_keymap(tmp_path, {"tiny_oxe_rlds": {"state": ["steps/reward"]}}))
    assert {k: f.shape for k, f in src.features().items() if not k.startswith("observation.images")} == {
        "observation.state": (1,), "action": (7,), "observation.ee_pose": (3,), "observation.proprio.gripper_open": (1,),
        "observation.proprio.joint_pos": (6,), "next.reward": (1,),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"state": ["steps/observation/joints"]}, r"datasets\.tiny_oxe_rlds: key 'steps/observation/joints' is not in"),
        ({"cameras": {"steps/observation/state": "x"}}, r"key 'steps/observation/state' is tensor, not an Image"),
        ({"action": ["steps/language_instruction"]}, r"key 'steps/language_instruction' is text string"),
        ({"camera": {}}, r"datasets\.tiny_oxe_rlds: unknown field 'camera'"),
        ({"fps": "fast"}, r"datasets\.tiny_oxe_rlds\.fps: expected"),
        ({"task": "episode_metadata/episode_id"}, r"key 'episode_metadata/episode_id' is tensor int32: expected text"),
        ({"extra": {"steps/action": "action"}}, r"several RLDS keys map to \['action'\]"),
    ],
)
def test_bad_keymap_entries_are_named(tmp_path: Path, entry: dict, message: str) -> None:
    keymap = write_keymap(tmp_path, {"tiny_oxe_rlds": entry})
    with pytest.raises(SourceError, match=message) as info:
        RLDSSource(VERSION_DIR, keymap=keymap)
    assert str(keymap) in str(info.value) and "\n" not in str(info.value)


def test_shipped_keymap_is_valid_and_documents_each_entry() -> None:
    table, origin = load_keymap()
    assert {"bridge", "fractal20220817_data", "droid", "taco_play", "language_table"} <= set(table)
    for name, entry in table.items():
        assert origin[name] == str(SHIPPED_KEYMAP)
        assert entry["source"] and entry["fps"] > 0 and entry["action"] and entry["cameras"], name
        keys = [*entry["cameras"], *entry["state"], *entry["action"], entry["task"]]
        assert all(k.startswith(("steps/", "episode_metadata/")) for k in keys), name


def test_instruction_code_points() -> None:
    assert _codepoints(np.array([112, 117, 115, 104, 0, 0, 120])) == "push"  # zero padding ends the text
    assert _codepoints(np.array([104, 105])) == "hi"


# -- planted defects: one line naming shard file, record and key ---------------------------------------------


def frame_record(data: bytes) -> bytes:
    """TFRecord framing, for re-writing a record of the real fixture after planting a defect in it."""
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


def planted(tmp_path: Path, edit: Callable) -> RLDSSource:
    """A copy of the fixture whose first train record went through ``edit(record bytes) -> bytes``."""
    dst = tmp_path / "tiny_oxe_rlds" / "1.0.0"
    shutil.copytree(VERSION_DIR, dst)
    shard = dst / SHARD0
    shard.write_bytes(edit(shard.read_bytes()))
    return RLDSSource(dst)


def edit_example(change: Callable) -> Callable[[bytes], bytes]:
    def edit(file_bytes: bytes) -> bytes:
        [(_, data)] = list(iter_records_from_bytes(file_bytes))
        ex = _example_class()()
        ex.ParseFromString(data)
        change(ex.features.feature)
        return frame_record(ex.SerializeToString())

    return edit


def iter_records_from_bytes(file_bytes: bytes):
    length = struct.unpack("<Q", file_bytes[:8])[0]
    yield 0, file_bytes[12 : 12 + length]


def drop_values(n: int) -> Callable:
    def change(feature) -> None:
        del feature["steps/action"].float_list.value[-n:]

    return change


def bad_image(feature) -> None:
    feature["steps/observation/wrist_image"].bytes_list.value[2] = b"\xff\xd8\xff\xe0 not a jpeg at all"


def bad_zlib(feature) -> None:
    feature["steps/observation/ee_pose"].bytes_list.value[1] = b"not zlib"


def drop_state(feature) -> None:
    del feature["steps/observation/state"]


def set_is_first(feature) -> None:
    feature["steps/is_first"].int64_list.value[3] = 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b[:20] + bytes([b[20] ^ 0xFF]) + b[21:], rf"^{SHARD0}: record 0: data CRC mismatch"),
        (lambda b: b[:4] + bytes([b[4] ^ 0x01]) + b[5:], rf"^{SHARD0}: record 0: length CRC mismatch"),
        (lambda b: b[: len(b) // 2], rf"^{SHARD0}: record 0: truncated record"),
        (edit_example(drop_state),
         rf"^{SHARD0} record 0: missing key 'steps/observation/state'"),
        (edit_example(drop_values(7)),
         rf"^{SHARD0} record 0: key 'steps/action' has 42 values, expected 7 steps x shape \(7,\)"),
        (edit_example(bad_image), rf"^{SHARD0} record 0: key 'steps/observation/wrist_image' step 2: undecodable image"),
        (edit_example(set_is_first), rf"^{SHARD0} record 0: key 'steps/is_first' is set at steps \[0, 3\]"),
        (edit_example(bad_zlib), rf"^{SHARD0} record 0: key 'steps/observation/ee_pose': undecodable zlib tensor"),
    ],
    ids=["data-crc", "length-crc", "truncated", "missing-key", "wrong-shape", "bad-image", "boundary", "bad-zlib"],
)
def test_planted_defects_are_named(tmp_path: Path, edit: Callable, message: str) -> None:
    src = planted(tmp_path, edit)
    for read in (lambda: src.episode(0), lambda: list(src)):
        with pytest.raises(SourceError, match=message) as info:
            read()
        assert "\n" not in str(info.value)
    src.episode(1)  # the other shards are untouched and still read


def test_missing_shard_and_count_mismatch(tmp_path: Path) -> None:
    src = planted(tmp_path, lambda b: b + b)  # the shard now holds 2 records, dataset_info.json says 1
    with pytest.raises(SourceError, match=rf"^{SHARD0}: holds 2 records, dataset_info.json says 1"):
        src.episode(0)
    (src.info.root / SHARD0).unlink()
    with pytest.raises(SourceError, match=rf"{SHARD0}: shard listed in dataset_info.json is missing"):
        list(RLDSSource(src.info.root))


def test_not_a_tfds_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no dataset_info.json here or up to two levels below"):
        RLDSSource(tmp_path)
