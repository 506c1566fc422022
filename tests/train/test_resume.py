"""Exact resume: 20 steps straight == 10 steps, SIGKILL, resume, 10 more (bitwise on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openlbm.configs.presets import debug
from openlbm.configs.train import CheckpointConfig, TrainConfig
from openlbm.train.loop import train
from openlbm.train_command import with_datasets

# Runs 20 steps with checkpoints every 10; the eval hook at step 11 signals the parent and blocks, so the parent
# kills the process at a known point (after checkpoint 10 is complete, mid-way through step 11's bookkeeping).
KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_resume import config
from openlbm.train.loop import train

def hook(policy, step):
    if step > 10:
        Path({marker!r}).write_text(str(step))
        time.sleep(600)
    return {{}}

train(config(Path({data!r}), Path({run!r}), eval_every=1), eval_fn=hook)
"""


def config(data: Path, run_dir: Path, **kw: object) -> TrainConfig:
    cfg = replace(debug(), run_dir=run_dir, steps=20, checkpoint=CheckpointConfig(every=10, keep_last_k=2), **kw)
    return with_datasets(cfg, (data,))


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model", "optimizer", "ema"):
        out.update({f"{name}/{k}": v for k, v in load_file(str(ckpt / f"{name}.safetensors")).items()})
    out.update({f"policy/{k}": v for k, v in load_file(str(ckpt / "policy" / "model.safetensors")).items()})
    return out


def test_kill_and_resume_is_bitwise_exact(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    # Bitwise equality holds at a fixed intra-op thread count (one here, and in the killed subprocess through
    # OMP_NUM_THREADS); left alone, each run picks its threads from the cores free when it starts
    # (train.loop.cpu_threads), which differ between the runs on a loaded machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    straight = train(config(tiny_dataset, tmp_path / "straight"))

    run = tmp_path / "killed"
    marker = tmp_path / "blocked"
    code = KILLED_RUN.format(tests=str(Path(__file__).parent), marker=str(marker), data=str(tiny_dataset), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training subprocess exited early:\n{proc.stdout.read().decode()}")
        assert time.monotonic() < deadline, "training subprocess did not reach step 11"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert not list((run / "checkpoints").glob("step_00000020"))

    resumed = train(replace(config(tiny_dataset, run), resume=True))
    a = _tensors(straight / "checkpoints" / "step_00000020")
    b = _tensors(resumed / "checkpoints" / "step_00000020")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs from the straight run in {diff[:10]}"
    # the killed run's duplicate log rows past step 10 were dropped on resume
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 21))


def test_resume_without_flag_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = replace(config(tiny_dataset, tmp_path / "run"), steps=2, checkpoint=CheckpointConfig(every=1, keep_last_k=1))
    train(cfg)
    import pytest

    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


def test_resume_with_changed_config_is_refused_unless_allowed(tiny_dataset: Path, tmp_path: Path) -> None:
    import pytest

    from openlbm.train.checkpoint import ConfigChangedError

    cfg = replace(config(tiny_dataset, tmp_path / "run"), steps=2, checkpoint=CheckpointConfig(every=1, keep_last_k=1))
    train(cfg)
    original = (tmp_path / "run" / "config.json").read_text()
    changed = replace(cfg, steps=3, resume=True, optim=replace(cfg.optim, lr=5e-4))
    with pytest.raises(ConfigChangedError, match=r"optim\.lr: 0\.001 -> 0\.0005; steps: 2 -> 3"):
        train(changed)
    assert (tmp_path / "run" / "config.json").read_text() == original, "a refused resume must not touch config.json"
    train(changed, allow_config_change=True)
    record = json.loads((tmp_path / "run" / "config_changes.jsonl").read_text())
    assert record == {"step": 2, "changes": ["optim.lr: 0.001 -> 0.0005", "steps: 2 -> 3"]}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 3
    train(replace(changed, steps=4, checkpoint=CheckpointConfig(every=2, keep_last_k=1)), allow_config_change=True)
    assert len((tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()) == 2
