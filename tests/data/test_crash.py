"""A writer SIGKILLed at any moment leaves a dataset that opens with every previously saved episode."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import FEATURES, action_of, make_dataset, write_episodes

from openlbm.data.dataset import RobotDataset
from openlbm.data.finalize import consolidate
from openlbm.data.validate import validate_dataset
from openlbm.data.writer import JOURNAL, STAGING, DatasetWriter

HELPERS = str(Path(__file__).resolve().parent)

CHILD = """
import sys, time
sys.path.insert(0, {helpers!r})
from pathlib import Path
from data_helpers import FEATURES, smooth, state_of, action_of, write_episodes
from openlbm.data.writer import DatasetWriter
root = Path({root!r})
mode = {mode!r}
if mode == "record":
    w = DatasetWriter.create(root, FEATURES, fps=10)
    for ep, n in enumerate((4, 5)):
        write_episodes(w, (n,), first_ep=ep)
        print("saved", flush=True)
    ep, t, frames = 2, 0, 0
    while True:  # an episode that never ends: killed mid-episode, mid-encode or inside save_episode
        w.add_frame({{"observation.images.cam": smooth(ep, t), "observation.state": state_of(ep, t),
                     "action": action_of(ep, t), "next.success": False}}, task="task 0")
        t, frames = t + 1, frames + 1
        if frames == 3:
            print("recording", flush=True)
        if t == 7:
            w.save_episode()
            print("saved", flush=True)
            ep, t = ep + 1, 0
else:
    w = DatasetWriter.open(root)
    print("finalizing", flush=True)
    while True:
        w.finalize()
"""


def _run_and_kill(root: Path, mode: str, wait_for: str, delay: float) -> int:
    """Start the child, wait for a line, sleep ``delay``, SIGKILL; returns the number of 'saved' lines seen."""
    code = CHILD.format(helpers=HELPERS, root=str(root), mode=mode)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    saved = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        saved += line.strip() == "saved"
        if line.strip() == wait_for:
            break
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved += sum(line.strip() == "saved" for line in proc.stdout)
    return saved


def _check_episodes(root: Path, at_least: int) -> int:
    ds = RobotDataset(root)
    n = ds.meta.num_episodes
    assert n >= at_least
    for ep in range(n):
        e = ds.get_episode(ep)
        length = len(e["action"])
        np.testing.assert_array_equal(e["action"], np.stack([action_of(ep, t) for t in range(length)]))
        assert e["observation.images.cam"].shape == (length, 32, 32, 3)
    return n


def test_sigkill_mid_episode_keeps_saved_episodes_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    saved = _run_and_kill(root, "record", "recording", 0.3)
    n = _check_episodes(root, at_least=2)
    assert n in (saved, saved + 1)  # the last one may have committed just before the kill
    w = DatasetWriter.open(root)
    assert validate_dataset(root) == [], "open() must leave a clean dataset"
    write_episodes(w, (3,), first_ep=n)
    w.finalize()
    assert _check_episodes(root, n + 1) == n + 1
    assert validate_dataset(root) == []


def test_sigkill_mid_finalize_at_many_moments(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", (4, 5, 6, 3, 4, 5), finalize=False)
    for k, delay in enumerate([0.0, 0.01, 0.02, 0.04, 0.07, 0.1]):
        root = tmp_path / f"fin{k}"
        shutil.copytree(src, root)  # not `os.system("cp ...")`: a failed copy must fail the test
        _run_and_kill(root, "finalize", "finalizing", delay)
        assert _check_episodes(root, 6) == 6
        assert validate_dataset(root) == []


def test_interrupted_finalize_after_journal_rolls_forward(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "j", (4, 5, 6), finalize=False)
    w = DatasetWriter.open(root)
    moves, _ = consolidate(w)
    import json

    old = [str(p.relative_to(root)) for p in w._referenced()]
    (root / JOURNAL).write_text(json.dumps({"moves": moves, "delete": old}))
    # half-applied: some old files already deleted, nothing moved yet
    (root / old[0]).unlink()
    assert _check_episodes(root, 3) == 3  # the reader completes the journal before reading
    assert not (root / JOURNAL).exists()
    assert len(list((root / "data").rglob("*.parquet"))) == 1
    assert validate_dataset(root) == []


def test_unused_feature_set_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "x"
    w = DatasetWriter.create(root, FEATURES, fps=10)
    assert DatasetWriter.open(root).num_episodes == 0 == w.num_episodes
    assert RobotDataset(root).meta.num_frames == 0


def test_interrupted_finalize_is_logged_only_when_there_was_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openlbm.data.writer")
    fresh = make_dataset(tmp_path / "fresh", (3, 4))  # create, save, finalize, reopen, read: nothing was interrupted
    DatasetWriter.open(fresh).finalize()
    RobotDataset(fresh)
    assert "interrupted finalize" not in caplog.text
    root = make_dataset(tmp_path / "j", (4, 5), finalize=False)
    w = DatasetWriter.open(root)
    moves, _ = consolidate(w)
    (root / JOURNAL).write_text(json.dumps({"moves": moves, "delete": [str(p.relative_to(root)) for p in w._referenced()]}))
    RobotDataset(root)  # the reader completes the journal a dead finalize left
    assert caplog.text.count("completed an interrupted finalize") == 1
    stage = make_dataset(tmp_path / "s", (3,), finalize=False)
    (stage / STAGING / "data").mkdir(parents=True)  # staging of a finalize killed before its journal
    DatasetWriter.open(stage)
    assert "discarded the staging folder of an interrupted finalize" in caplog.text and not (stage / STAGING).exists()
