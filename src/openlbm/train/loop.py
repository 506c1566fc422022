"""The training loop, readable top to bottom: setup -> data -> policy -> optimizer -> (resume) -> loop -> save.

Single process (``lbm train ...``) or one process per device under torchrun; only rank 0 logs and writes files.

What it trains is whatever ``cfg.policy.build(embodiments, stats)`` returns (:class:`Trainable`): the LBM policy
(``lbm train debug|small|...``) or a latent action model (``lbm train lam``), through the same steps.

One step (loss weighting over the global batch, the non-finite check) is :mod:`openlbm.train.step`. Between log
steps the loop reads nothing back from the device: metrics are summed there (:class:`~openlbm.train.metrics.Meter`)
and the non-finite flag is checked at the steps that log, evaluate or save (:func:`_syncs`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from openlbm.configs.train import TrainConfig
from openlbm.data import mixture_stats
from openlbm.data.imagetext import ImageTextConfig
from openlbm.data.validate import require_valid
from openlbm.errors import UserError
from openlbm.locking import lock_dir
from openlbm.policies.lbm import INSTRUCTION_EMBEDDING
from openlbm.policies.policy_dir import resolve_policy_dir
from openlbm.train import checkpoint as ckpt
from openlbm.train import distributed as dist_utils
from openlbm.train import finetune
from openlbm.train.ema import EMA
from openlbm.train.features import attach_feature_caches
from openlbm.train.metrics import Meter, MetricsLogger, NullLogger
from openlbm.train.optim import build_optimizer, set_lr
from openlbm.train.step import (
    NONFINITE,
    LossModule,
    NonFiniteLossError,
    NonFiniteWatch,
    _validate,
    loss_weight,
    model_weight_fn,
    train_step,
)
from openlbm.types import Batch, ImageTextBatch

IMAGE_TEXT_STATE = "image_text_batches"
"""Key of the image-text batches this rank has taken, in the checkpoint's sampler state."""

log = logging.getLogger(__name__)


class EvalFn(Protocol):
    """In-training evaluation, called on rank 0 every ``cfg.eval_every`` steps with the exported (EMA) policy.

    Returns metrics, logged under ``eval/<name>``. The loop only calls it: what it evaluates on (simulator suites
    from ``openlbm.eval``) is composed by the ``lbm train`` command, so ``train/`` never imports eval or serving.
    """

    def __call__(self, policy: nn.Module, step: int) -> dict[str, float]: ...


class Trainable(Protocol):
    """What the loop trains (an ``nn.Module``; ``LBMPolicy``, ``LAM``), built by ``cfg.policy.build``.

    Optionally ``loss_weight(batch) -> Tensor``: the number of elements its loss is a mean over, for the
    global-batch weighting (:mod:`openlbm.train.step`); without it, :func:`loss_weight` (valid action elements) is
    used. ``prepare_batch(batch) -> Batch``: host-side work done as batches come off the loader (the policy's text
    embeddings). ``shard_units() -> list[nn.Module]``: the layers FSDP2 shards one by one. ``compute_loss(batch,
    validate=False)``: skip checks the loop already made on the host.
    """

    def compute_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]: ...

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]: ...

    def save(self, directory: str | Path) -> Path: ...


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _prepare_run_dir(cfg: TrainConfig, info: dist_utils.DistInfo, allow_config_change: bool = False) -> Path | None:
    """Create the run dir (rank 0); return the checkpoint to resume from, if any (its config checked unchanged)."""
    run_dir, ckpt_root = cfg.run_dir, cfg.run_dir / "checkpoints"
    latest = ckpt.read_latest(ckpt_root) if ckpt_root.is_dir() else None
    logged = (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0
    # a start that failed before logging a step (bad data, a config error) left nothing to protect: retry freely
    if latest is None and logged and not cfg.resume:
        raise FileExistsError(f"run dir {run_dir} already holds a run: pass --resume or choose another --run-dir")
    if latest is not None and not cfg.resume:
        raise FileExistsError(
            f"run dir {run_dir} already has checkpoints (latest {latest.name}): pass --resume to continue it or "
            "choose another --run-dir"
        )
    changes = ckpt.check_resume_config(run_dir, cfg.to_dict(), allow_config_change) if latest is not None else []
    dist_utils.barrier()  # every rank has read the old config.json before rank 0 replaces it
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if changes:
            log.warning("resuming %s with a changed config (allowed): %s", run_dir, "; ".join(changes))
            ckpt.record_config_change(run_dir, ckpt.read_step(latest), changes)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            # Rows logged after the checkpoint we resume from will be logged again: drop them.
            last = ckpt.read_step(latest) if latest is not None else 0
            keep = [r for r in metrics.read_text().splitlines() if r.strip() and json.loads(r).get("step", 0) <= last]
            metrics.write_text("".join(r + "\n" for r in keep))
        cfg.save(run_dir / "config.json")
    dist_utils.barrier()
    return latest


def build_policy(cfg: TrainConfig, data: Any, device: torch.device, resume_from: Path | None = None,
                 report_dir: Path | None = None) -> nn.Module:
    """``cfg.policy.build`` over the data's embodiments, optionally initialised from a pretrained one with parts
    frozen (:mod:`openlbm.train.finetune`; report in ``report_dir``). Normalization stats are the training data's,
    except that fine-tuning keeps the pretrained stats of embodiments it already knows
    (:func:`openlbm.train.finetune.policy_stats`), and a resumed fine-tuning run its checkpoint's."""
    source = resolve_policy_dir(cfg.init_from) if cfg.init_from is not None and resume_from is None else None
    stats, origin = finetune.policy_stats(cfg, data, source, resume_from)
    policy = cfg.policy.build(data.embodiments, stats)
    finetune.init_policy(policy, cfg, data, source, report_dir, origin)
    return policy.to(device).train()


def sample_seeds(seed: int, consumed: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """A seed per sample, a pure function of (run seed, the sample's position in the *global* stream).

    The sampler gives rank ``r`` global positions ``r, r + W, ...``, so this rank's local positions
    ``consumed - B .. consumed - 1`` map to ``p * W + r``. Policies that draw their training noise per sample
    from ``batch.meta["sample_seed"]`` then give the same gradients however the global batch is split over ranks
    and micro-batches. (splitmix64 finaliser, kept to 63 bits for int64.)
    """
    pos = np.arange(consumed - batch_size, consumed, dtype=np.uint64) * np.uint64(world_size) + np.uint64(rank)
    with np.errstate(over="ignore"):
        z = pos + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z & np.uint64(2**63 - 1)).astype(np.int64))


class ImageTextFeed:
    """This rank's stream of ``TrainConfig.image_text`` batches and how many it has taken (saved with the sampler
    state, so a resumed run continues with the very next batch)."""

    def __init__(self, cfg: ImageTextConfig, info: dist_utils.DistInfo, start: int) -> None:
        self.consumed = int(start)
        self._it = iter(cfg.build(rank=info.rank, world_size=info.world_size, start_batch=self.consumed))

    def next(self) -> ImageTextBatch:
        batch = next(self._it)
        self.consumed += 1
        return batch


DEVICE_META = ("sample_seed", INSTRUCTION_EMBEDDING)
"""``batch.meta`` tensors the model reads, moved to the device with the batch (the rest stays on the host)."""

PREPARE_TIMEOUT_S = 24 * 3600.0
"""How long ranks wait for rank 0 to validate the datasets and compute their statistics (on the store, not in a
collective: large mixtures may take longer than the collective timeout)."""


def _build_data(cfg: TrainConfig, info: dist_utils.DistInfo) -> Any:
    """This rank's view of the mixture. The normalization statistics, the costly part (a pass over every source),
    are computed once per job, on rank 0, and handed to the other ranks."""
    memo: dict[str, Any] = {}
    built: list[Any] = []

    def build() -> Any:
        with mixture_stats.shared(memo):
            return finetune.with_replay(cfg.data, cfg.finetune).build(
                None, n_obs_steps=cfg.policy.n_obs_steps, horizon=cfg.policy.horizon,
                batch_size=cfg.micro_batch_size(info.world_size), seed=cfg.seed, rank=info.rank,
                world_size=info.world_size,
            )

    memo.update(dist_utils.main_first(lambda: (built.append(build()), memo)[1], "normalization statistics",
                                      PREPARE_TIMEOUT_S))
    return built[0] if built else build()


def _check_objectives(cfg: TrainConfig, data: Any) -> None:
    """Refuse, before step 1, objectives the policy cannot train: latent labels without a latent head of their
    width, image-text pairs at another size than the cameras."""
    latent_dim = getattr(cfg.policy, "latent_dim", None)
    if latent_dim is not None and data.latent_dim and data.latent_dim != latent_dim:
        raise UserError(
            f"the training data has latent actions {data.latent_dim} wide (lbm data label-latent) but "
            f"policy.latent_dim is {latent_dim}: pass --policy.latent-dim {data.latent_dim}"
        )
    if cfg.image_text is not None:
        sizes = sorted({tuple(e.image_size) for e in data.embodiments})
        if tuple(cfg.image_text.image_size) not in sizes:
            raise UserError(
                f"image_text.image_size {tuple(cfg.image_text.image_size)} is not the cameras' image size "
                f"({', '.join(f'{h}x{w}' for h, w in sizes)}): pass --image-text.image-size H W"
            )


def _batches(it: Iterator[Batch], n: int, data: Any, cfg: TrainConfig, info: dist_utils.DistInfo,
             feed: ImageTextFeed | None = None, prepare: Callable[[Batch], Batch] | None = None
             ) -> tuple[list[Batch], float]:
    """Next ``n`` micro-batches on the device (validated on the host as they come off the loader, tagged with
    per-sample seeds, each with its image-text batch when co-training, through the model's ``prepare_batch``)
    and the seconds spent waiting. Tensors the model reads from ``meta`` go to the device too."""
    out, waited = [], 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        batch = next(it)
        if feed is not None:
            batch.image_text = feed.next()
        waited += time.perf_counter() - t0
        _validate(batch)  # host tensors: the NaN checks read no device
        batch.meta["sample_seed"] = sample_seeds(cfg.seed, data.sampler.consumed, batch.batch_size, info.rank,
                                                 info.world_size)
        batch = prepare(batch) if prepare is not None else batch
        for k, v in batch.meta.items():
            if k in DEVICE_META and isinstance(v, Tensor):
                # (the loader pins the batch's tensors) a copy from pageable memory would wait for the device
                v = v.pin_memory() if info.device.type == "cuda" else v
                batch.meta[k] = v.to(info.device, non_blocking=True)
        out.append(batch.to(info.device, non_blocking=True))
    return out, waited


def train(cfg: TrainConfig, eval_fn: EvalFn | None = None, allow_config_change: bool = False) -> Path:
    """Train ``cfg.policy`` on ``cfg.data``; returns the run dir. ``eval_fn(ema_policy, step) -> metrics``.

    Refuses, before anything is written: a dataset of the mixture that fails validation (``DatasetError``), a run
    dir another process is training in (``LockedError``), a resume whose config differs from the run's
    (``ConfigChangedError``, unless ``allow_config_change``, which is then recorded in the run dir).
    """
    info = dist_utils.setup(cfg.device)
    # One writer per run dir: rank 0 of this job holds the lock; the kernel drops it if the process dies.
    run_lock = None
    try:
        # once per job (rank 0), not once per rank: every rank reads the same files
        dist_utils.main_first(
            lambda: require_valid([s.root for s in cfg.data.sources], min_length=cfg.policy.n_obs_steps),
            "dataset validation", PREPARE_TIMEOUT_S)
        run_lock = lock_dir(cfg.run_dir, "a training run") if info.is_main else None
        return _train(cfg, info, eval_fn, allow_config_change)
    finally:
        if run_lock is not None:
            run_lock.release()
        dist_utils.cleanup()


def _train(cfg: TrainConfig, info: dist_utils.DistInfo, eval_fn: EvalFn | None, allow_config_change: bool) -> Path:
    # -- setup: seeds, run dir, data, policy ---------------------------------------------------------------------
    seed_everything(cfg.seed, cfg.deterministic)
    finetune.check(cfg)
    _limit_cpu_threads(cfg, info)
    resume_from = _prepare_run_dir(cfg, info, allow_config_change)
    data = _build_data(cfg, info)
    _check_objectives(cfg, data)
    policy = build_policy(cfg, data, info.device, resume_from, cfg.run_dir if info.is_main else None)
    vision_cfg = getattr(cfg.policy, "vision", None)
    if cfg.cache_features and vision_cfg is not None and vision_cfg.cacheable:
        attach_feature_caches(data, policy.model.vision, cfg.feature_cache or cfg.run_dir / "features")
    model, ema, export = _wrap_with_ema(policy, cfg, info)
    # FSDP replaces parameters with sharded DTensors, so the optimizer is built after wrapping.
    optimizer = build_optimizer(finetune.param_groups(policy, cfg), cfg.optim, policy)

    # -- resume: weights, optimizer, EMA, sampler; RNG after the loader iterator exists ----------------------------
    state = ckpt.TrainState(step=0)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, policy, optimizer, ema)
        data.sampler.load_state_dict({k: v for k, v in state.sampler.items() if k != IMAGE_TEXT_STATE})
        log.info("resuming from %s (step %d)", resume_from, state.step)
    loader = data.loader()
    it = iter(loader)
    feed = ImageTextFeed(cfg.image_text, info, state.sampler.get(IMAGE_TEXT_STATE, 0)) if cfg.image_text else None
    if resume_from is not None:
        ckpt.restore_rng(resume_from)
    else:
        seed_everything(cfg.seed + 1 + info.rank, cfg.deterministic)

    logger = MetricsLogger(cfg.run_dir, cfg.log, cfg.steps, state.step, cfg.to_dict()) if info.is_main else NullLogger()
    autocast = None
    if cfg.precision == "bf16":
        # per-op dtypes, sharded or not; under FSDP the weights arrive in bf16 already (fsdp_mixed_precision)
        autocast = torch.autocast(info.device.type, dtype=torch.bfloat16)
    weight_fn = model_weight_fn(policy)
    prepare = getattr(policy, "prepare_batch", None)
    meter, step, watch, shown_loss = Meter(), state.step, NonFiniteWatch(info.device), float("nan")

    def save() -> Path:
        state.step, state.sampler = step, _sampler_state(data, feed)
        exported = export()  # before the EMA state: under FSDP this gathers the averaged shards into it
        return ckpt.save_checkpoint(
            cfg.run_dir / "checkpoints", state, policy, optimizer,
            ema.state_dict() if ema is not None else None, exported, cfg.checkpoint.keep_last_k,
        )

    # -- the loop: no host read of a device value except at the steps listed in `syncs` ---------------------------
    try:
        while step < cfg.steps:
            lr = set_lr(optimizer, step, cfg.optim, cfg.steps)
            t0 = time.perf_counter()
            batches, waited = _batches(it, cfg.grad_accum, data, cfg, info, feed, prepare)
            t1 = time.perf_counter()
            syncs = _syncs(cfg, step + 1, eval_fn is not None)
            if syncs:
                watch.check(step)  # a non-finite step since the last check: stop (every rank alike) before saving
            metrics = train_step(model, batches, optimizer, cfg, step, autocast, weight_fn, check_finite=syncs)
            watch.add(step, metrics.pop(NONFINITE), batches)
            if ema is not None:
                ema.update(policy, step)
            step += 1
            state.samples_seen += cfg.batch_size
            meter.add(metrics, cfg.batch_size, waited, t1 - t0 - waited, time.perf_counter() - t1)
            if step % cfg.log.every == 0 or step == cfg.steps:
                summary = meter.summary()  # the one read of the logged values
                shown_loss, rates = summary["loss"], (summary["samples_per_s"], summary["data_wait_frac"])
                logger.log(step, {**summary, "lr": lr})
                meter.reset()
            else:
                rates = meter.rates()  # just after a reset the meter has no samples yet: keep the logged rates
            logger.advance(step, shown_loss, *rates)
            if cfg.eval_every and eval_fn is not None and step % cfg.eval_every == 0:
                t_eval = time.perf_counter()
                _run_eval(eval_fn, export(), step, logger, info, cfg.eval_timeout_s)
                meter.t0 += time.perf_counter() - t_eval  # rollouts are not training throughput
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.steps:
                save()
        save()
    finally:
        logger.close()
    return cfg.run_dir


def _syncs(cfg: TrainConfig, step: int, evaluates: bool) -> bool:
    """Whether optimizer step number ``step`` (1-based) ends with a host read anyway: logging, evaluation, a
    checkpoint or the last step. The non-finite check rides on these."""
    return (step % cfg.log.every == 0 or step == cfg.steps or (evaluates and bool(cfg.eval_every)
            and step % cfg.eval_every == 0) or (bool(cfg.checkpoint.every) and step % cfg.checkpoint.every == 0))


def _wrap_with_ema(policy: nn.Module, cfg: TrainConfig, info: dist_utils.DistInfo
                   ) -> tuple[nn.Module, EMA | None, Callable[[], nn.Module | None]]:
    """The module to train (wrapped for DDP / FSDP2, compiled), the EMA (None when off) and ``export()``, which
    returns the policy to save and evaluate, made current (a collective under FSDP; None on ranks without it).

    Under FSDP the live weights are sharded, so rank 0 keeps a whole copy (made before sharding) that ``export``
    fills: with the EMA's gathered shards, or, with EMA off, the gathered weights. Unsharded, the EMA's own copy
    or the trained policy itself is exported."""
    sharded = cfg.distributed == "fsdp" and info.world_size > 1
    whole = copy.deepcopy(policy).eval().requires_grad_(False) if sharded and info.is_main else None
    model = _wrap(policy, cfg, info)
    ema = EMA(policy, cfg.ema, module=whole) if cfg.ema.enabled else None

    def export() -> nn.Module | None:
        if ema is not None:
            return ema.export(policy)
        if not sharded:
            return policy
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if whole is not None:
            whole.load_state_dict(state)
        return whole

    return model, ema, export


def _wrap(policy: nn.Module, cfg: TrainConfig, info: dist_utils.DistInfo) -> nn.Module:
    if cfg.distributed == "fsdp" and info.world_size > 1:
        from torch.distributed.fsdp import register_fsdp_forward_method

        dist_utils.wrap_model(policy, "fsdp", info, getattr(policy, "shard_units", list)(), cfg.precision)
        register_fsdp_forward_method(policy, "compute_loss")
        model: nn.Module = LossModule(policy, validated=True)
    else:
        model = dist_utils.wrap_model(LossModule(policy, validated=True), "ddp", info)
    if cfg.compile:
        model = torch.compile(model)
    return model


def _limit_cpu_threads(cfg: TrainConfig, info: dist_utils.DistInfo) -> None:
    """On CPU, use the cores that are free now: a fixed single thread leaves half of an idle 2-core machine unused,
    while threads beyond the free cores spin against other jobs (two study runs sharing the machine). An explicit
    ``OMP_NUM_THREADS`` wins: jobs that start later are invisible at start, and spinning threads can slow a step
    tenfold when they arrive."""
    if info.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    threads = cpu_threads(info.world_size)
    if threads != torch.get_num_threads():
        log.info("CPU training: %d intra-op threads (cores free at start)", threads)
        torch.set_num_threads(threads)


def cpu_threads(world_size: int = 1, window_s: float = 0.5) -> int:
    """Intra-op threads for one training process: this rank's share of the usable cores less the cores other
    processes keep busy, measured over ``window_s`` (``/proc/stat``; the 1-minute load average elsewhere, which
    lags), at least 1. Loader workers are not counted: they mostly wait, and a feature cache leaves them idle."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = _busy_cores(window_s)
    return max(1, min(cores // world_size, int(round((cores - busy) / world_size))))


def _busy_cores(window_s: float) -> float:
    """Cores busy with other work over the next ``window_s`` (this process sleeps meanwhile)."""
    def ticks() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = vals[3] + vals[4]  # idle + iowait
        return sum(vals) - idle, sum(vals)

    try:
        b0, t0 = ticks()
        time.sleep(window_s)
        b1, t1 = ticks()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    return cores * (b1 - b0) / max(t1 - t0, 1)


def _sampler_state(data: Any, feed: ImageTextFeed | None) -> dict[str, Any]:
    state = data.sampler.state_dict()
    return state if feed is None else {**state, IMAGE_TEXT_STATE: feed.consumed}


def _run_eval(eval_fn: EvalFn, policy: nn.Module | None, step: int, logger: Any, info: dist_utils.DistInfo,
              timeout_s: float) -> None:
    """Rank 0 evaluates; the other ranks wait for it on the rendezvous store, not in a collective, so a long
    evaluation cannot trip the collective timeout (they give up after ``timeout_s`` with a clear error)."""
    if info.is_main:
        assert policy is not None
        t0, was_training = time.perf_counter(), policy.training
        results = eval_fn(policy, step)
        # Without EMA the exported module is the one being trained: hand it back in the mode it was in.
        policy.train(was_training)
        metrics = {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in results.items()}
        logger.log(step, metrics | {"eval/seconds": time.perf_counter() - t0})
    dist_utils.wait_for_main(f"openlbm/eval/{step}", timeout_s, f"the evaluation at step {step}")


__all__ = ["NONFINITE", "EvalFn", "LossModule", "NonFiniteLossError", "Trainable", "loss_weight", "train", "train_step"]
