"""`lbm train lam-debug`: the project's trainer trains a latent action model on video frames (actions ignored)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openlbm.cli import main
from openlbm.configs.presets import preset
from openlbm.configs.train import LAMTrainConfig
from openlbm.policies.latent_action import LAM
from openlbm.policies.policy_dir import resolve_policy_dir
from openlbm.train.loop import LossModule, build_policy, train, train_step
from openlbm.train.optim import build_optimizer
from openlbm.train_command import with_datasets


def _rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_lam_trains_through_lbm_train_its_reconstruction_falls_and_it_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "lam"
    args = ["train", "lam-debug", "--dataset", str(tiny_dataset), "--run-dir", str(run), "--batch-size", "8",
            "--log.every", "10", "--checkpoint.every", "20"]
    assert main([*args, "--steps", "40"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["policy"]["frame_gap"] == 2 and cfg["ema"]["enabled"] is False
    rows = _rows(run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for key in ("recon", "recon_static", "commit", "perplexity", "usage", "dead_reset", "loss", "grad_norm"):
        assert all(isinstance(r[key], float) for r in rows), key
    # each row averages 10 steps: the first window vs the last
    assert rows[-1]["recon"] < 0.7 * rows[0]["recon"], [r["recon"] for r in rows]
    assert rows[-1]["recon"] < rows[-1]["recon_static"]  # better than "nothing moves"
    lam = LAM.load(resolve_policy_dir(run))
    assert lam.cameras == ("corner2",) and lam.config.frame_gap == 2
    step40 = {k: v.clone() for k, v in lam.state_dict().items()}

    # a second run with more steps continues from step 40 (steps changed: allowed and recorded)
    assert main([*args, "--steps", "50", "--resume", "--allow-config-change"]) == 0
    ckpt = run / "checkpoints" / "step_00000050"
    assert (run / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert json.loads((ckpt / "trainer.json").read_text())["samples_seen"] == 50 * 8
    assert [r["step"] for r in _rows(run)] == [10, 20, 30, 40, 50]
    assert "steps: 40 -> 50" in (run / "config_changes.jsonl").read_text()
    resumed = LAM.load(resolve_policy_dir(run)).state_dict()
    assert any(not torch.equal(resumed[k], v) for k, v in step40.items())

    # a new run can start from the trained LAM (e.g. to adapt it to other video): weights and codebook loaded
    cfg = with_datasets(replace(preset("lam-debug"), run_dir=tmp_path / "adapt", init_from=run), (tiny_dataset,))
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    adapted = build_policy(cfg, data, torch.device("cpu"), report_dir=tmp_path / "adapt").state_dict()
    assert all(torch.equal(adapted[k], v) for k, v in resumed.items())
    assert json.loads((tmp_path / "adapt" / "init_report.json").read_text())["new"] == []


def test_the_loop_weights_micro_batches_by_the_models_own_count(tiny_dataset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A LAM averages over samples, actions or not: the loop must use ``LAM.loss_weight``, never the count of
    valid action elements (zero for action-less video: 0/0 weights)."""
    cfg = with_datasets(replace(preset("lam-debug"), run_dir=tmp_path / "run"), (tiny_dataset,))
    assert isinstance(cfg, LAMTrainConfig)
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    lam = build_policy(cfg, data, torch.device("cpu"))
    batch = next(iter(data.loader()))
    batch.action_is_pad[:] = True  # what a row of video without actions carries
    optimizer = build_optimizer(lam.param_groups(0.0), cfg.optim, lam)
    metrics = train_step(LossModule(lam), [batch], optimizer, cfg, 0)  # the default: the model's own count
    scale = cfg.policy.model.commitment * cfg.policy.model.latent_dim / (3 * 32 * 32)  # code elements / pixels
    assert metrics["loss"] == pytest.approx(metrics["recon"] + scale * metrics["commit"])

    calls = []
    original = LAM.loss_weight

    def spy(self: LAM, b):  # noqa: ANN001, ANN202
        calls.append(b.batch_size)
        return original(self, b)

    monkeypatch.setattr(LAM, "loss_weight", spy)
    train(cfg)
    assert calls == [4] * cfg.steps


def test_two_ddp_processes_keep_one_codebook_equal_to_a_single_process(tiny_dataset: Path, tmp_path: Path) -> None:
    """The codebook's moving averages are summed over ranks: 2 ranks x 4 samples give the codebook and weights of
    1 process x 8 (restarts off: a restart draws its candidates from rank 0's rows, not the whole batch)."""
    flags = ["--dataset", str(tiny_dataset), "--steps", "3", "--batch-size", "8", "--checkpoint.every", "0",
             "--optim.warmup-steps", "0", "--policy.model.dead-after", "0"]
    assert main(["train", "lam-debug", *flags, "--run-dir", str(tmp_path / "single")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "openlbm.cli",
           "train", "lam-debug", *flags, "--run-dir", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    a = load_file(str(tmp_path / "single" / "checkpoints" / "step_00000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert a.keys() == b.keys() and "model.quantizer.codebook" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.allclose(a["model.quantizer.cluster_size"], torch.zeros(()))  # the averages did move
