"""One writer per folder: a second dataset writer / `lbm data generate` / `lbm train` on a folder another process
is writing is refused with one line naming the folder and the holder's pid; a SIGKILLed holder blocks nothing."""

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

from openlbm.data.writer import DatasetWriter
from openlbm.errors import LockedError
from openlbm.locking import LOCK_FILE, lock_dir
from openlbm.types import FeatureSpec

FEATS = {"observation.images.cam": FeatureSpec("video", (16, 16, 3)), "observation.state": FeatureSpec("float32", (2,)),
         "action": FeatureSpec("float32", (2,))}

# A process that holds a dataset writer open on {root} (as a slow generator would) until it is killed.
HOLD_WRITER = """
import sys
from openlbm.data.writer import DatasetWriter
from openlbm.types import FeatureSpec
w = DatasetWriter.create({root!r}, {{"observation.state": FeatureSpec("float32", (2,))}}, fps=10.0)
print("ready", flush=True)
sys.stdin.read()
"""

# `train` whose eval hook (after step 1 is logged) reports and blocks: a training run in progress on {run}.
HOLD_TRAIN = """
import time
from dataclasses import replace
from pathlib import Path
from openlbm.configs.presets import debug
from openlbm.train_command import with_datasets
from openlbm.train.loop import train

def hook(policy, step):
    print("ready", flush=True)
    time.sleep(600)
    return {{}}

cfg = with_datasets(replace(debug(), run_dir=Path({run!r}), steps=3, eval_every=1), (Path({data!r}),))
train(cfg, eval_fn=hook)
"""


def _holder(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()  # blocks until the holder has its lock (or has died)
    assert line.strip() == "ready", line + proc.stdout.read()
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _refused(args: list[str], folder: Path, pid: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "openlbm.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(folder) in last and f"pid {pid}" in last, proc.stderr


def test_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path: Path) -> None:
    a = lock_dir(tmp_path, "test A")
    b = lock_dir(tmp_path, "test B")  # same process: shared
    code = f"from openlbm.locking import lock_dir; lock_dir({str(tmp_path)!r}, 'test C')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "LockedError" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert "test A" in proc.stderr
    a.release()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode != 0  # b holds
    b.release()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    assert (tmp_path / LOCK_FILE).is_file()


def test_second_dataset_writer_is_refused_and_a_killed_one_blocks_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    holder = _holder(HOLD_WRITER.format(root=str(root)))
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            DatasetWriter.open(root)
        _refused(["data", "generate", "--out", str(root), "--tasks", "reach-v3", "--episodes-per-task", "1",
                  "--workers", "1", "--no-progress"], root, holder.pid)
    finally:
        _kill(holder)
    w = DatasetWriter.open(root)  # the kernel dropped the dead holder's lock
    assert w.num_episodes == 0


def test_second_training_run_on_one_run_dir_is_refused(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    with DatasetWriter.create(data, FEATS, fps=10.0, robot_type="toy") as w:
        for t in range(8):
            w.add_frame({"observation.images.cam": np.full((16, 16, 3), 20 * t, np.uint8),
                         "observation.state": np.array([t, -t], np.float32), "action": np.array([1, t], np.float32)},
                        task="push")
        w.save_episode()
    holder = _holder(HOLD_TRAIN.format(run=str(run), data=str(data)))
    try:
        _refused(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "3"], run, holder.pid)
        _refused(["train", "debug", "--dataset", str(data), "--run-dir", str(run), "--steps", "3", "--resume"], run,
                 holder.pid)
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1], "the refused runs must not have logged anything"
    finally:
        _kill(holder)
    lock_dir(run, "test").release()  # a SIGKILLed run does not block its resume


@pytest.mark.slow
def test_two_generates_on_one_out(tmp_path: Path) -> None:
    """The reported case: a second `lbm data generate` on the same --out while the first is still writing."""
    out = tmp_path / "demos"
    args = ["data", "generate", "--out", str(out), "--tasks", "reach-v3", "--episodes-per-task", "1000",
            "--cameras", "corner2", "--size", "32", "--max-steps", "20", "--workers", "1", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "openlbm.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = out / LOCK_FILE
        while not (lock.is_file() and lock.read_text().startswith(f"{first.pid} ")):  # the first holds the lock
            assert first.poll() is None, "the first generate exited early"
            time.sleep(0.1)
        _refused(args, out, first.pid)
        assert first.poll() is None
    finally:
        _kill(first)
    DatasetWriter.open(out)  # recoverable, not broken


# A process that holds the lock an evaluation (single process, or rank {rank} of a torchrun job) takes on {out}.
HOLD_EVAL = """
import sys
from openlbm.locking import lock_dir
held = lock_dir({out!r}, "an evaluation (rank {rank})", {lock_file!r})
print("ready", flush=True)
sys.stdin.read()
"""


def test_stats_and_eval_refuse_a_folder_in_use(tmp_path: Path) -> None:
    root = tmp_path / "data"
    holder = _holder(HOLD_WRITER.format(root=str(root)))
    try:  # recomputing stats while a writer is still adding episodes would race its finalize
        _refused(["data", "stats", str(root)], root, holder.pid)
    finally:
        _kill(holder)
    out = tmp_path / "eval"
    holder = _holder(HOLD_EVAL.format(out=str(out), rank=0, lock_file=LOCK_FILE))
    try:
        _refused(["eval", "--policy", "expert", "--tasks", "reach-v3", "--episodes-per-task", "1", "--cameras",
                  "corner2", "--image-size", "32", "32", "--num-workers", "1", "--out", str(out)],
                 out, holder.pid)
    finally:
        _kill(holder)
    # Ranks of one torchrun evaluation each own a records file, so they lock separately.
    rank1 = _holder(HOLD_EVAL.format(out=str(out), rank=1, lock_file=".openlbm.rank1.lock"))
    try:
        lock_dir(out, "rank 0", ".openlbm.rank0.lock").release()
        with pytest.raises(LockedError, match=f"pid {rank1.pid}"):
            lock_dir(out, "another rank 1", ".openlbm.rank1.lock")
    finally:
        _kill(rank1)
