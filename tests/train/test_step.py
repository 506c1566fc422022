"""A train step reads nothing back from the device: no ``.item()``, no tensor in an ``if``, no ``float(tensor)``.

On a GPU each such read stalls the host until the device catches up. Counted here on CPU with a dispatch mode that
records every op that turns a tensor value into a Python scalar (``aten._local_scalar_dense`` is what ``.item()``,
``float()``, ``int()`` and ``bool()`` all reach; ``aten.is_nonzero`` is a tensor in an ``if``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from openlbm.configs.presets import debug, preset
from openlbm.train.loop import build_policy, sample_seeds
from openlbm.train.optim import build_optimizer
from openlbm.train.step import LossModule, _validate, train_step
from openlbm.train_command import with_datasets

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    """Records every read of a tensor value into Python (the op and the tensor read)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[object, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in READS:
            self.reads.append((func, args[0]))
        return func(*args, **(kwargs or {}))

    def device_reads(self, opt: torch.optim.Optimizer) -> list[str]:
        """The reads, less those of AdamW's step counters, which live on the host by design (no sync on a GPU)."""
        counters = [s["step"] for s in opt.state.values()]
        return [f"{f} on {tuple(t.shape)}" for f, t in self.reads if not any(_same(t, c) for c in counters)]


@pytest.mark.parametrize(("name", "own_metric"), [("debug", "valid_frac"), ("lam-debug", "perplexity")])
def test_a_train_step_reads_nothing_back_from_the_device(name: str, own_metric: str, tiny_dataset: Path) -> None:
    """The LBM policy's step and the latent action model's (codebook statistics, dead-code restarts included)."""
    cfg = with_datasets(preset(name), (tiny_dataset,))
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    policy = build_policy(cfg, data, torch.device("cpu"))
    model = LossModule(policy, validated=True)
    opt = build_optimizer(policy.param_groups(weight_decay=0.0), cfg.optim, policy)
    it = iter(data.loader())

    def batch():  # noqa: ANN202 (what the loop's _batches does, on the host)
        b = next(it)
        _validate(b)
        b.meta["sample_seed"] = sample_seeds(cfg.seed, data.sampler.consumed, b.batch_size, 0, 1)
        return b

    train_step(model, [batch()], opt, cfg, step=0, check_finite=False)
    batches = [batch(), batch()]  # the loader's side (host tensors) is not the device's business
    with HostReads() as mode:
        metrics = train_step(model, batches, opt, cfg, step=1, check_finite=False)
    assert mode.device_reads(opt) == []
    assert {"loss", "grad_norm", own_metric} <= metrics.keys()
    assert all(isinstance(v, torch.Tensor) for v in metrics.values()), metrics

    # the check the loop makes at logging steps is exactly one read
    batches = [batch()]
    with HostReads() as mode:
        train_step(model, batches, opt, cfg, step=2, check_finite=True)
    assert len(mode.device_reads(opt)) == 1, mode.device_reads(opt)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_bf16_autocast_runs_the_step_in_bfloat16_on_cpu(tiny_dataset: Path) -> None:
    cfg = with_datasets(debug(), (tiny_dataset,))
    data = cfg.data.build(None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon, batch_size=4, seed=0)
    policy = build_policy(cfg, data, torch.device("cpu"))
    opt = build_optimizer(policy.param_groups(weight_decay=0.0), cfg.optim, policy)
    batch = next(iter(data.loader()))
    batch.meta["sample_seed"] = sample_seeds(cfg.seed, data.sampler.consumed, batch.batch_size, 0, 1)
    dtypes = []
    policy.model.trunk.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    metrics = train_step(LossModule(policy), [batch], opt, cfg, 0, torch.autocast("cpu", dtype=torch.bfloat16))
    assert dtypes == [torch.bfloat16]
    assert torch.isfinite(metrics["loss"]) and torch.isfinite(metrics["grad_norm"])
    # the weights stay float32 and move
    assert all(v.dtype == before[k].dtype for k, v in policy.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items())
