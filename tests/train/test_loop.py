"""End-to-end `lbm train debug` on a tiny generated dataset, NaN-loss and bad-batch errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from openlbm.cli import main
from openlbm.configs.presets import debug
from openlbm.policies.policy_dir import resolve_policy_dir
from openlbm.train.loop import NonFiniteLossError, _validate, build_policy, train, train_step
from openlbm.train_command import with_datasets


def test_lbm_train_debug_smoke(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "debug", "--dataset", str(tiny_dataset), "--run-dir", str(run), "--steps", "4",
                 "--log.tensorboard"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 4 and cfg["data"]["sources"][0]["root"] == str(tiny_dataset)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr", "samples_per_s", "data_wait_frac", "grad_norm"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert list((run / "tb").iterdir()), "TensorBoard events missing"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    policy_dir = resolve_policy_dir(run)
    from openlbm.policies.lbm import LBMPolicy

    policy = LBMPolicy.load(policy_dir)
    assert policy.embodiment.name == "toy_arm"


def test_eval_hook_gets_ema_policy_and_is_logged(tiny_dataset: Path, tmp_path: Path) -> None:
    calls = []

    def hook(policy: torch.nn.Module, step: int) -> dict[str, float]:
        calls.append((step, policy.training))
        return {"success": 0.25}

    cfg = with_datasets(replace(debug(), run_dir=tmp_path / "run", steps=4, eval_every=2), (tiny_dataset,))
    train(cfg, eval_fn=hook)
    assert calls == [(2, False), (4, False)]
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/success" in r] == [2, 4]


def _policy_and_batch(tiny_dataset: Path):  # noqa: ANN202
    cfg = with_datasets(debug(), (tiny_dataset,))
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    policy = build_policy(cfg, data, torch.device("cpu"))
    batch = next(iter(data.loader()))
    return cfg, policy, batch


def test_nan_loss_names_step_and_batch_and_leaves_weights(tiny_dataset: Path) -> None:
    from openlbm.train.loop import LossModule
    from openlbm.train.optim import build_optimizer

    cfg, policy, batch = _policy_and_batch(tiny_dataset)
    opt = build_optimizer(policy.param_groups(weight_decay=0.0), cfg.optim, policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    batch.action[0, 0, 0] = 3e38  # finite (passes Batch.validate) but overflows the squared error to inf
    with pytest.raises(NonFiniteLossError, match=r"step 7 .*episode_index=\[") as e:
        train_step(LossModule(policy), [batch], opt, cfg, step=7)
    assert str(batch.meta["index"].tolist()[0]) in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())


def test_bad_first_batch_is_a_clear_error(tiny_dataset: Path) -> None:
    _, _, batch = _policy_and_batch(tiny_dataset)
    batch.obs.state = batch.obs.state.double()
    with pytest.raises(ValueError, match="a training batch breaks the Batch contract.*observation.state"):
        _validate(batch)


def test_the_trainer_applies_vision_lr_mult(tiny_dataset: Path, tmp_path: Path) -> None:
    base = debug()
    policy = replace(base.policy, vision=replace(base.policy.vision, lr_mult=0.25))
    run = train(with_datasets(replace(base, policy=policy, run_dir=tmp_path / "run", steps=2), (tiny_dataset,)))
    latest = (run / "checkpoints" / "latest").read_text().strip()
    groups = {g["name"]: g for g in json.loads((run / "checkpoints" / latest / "optimizer.json").read_text())["param_groups"]}
    assert groups["vision_decay"]["lr_mult"] == 0.25 and groups["main_decay"]["lr_mult"] == 1.0
    assert groups["vision_decay"]["lr"] == pytest.approx(0.25 * groups["main_decay"]["lr"])


def test_a_start_that_failed_before_logging_can_be_retried(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # what a start that failed after creating the run dir leaves behind
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "debug", "--dataset", str(tiny_dataset), "--run-dir", str(run), "--steps", "2"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_a_non_finite_step_between_checks_stops_the_run_at_the_next_one(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openlbm.policies.lbm import LBMPolicy

    calls = []
    compute_loss = LBMPolicy.compute_loss

    def poisoned(self, batch, validate=True):  # noqa: ANN001, ANN202
        losses, metrics = compute_loss(self, batch, validate)
        calls.append(len(calls))
        return ({k: v * float("nan") for k, v in losses.items()} if len(calls) == 2 else losses), metrics

    monkeypatch.setattr(LBMPolicy, "compute_loss", poisoned)
    cfg = with_datasets(replace(debug(), run_dir=tmp_path / "run", steps=6, log=replace(debug().log, every=3),
                                checkpoint=replace(debug().checkpoint, every=0)), (tiny_dataset,))
    # step 1 (0-based) is not finite; nothing reads the device until the step that ends at a log row (step 2)
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 1 .*seen at step 2.*episode_index=\["):
        train(cfg)
    assert len(calls) == 2  # it stopped at the check before step 2 ran
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_precision_trains_on_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = with_datasets(replace(debug(), run_dir=tmp_path / "run", steps=2, precision="bf16"), (tiny_dataset,))
    train(cfg)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fp32 = with_datasets(replace(debug(), run_dir=tmp_path / "fp32", steps=2), (tiny_dataset,))
    train(fp32)
    rows32 = [json.loads(r) for r in (tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()]
    # the same run in lower precision: close, not equal (so autocast was on)
    assert [r["loss"] for r in rows] != [r["loss"] for r in rows32]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in rows32], rel=0.05)


def test_cpu_threads_follow_free_cores_unless_omp_num_threads_is_set(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """Without OMP_NUM_THREADS the run takes the free cores; an explicit OMP_NUM_THREADS is left alone."""
    from openlbm.train import loop
    from openlbm.train.distributed import DistInfo

    info, cfg = DistInfo(0, 1, 0, torch.device("cpu")), debug()
    monkeypatch.setattr(loop, "cpu_threads", lambda world_size=1: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    loop._limit_cpu_threads(cfg, info)
    assert torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    loop._limit_cpu_threads(cfg, info)
    assert torch.get_num_threads() == 1
