"""The trainer's sub-configs (optimizer, EMA, checkpoints, logging). ``TrainConfig`` composes them with the policy
and data configs in :mod:`openlbm.train.config`; they live here so they import nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay, and gradient clipping."""

    lr: float = 1e-4
    """Peak learning rate of the trunk/heads (after warmup)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-4
    """Decoupled weight decay; the policy's param groups exclude norms, biases and embeddings from it."""
    encoder_lr_mult: float = 0.1
    """Learning-rate multiplier for pretrained encoders (vision backbone); 1.0 trains them like the rest."""
    warmup_steps: int = 500
    """Linear warmup length in optimizer steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Shape after warmup: cosine decay to ``min_lr_ratio * lr`` at the last step, or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine schedule)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            raise ValueError(f"invalid optimizer config: {self}")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the weights; checkpoints and evaluation use the EMA weights."""

    enabled: bool = True
    """Keep an EMA copy. When off, the saved/evaluated policy is the raw trained one."""
    decay: float = 0.999
    """Maximum decay; reached once the warmup below has run its course."""
    power: float = 0.75
    """Decay warmup ``min(decay, 1 - (1 + step) ** -power)``: early steps track the weights closely."""
    update_after_step: int = 0
    """Copy the raw weights (decay 0) until this step, then start averaging."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0 or self.power <= 0:
            raise ValueError(f"EMA decay must be in [0, 1) and power > 0, got {self}")


@dataclass(frozen=True)
class CheckpointConfig:
    """When to write checkpoints and how many to keep."""

    every: int = 1000
    """Write a checkpoint every this many optimizer steps (and always at the end); 0 = only at the end."""
    keep_last_k: int = 3
    """Keep the newest ``k`` checkpoints and delete older ones (>= 1)."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep_last_k < 1:
            raise ValueError(f"checkpoint every must be >= 0 and keep_last_k >= 1, got {self}")


@dataclass(frozen=True)
class LogConfig:
    """Metrics logging: JSONL always, TensorBoard and W&B optionally, a rich progress bar on a terminal."""

    every: int = 50
    """Log averaged metrics every this many optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard event files to ``run_dir/tb`` (skipped with a warning when tensorboard is missing)."""
    wandb: bool = False
    """Log to Weights & Biases when the ``wandb`` package is installed (a warning otherwise)."""
    wandb_project: str = "openlbm"
    """W&B project name."""
    progress: bool = True
    """Show a rich progress bar (step, loss, samples/s, data-wait share, ETA)."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"log every must be >= 1, got {self.every}")
