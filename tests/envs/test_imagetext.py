"""``lbm data image-text``: shards of scripted Meta-World renders read back with the right images and captions,
an interrupted run resumes to byte-identical shards, and user mistakes are one line through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error
from openlbm.data.imagetext import ImageTextConfig
from openlbm.envs.expert import ScriptedExpert
from openlbm.envs.generate import episode_seed
from openlbm.envs.imagetext import MANIFEST, ImageTextGenConfig, generate_image_text
from openlbm.envs.metaworld import MetaWorldConfig
from openlbm.envs.scene_facts import frame_facts

TINY = dict(tasks="drawer-open-v3,button-press-topdown-v3", episodes_per_task=2, size=32, cameras=("corner2",),
            shard_size=7, frame_stride=10, max_steps=110, seed=3, image_format="png", progress=False)
"""4 episodes x 11 captioned steps = 44 samples in 7 shards (boundaries fall inside episodes); PNG, so the renders
read back bit-exact."""


def _flags(out: Path) -> list[str]:
    return ["data", "image-text", "--out", str(out), "--tasks", TINY["tasks"], "--episodes-per-task", "2", "--size",
            "32", "--cameras", "corner2", "--shard-size", "7", "--frame-stride", "10", "--max-steps", "110", "--seed",
            "3", "--image-format", "png", "--workers", "1", "--no-progress"]


def _lbm(args: list[str], **kw) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    return subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=600,
                          **kw)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imgtext") / "shards"
    generate_image_text(ImageTextGenConfig(out=out, workers=2, **TINY))
    return out


def _rows(folder: Path) -> list[tuple[torch.Tensor, str, str]]:
    cfg = ImageTextConfig(shards=(str(folder),), image_size=(32, 32), batch_size=8, shuffle_buffer=1, epochs=1)
    return [(img, text, key) for b in cfg.build() for img, text, key in zip(b.images, b.text, b.meta["key"], strict=True)]


def _meta(folder: Path) -> dict[str, dict]:
    """key -> the sample's json member, read with the standard library's tarfile (independently of the reader)."""
    import tarfile

    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    out[m.name.split(".")[0]] = json.loads(tar.extractfile(m).read())
    return out


def test_shards_read_back_with_the_right_captions_and_images(shards: Path) -> None:
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["complete"] and manifest["samples"] == 44 and len(manifest["shards"]) == 7
    assert manifest["episodes"] == {"successes": 4}
    assert sorted(p.name for p in shards.glob("*.tar")) == [s["name"] for s in manifest["shards"]]
    rows, meta = _rows(shards), _meta(shards)
    assert sorted(k for _, _, k in rows) == [f"{i:06d}" for i in range(44)]
    for _, text, key in rows:
        assert text == meta[key]["caption"] and text.startswith(meta[key]["instruction"] + ". ")
    # re-run episode drawer-open-v3/0 here: each kept step's render and facts must be the sample's
    task, seed = "drawer-open-v3", episode_seed(3, "drawer-open-v3", 0)
    mine = {m["step"]: k for k, m in meta.items() if m["episode"] == f"{task}/0"}
    assert sorted(mine) == list(range(1, 110, 10))
    cfg = MetaWorldConfig(cameras=("corner2",), image_size=(32, 32), max_steps=110)
    env, expert = cfg.build(task, seed), ScriptedExpert(cfg)
    images = {k: img for img, _, k in rows}
    try:
        frame, _ = env.reset(seed=seed)
        done = False
        for t in range(1, 110):
            frame, _, _, _, info = env.step(expert.act_numpy(frame.privileged, task))
            done = done or info["success"]  # frame t's own success flag counts for frame t
            if t in mine:
                m = meta[mine[t]]
                assert m["facts"] == list(frame_facts(task, frame.privileged, done).sentences), t
                render = torch.from_numpy(frame.images["corner2"]).permute(2, 0, 1)  # [32, 32, 3] -> [3, 32, 32]
                assert torch.equal(images[mine[t]], render), f"step {t}: not this step's render"
    finally:
        env.close()


def test_captions_flip_within_an_episode(shards: Path) -> None:
    meta = _meta(shards)
    for episode in ("drawer-open-v3/0", "drawer-open-v3/1", "button-press-topdown-v3/0"):
        steps = sorted((m for m in meta.values() if m["episode"] == episode), key=lambda m: m["step"])
        complete = [m["task_complete"] for m in steps]
        assert complete == sorted(complete) and not complete[0] and complete[-1], episode  # latched, and reached
        assert all(m["episode_success"] for m in steps)
        first, last = steps[0]["facts"], steps[-1]["facts"]
        if episode.startswith("drawer"):
            assert "the drawer is closed" in first and "the drawer is open" in last
        else:
            assert "the red button is up, not pressed" in first and "the red button is pressed down" in last
        assert "the task is not complete yet" in first and "the task is complete" in last


def test_interrupted_run_resumes_to_identical_shards(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "openlbm.cli", *_flags(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "shard-000001.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its env workers, mid-run
        proc.wait()
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < 7, manifest
    done = _lbm(_flags(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 44 samples in 7 shards" in done.stdout
    assert not list(out.glob("*.tmp"))
    for ref in sorted(shards.glob("*.tar")):
        assert (out / ref.name).read_bytes() == ref.read_bytes(), f"{ref.name} differs after resuming"
    again = _lbm(_flags(out))  # complete: nothing to do
    assert again.returncode == 0 and "wrote 44 samples" in again.stdout


MISTAKES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown task": (["--tasks", "typo-v3"], ("typo-v3",)),
    "aloha task": (["--tasks", "insertion"], ("insertion", "metaworld")),
    "unknown camera": (["--cameras", "nosuchcam"], ("nosuchcam",)),
    "zero episodes": (["--episodes-per-task", "0"], ("episodes-per-task",)),
    "one step": (["--max-steps", "1"], ("max-steps",)),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_cli_mistakes_are_one_line(tmp_path: Path, mistake: str) -> None:
    extra, must_name = MISTAKES[mistake]
    proc = _lbm(["data", "image-text", "--out", str(tmp_path / "o"), *extra])
    assert_one_line_error(proc, must_name)
    assert not (tmp_path / "o" / MANIFEST).exists()


def test_cli_refuses_a_foreign_or_differently_made_folder(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert_one_line_error(_lbm(_flags(tmp_path / "foreign")), ("foreign", "not empty", MANIFEST))
    changed = _flags(shards)
    changed[changed.index("--size") + 1] = "16"
    assert_one_line_error(_lbm(changed), ("different settings", "size"))


def test_image_is_never_step_zero_and_keys_are_webdataset_keys(shards: Path) -> None:
    meta = _meta(shards)
    assert min(m["step"] for m in meta.values()) == 1
    assert all("." not in k and "/" not in k for k in meta)
    values = np.array([m["values"]["gripper_opening"] for m in meta.values()])
    assert ((values >= 0) & (values <= 1)).all()
