"""DDP / FSDP2 over 2 CPU processes (gloo, torchrun) end with the same weights as one process on the same global batch.

torchrun is launched as ``sys.executable -m torch.distributed.run`` (the interpreter running the tests), so the test
runs whether or not the venv's ``bin/`` is on PATH; it never skips: if it cannot run, it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openlbm.configs.presets import debug
from openlbm.configs.train import CheckpointConfig, EMAConfig, OptimConfig
from openlbm.train.loop import train
from openlbm.train_command import with_datasets

STEPS, BATCH = 3, 8


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_single_process(strategy: str, tiny_dataset: Path, tmp_path: Path) -> None:
    # Mixed grad_accum on purpose: 1 process x 1 micro-batch of 8 vs 2 processes x 2 micro-batches of 2.
    base = with_datasets(
        replace(
            debug(), steps=STEPS, batch_size=BATCH, checkpoint=CheckpointConfig(every=0, keep_last_k=1),
            optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=1e-2), ema=EMAConfig(decay=0.5),
        ),
        (tiny_dataset,),
    )
    single = train(replace(base, run_dir=tmp_path / "single"))

    run2 = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openlbm.cli", "train", "debug",
        "--dataset", str(tiny_dataset), "--run-dir", str(run2), "--steps", str(STEPS), "--batch-size", str(BATCH),
        "--grad-accum", "2", "--checkpoint.every", "0", "--optim.lr", "1e-3", "--optim.warmup-steps", "0",
        "--optim.weight-decay", "1e-2", "--ema.decay", "0.5", "--distributed", strategy,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    name = f"step_{STEPS:08d}"
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(single / "checkpoints" / name / f))
        b = load_file(str(run2 / "checkpoints" / name / f))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=lambda m, k=k, f=f: f"{f} {k}: {m}")
    start = load_file(str(single / "checkpoints" / name / "model.safetensors"))
    assert any(v.abs().sum() > 0 for v in start.values())
    # rank 0 alone writes the logs: one row per step, averaged over the global batch
    rows = (run2 / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"loss"' in r]) == STEPS
