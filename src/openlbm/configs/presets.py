"""Named training presets: plain functions returning a :class:`~openlbm.train.config.TrainConfig`.

``lbm train <preset> --dataset PATH ...`` starts from one of these; every field can be overridden on the command
line. Datasets are never part of a preset (pass ``--dataset`` or ``--data.sources``).

| preset       | policy  | steps   | batch | for                                                         |
|--------------|---------|---------|-------|-------------------------------------------------------------|
| ``debug``    | debug   | 4       | 4     | tests and smoke runs: seconds on a laptop CPU                |
| ``small``    | small   | 20 000  | 64    | CPU-trainable single-task / few-task policies               |
| ``quickstart`` | small | 2 000   | 64    | ``lbm quickstart``: 5 Meta-World tasks, 64 px, ~17 min on CPU |
| ``base``     | base    | 200 000 | 256   | ~100M-parameter multitask pretraining on GPU (bf16)         |
| ``large``    | large   | 400 000 | 1024  | ~300M+ parameters, FSDP2 over many GPUs                     |

Fine-tuning presets (``lbm finetune <preset> --init-from PRETRAINED --dataset NEW``, :data:`FINETUNE_PRESETS`) start
from the training preset of the same name with a lower peak learning rate and a short warmup, since the weights are
already trained; the other fine-tuning knobs (freezing, per-part multipliers, replay) are ``--finetune.*`` flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from openlbm.configs.train import CheckpointConfig, EMAConfig, LogConfig, OptimConfig
from openlbm.data.mixture import DataConfig
from openlbm.policies.config import preset as policy_preset
from openlbm.train.config import TrainConfig


def debug() -> TrainConfig:
    """Tiny everything: a few steps of the debug policy, no workers, no TensorBoard. Runs in seconds."""
    return TrainConfig(
        policy=policy_preset("debug"),
        data=replace(DataConfig(), num_workers=0),
        run_dir=Path("runs/debug"),
        steps=4,
        batch_size=4,
        optim=OptimConfig(lr=1e-3, warmup_steps=1, weight_decay=0.0),
        ema=EMAConfig(decay=0.9),
        checkpoint=CheckpointConfig(every=2, keep_last_k=2),
        log=LogConfig(every=1, tensorboard=False, progress=False),
        device="cpu",
    )


def small() -> TrainConfig:
    """The CPU-trainable policy: a few tasks overnight on a laptop, minutes on a GPU."""
    return TrainConfig(
        policy=policy_preset("small"),
        data=replace(DataConfig(), num_workers=2),
        run_dir=Path("runs/small"),
        steps=20_000,
        batch_size=64,
        optim=OptimConfig(lr=3e-4, warmup_steps=500, weight_decay=1e-4),
        ema=EMAConfig(decay=0.999),
        checkpoint=CheckpointConfig(every=2_000, keep_last_k=3),
        log=LogConfig(every=50),
    )


def quickstart() -> TrainConfig:
    """``lbm quickstart``: the small policy on the Meta-World quickstart tasks (few thousand steps on a CPU)."""
    return replace(
        small(),
        run_dir=Path("runs/quickstart"),
        # 2 000 steps x 64 samples (~10 passes over 40 demos x 5 tasks at 64 px) takes ~17 min on 2 CPU cores and
        # reaches >= 80% success on the quickstart tasks; more steps help little there.
        steps=2_000,
        optim=OptimConfig(lr=3e-4, warmup_steps=100, weight_decay=1e-4),
        ema=EMAConfig(decay=0.995),
        checkpoint=CheckpointConfig(every=1_000, keep_last_k=2),
    )


def base() -> TrainConfig:
    """~100M parameters: multitask pretraining on one or more GPUs with bf16 autocast and torch.compile."""
    return TrainConfig(
        policy=policy_preset("base"),
        data=replace(DataConfig(), num_workers=8),
        run_dir=Path("runs/base"),
        steps=200_000,
        batch_size=256,
        optim=OptimConfig(lr=1e-4, warmup_steps=2_000, weight_decay=1e-4),
        ema=EMAConfig(decay=0.9995),
        checkpoint=CheckpointConfig(every=10_000, keep_last_k=3),
        log=LogConfig(every=100),
        precision="bf16",
        compile=True,
        deterministic=False,
    )


def large() -> TrainConfig:
    """~300M+ parameters: FSDP2-sharded pretraining over many GPUs."""
    return replace(
        base(),
        policy=policy_preset("large"),
        run_dir=Path("runs/large"),
        steps=400_000,
        batch_size=1024,
        distributed="fsdp",
        optim=OptimConfig(lr=1e-4, warmup_steps=5_000, weight_decay=1e-4),
    )


def finetune_debug() -> TrainConfig:
    """Fine-tune with the debug sizes (tests, smoke runs)."""
    return replace(debug(), run_dir=Path("runs/finetune-debug"), optim=OptimConfig(lr=5e-4, warmup_steps=1, weight_decay=0.0))


def finetune_small() -> TrainConfig:
    """Fine-tune a ``small`` policy on new tasks: a third of the from-scratch learning rate, 100 warmup steps."""
    return replace(small(), run_dir=Path("runs/finetune-small"), steps=5_000,
                   optim=OptimConfig(lr=1e-4, warmup_steps=100, weight_decay=1e-4))


def finetune_quickstart() -> TrainConfig:
    """Fine-tune with the quickstart sizes (the data-efficiency study's default on CPU)."""
    return replace(quickstart(), run_dir=Path("runs/finetune-quickstart"),
                   optim=OptimConfig(lr=1e-4, warmup_steps=50, weight_decay=1e-4))


def finetune_base() -> TrainConfig:
    """Fine-tune a ``base`` policy on GPU."""
    return replace(base(), run_dir=Path("runs/finetune-base"), steps=20_000,
                   optim=OptimConfig(lr=3e-5, warmup_steps=500, weight_decay=1e-4))


FINETUNE_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "debug": finetune_debug,
    "small": finetune_small,
    "quickstart": finetune_quickstart,
    "base": finetune_base,
}
"""``lbm finetune`` preset name -> function building it."""


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "debug": debug,
    "small": small,
    "quickstart": quickstart,
    "base": base,
    "large": large,
}
"""Preset name -> function building it."""


def preset(name: str, finetune: bool = False) -> TrainConfig:
    """The named training (or, with ``finetune``, fine-tuning) preset; a clear error lists the valid names."""
    table = FINETUNE_PRESETS if finetune else PRESETS
    if name not in table:
        kind = "fine-tuning" if finetune else "training"
        raise ValueError(f"unknown {kind} preset {name!r}; valid: {', '.join(table)}")
    return table[name]()
