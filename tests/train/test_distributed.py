"""DDP / FSDP2 over 2 CPU processes (gloo, torchrun) end with the same weights as one process on the same global batch.

torchrun is launched as ``sys.executable -m torch.distributed.run`` (the interpreter running the tests), so the test
runs whether or not the venv's ``bin/`` is on PATH; it never skips: if it cannot run, it fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openlbm.cli import main
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
    # rank 0 alone writes the logs: one row per step, averaged over the global batch, equal to one process's
    losses = [[json.loads(r)["loss"] for r in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
              for run in (single, run2)]
    assert len(losses[1]) == STEPS
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What ``dist_probe.py`` saw on each of 2 gloo ranks."""
    out = tmp_path_factory.mktemp("probe")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("dist_probe.py")), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_fsdp_shards_each_trunk_block_outside_its_calls(probe: list[dict]) -> None:
    for rank in probe:
        s = rank["shard"]
        # outside its calls a block holds only its shard (half the rows); inside forward and the K/V cache
        # (registered with register_fsdp_forward_method) the whole weight; after backward, shards again
        assert (s["outside"], s["after_backward"], s["grad"]) == ("shard", "shard", "shard")
        assert s["local_rows"] * 2 == s["rows"]
        assert (s["forward"], s["kv_cache"], s["neighbour"]) == ("whole", "whole", "shard")


def test_a_non_finite_loss_on_one_rank_stops_every_rank(probe: list[dict]) -> None:
    assert re.search(r"loss action is (nan|inf) at step 5 .*rank 1", probe[1]["nonfinite"]["raised"])
    # rank 0's own loss was finite: it stops too (here on the gradient norm DDP averaged with rank 1's)
    assert "at step 5" in probe[0]["nonfinite"]["raised"]


def test_ranks_waiting_for_rank_0_give_up_with_a_clear_error(probe: list[dict]) -> None:
    assert probe[0]["wait"]["raised"] is None
    assert "the probe on rank 0 did not finish within" in probe[1]["wait"]["raised"]


def test_fsdp_bf16_gathers_bf16_weights_and_reduces_fp32_gradients_once_per_step(probe: list[dict]) -> None:
    for rank in probe:
        s = rank["bf16"]
        # the sharded master weight and its gradient are fp32; the block computes with the bf16 gathered weight
        assert (s["forward"], s["outside"], s["grad"]) == ("torch.bfloat16", "torch.float32", "torch.float32")
        assert s["scattered"] == ["torch.float32"]
        # gradient accumulation: 2 micro-batches reduce-scatter once per unit, like 1 (not once per micro-batch)
        one, two = s["reduce_scatters"]
        assert one > 0 and two == one, s["reduce_scatters"]
        assert all(math.isfinite(v) for v in s["losses"])


def test_ddp_accumulation_all_reduces_once_per_step(probe: list[dict]) -> None:
    for rank in probe:
        one, two = rank["ddp_accumulation"]["all_reduces"]
        assert one > 0 and two == one, (one, two)


def test_fsdp_bf16_two_processes_track_one_bf16_process(tiny_dataset: Path, tmp_path: Path) -> None:
    """bf16 losses of 2 FSDP2 ranks x 2 micro-batches vs 1 process x 1: not bit-equal (norm weights and biases are
    bf16 under FSDP, the gradients bf16 before their fp32 reduction), but close; the first step, from the same
    weights, nearly exact (casting the forward inputs to bf16 as well would move it by ~1e-4)."""
    flags = ["train", "debug", "--dataset", str(tiny_dataset), "--steps", "4", "--batch-size", str(BATCH),
             "--checkpoint.every", "0", "--optim.lr", "1e-3", "--optim.warmup-steps", "0", "--precision", "bf16",
             "--log.every", "1", "--device", "cpu"]
    single = tmp_path / "single"
    assert main([*flags, "--run-dir", str(single)]) == 0
    sharded = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openlbm.cli",
           *flags, "--run-dir", str(sharded), "--grad-accum", "2", "--distributed", "fsdp"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    a, b = ([json.loads(r)["loss"] for r in (run / "metrics.jsonl").read_text().splitlines()] for run in (single, sharded))
    assert len(a) == len(b) == 4 and all(math.isfinite(v) for v in a + b)
    assert abs(a[0] - b[0]) < 2e-5, (a, b)
    torch.testing.assert_close(b, a, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_fsdp_resume_is_exact(tiny_dataset: Path, tmp_path: Path) -> None:
    """2 steps + resume + 2 steps = 4 straight steps, bit for bit: sharded weights, optimizer and EMA shards."""
    def run(run_dir: Path, steps: int, *extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "openlbm.cli", "train", "debug", "--dataset", str(tiny_dataset), "--run-dir", str(run_dir), "--steps",
               str(steps), "--batch-size", "8", "--grad-accum", "2", "--optim.warmup-steps", "0", "--optim.schedule",
               "constant", "--ema.decay", "0.5", "--distributed", "fsdp", "--checkpoint.every", "2", *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4, "--resume", "--allow-config-change")
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_00000004" / f))
        b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_00000004" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
