"""Run by ``tests/train/test_distributed.py`` under ``torch.distributed.run`` (2 gloo processes): probes what a
2-rank job does and writes ``<out>/rank<r>.json`` for the test to check. Not a test module itself.

- ``shard``: per-block FSDP2 on the debug policy: a trunk block's parameters are DTensor shards outside its calls
  and whole tensors inside them (its ``forward`` and its cross-attention K/V cache);
- ``nonfinite``: a loss that overflows on rank 1 only makes *both* ranks raise ``NonFiniteLossError`` (no rank
  is left waiting in a collective);
- ``wait``: ranks waiting for rank 0 on the store give up after their timeout with a ``TimeoutError``;
- ``bf16``: FSDP2 under ``precision="bf16"``: the dtypes a trunk block's weight and gradient take, and how many
  reduce-scatters (and in which dtype) a step makes with one micro-batch and with two;
- ``ddp_accumulation``: how many gradient all-reduces DDP makes in a step of one micro-batch and of two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies"))
from policy_helpers import ARM, make_batch, make_stats  # noqa: E402

from openlbm.configs.presets import debug, policy_preset  # noqa: E402
from openlbm.train import distributed as dist_utils  # noqa: E402
from openlbm.train.loop import LossModule, NonFiniteLossError, train_step  # noqa: E402
from openlbm.train.optim import build_optimizer  # noqa: E402


def _kind(t: torch.Tensor) -> str:
    return "shard" if hasattr(t, "full_tensor") else "whole"


def probe_shard() -> dict:
    from torch.distributed.fsdp import register_fsdp_forward_method

    torch.manual_seed(0)
    policy = policy_preset("debug").build([ARM], {"arm": make_stats(ARM)})
    dist_utils.shard(policy, policy.shard_units())
    register_fsdp_forward_method(policy, "compute_loss")
    block = policy.model.trunk.blocks[0]
    weight = lambda: block.attn.qkv.weight  # noqa: E731 (FSDP swaps the registered parameter in and out)
    seen: dict[str, str] = {}
    block.register_forward_pre_hook(lambda m, a: seen.__setitem__("forward", _kind(weight())))
    # per-block units: while the next block runs, this one is back to its shard (a root-only unit keeps it whole)
    policy.model.trunk.blocks[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("neighbour", _kind(weight())))
    kv_cache = block.cross.kv_cache
    block.cross.kv_cache = lambda ctx: (seen.__setitem__("kv_cache", _kind(weight())), kv_cache(ctx))[1]
    outside = weight()
    batch = make_batch([ARM, ARM], policy.config.horizon)
    batch.meta["sample_seed"] = torch.tensor([1, 2]) + 2 * dist.get_rank()
    losses, _ = policy.compute_loss(batch)
    losses["action"].backward()
    return {"outside": _kind(outside), "local_rows": outside.to_local().shape[0], "rows": outside.shape[0],
            "after_backward": _kind(weight()), "grad": _kind(weight().grad), **seen}


def _ddp_debug() -> tuple:
    """The debug preset's config, policy, DDP-wrapped loss module and optimizer, seeded alike on every rank."""
    torch.manual_seed(0)
    cfg = debug()
    policy = policy_preset("debug").build([ARM], {"arm": make_stats(ARM)})
    model = dist_utils.wrap_model(LossModule(policy), "ddp", dist_utils.setup("cpu"))
    return cfg, policy, model, build_optimizer(policy.param_groups(0.0), cfg.optim, policy)


def probe_nonfinite() -> dict:
    cfg, policy, model, opt = _ddp_debug()
    batch = make_batch([ARM, ARM], policy.config.horizon, seed=dist.get_rank())
    if dist.get_rank() == 1:
        batch.action[0, 0, 0] = 3e38  # finite, but its squared error overflows to inf
    try:
        train_step(model, [batch], opt, cfg, step=5)
    except NonFiniteLossError as e:
        return {"raised": str(e)}
    return {"raised": None}


def probe_wait() -> dict:
    store = dist.distributed_c10d._get_default_store()
    if dist.get_rank() == 0:
        store.wait(["probe/gave_up"])  # rank 0 "evaluates" until the others have given up waiting for it
        dist_utils.wait_for_main("probe/eval", 1.0, "the probe")
        return {"raised": None}
    try:
        dist_utils.wait_for_main("probe/eval", 0.5, "the probe")
    except TimeoutError as e:
        return {"raised": str(e)}
    finally:
        store.set("probe/gave_up", "1")
    return {"raised": None}


def probe_bf16() -> dict:
    from torch.distributed.fsdp import register_fsdp_forward_method

    torch.manual_seed(0)
    cfg = debug()
    policy = policy_preset("debug").build([ARM], {"arm": make_stats(ARM)})
    dist_utils.wrap_model(policy, "fsdp", dist_utils.setup("cpu"), policy.shard_units(), "bf16")
    register_fsdp_forward_method(policy, "compute_loss")
    model, opt = LossModule(policy), build_optimizer(policy.param_groups(0.0), cfg.optim, policy)
    weight = lambda: policy.model.trunk.blocks[0].attn.qkv.weight  # noqa: E731 (FSDP swaps it in and out)
    seen: dict[str, str] = {}
    policy.model.trunk.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("forward", str(weight().dtype)))
    scattered: list[str] = []  # the dtype of every reduce-scatter's input
    reduce_scatter = dist.reduce_scatter_single

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        scattered.append(str(kwargs["input"].dtype))
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counting  # FSDP2 looks it up on torch.distributed at each call
    counts, losses = [], []
    try:
        for step, n in enumerate((1, 2)):
            batches = [make_batch([ARM, ARM], policy.config.horizon, seed=10 * step + 2 * i + dist.get_rank())
                       for i in range(n)]
            for i, b in enumerate(batches):
                b.meta["sample_seed"] = torch.tensor([1, 2]) + 4 * i + 2 * dist.get_rank()
            before = len(scattered)
            metrics = train_step(model, batches, opt, cfg, step, torch.autocast("cpu", dtype=torch.bfloat16))
            counts.append(len(scattered) - before)
            losses.append(float(metrics["loss"]))
    finally:
        dist.reduce_scatter_single = reduce_scatter
    return {**seen, "outside": str(weight().dtype), "grad": str(weight().grad.dtype), "scattered": sorted(set(scattered)),
            "reduce_scatters": counts, "losses": losses}


def probe_ddp_accumulation() -> dict:
    """How many gradient buckets DDP all-reduces in a step of one micro-batch and in one of two."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    cfg, policy, model, opt = _ddp_debug()
    buckets: list[int] = []
    model.register_comm_hook(None, lambda state, bucket: (buckets.append(1), allreduce_hook(state, bucket))[1])
    counts = []
    for step, n in enumerate((1, 2)):
        batches = [make_batch([ARM, ARM], policy.config.horizon, seed=2 * i + dist.get_rank()) for i in range(n)]
        before = len(buckets)
        train_step(model, batches, opt, cfg, step)
        counts.append(len(buckets) - before)
    return {"all_reduces": counts}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = {"shard": probe_shard(), "nonfinite": probe_nonfinite(), "wait": probe_wait(), "bf16": probe_bf16(),
              "ddp_accumulation": probe_ddp_accumulation()}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
