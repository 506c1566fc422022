"""``TrainConfig``: everything one training run needs, as one frozen dataclass (saved to ``run_dir/config.json``),
and its sub-configs (optimizer, EMA, checkpoints, logging).

Named presets live in :mod:`openlbm.configs.presets`; the ``lbm train`` command overrides any field from the
command line (``--optim.lr 3e-4``, ``--data.sources ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openlbm.data.imagetext import ImageTextConfig
from openlbm.data.mixture import DataConfig, SourceConfig
from openlbm.jsonio import to_jsonable, write_json
from openlbm.policies.config import PolicyConfig
from openlbm.policies.latent_action import LAMConfig


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


Part = Literal["vision", "language", "trunk", "embodiment"]
"""Policy parts for freezing and learning-rate multipliers (``openlbm.train.finetune.param_part`` maps names):
``vision`` the image encoder, ``language`` the instruction projection, ``trunk`` the transformer and the observation
step embedding, ``embodiment`` the per-embodiment projections, camera embeddings and embodiment tokens."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning knobs (used with ``TrainConfig.init_from``); the defaults change nothing, so ``lbm train`` from
    scratch and ``lbm finetune`` run the same loop. The fine-tuning LR and warmup are ``optim.lr`` and
    ``optim.warmup_steps`` (the ``finetune-*`` presets lower them)."""

    freeze: tuple[Part, ...] = ()
    """Parts whose weights stay exactly as loaded (``requires_grad=False``, left out of the optimizer)."""
    language_lr_mult: float = 1.0
    """Learning-rate multiplier of the language projection."""
    trunk_lr_mult: float = 1.0
    """Learning-rate multiplier of the transformer trunk."""
    embodiment_lr_mult: float = 1.0
    """Learning-rate multiplier of the per-embodiment projections (new embodiments' parts start from scratch here)."""
    replay: tuple[SourceConfig, ...] = ()
    """Pretraining datasets mixed back in (replay); their stats never enter normalization (``in_stats=False``)."""
    replay_fraction: float = 0.0
    """Share of every batch (in expectation) drawn from ``replay``, split over them by their ``weight``."""
    recompute_stats: bool = False
    """Normalize every embodiment with stats recomputed from the fine-tuning data. By default an embodiment the
    pretrained policy knows keeps its pretrained stats (its loaded projections were trained on them); new
    embodiments always take the fine-tuning data's. ``init_report.json`` records which ("stats")."""

    def __post_init__(self) -> None:
        bad = [p for p in self.freeze if p not in ("vision", "language", "trunk", "embodiment")]
        if bad:
            raise ValueError(f"finetune.freeze: unknown part(s) {bad}; parts are vision, language, trunk, embodiment")
        if min(self.lr_mults().values()) < 0:
            raise ValueError(f"finetune learning-rate multipliers must be >= 0, got {self.lr_mults()}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"finetune.replay_fraction must be in [0, 1), got {self.replay_fraction}")

    def lr_mults(self) -> dict[str, float]:
        """Part -> learning-rate multiplier (the vision backbone's is ``policy.vision.lr_mult``, in training and
        fine-tuning alike)."""
        return {"language": self.language_lr_mult, "trunk": self.trunk_lr_mult, "embodiment": self.embodiment_lr_mult}

    @property
    def active(self) -> bool:
        """Whether any knob differs from plain training."""
        return bool(self.freeze or self.replay or self.recompute_stats
                    or any(m != 1.0 for m in self.lr_mults().values()))


@dataclass(frozen=True)
class ObjectiveWeights:
    """How the training objectives are summed. Each objective is first averaged over the global batch on its own
    (over the elements that have it: rows with actions, rows with latent labels, image-text pairs); the step's loss
    is the weighted sum. An objective absent from a global batch contributes nothing to that step."""

    action: float = 1.0
    """Action chunks (rows of datasets with actions)."""
    latent: float = 1.0
    """Latent-action chunks (rows of datasets labelled by ``lbm data label-latent``; needs ``policy.latent_dim``)."""
    image_text: float = 0.1
    """Image-caption alignment (batches of ``TrainConfig.image_text``)."""

    def __post_init__(self) -> None:
        if min(self.action, self.latent, self.image_text) < 0:
            raise ValueError(f"objective weights must be >= 0, got {self}")

    def weight(self, name: str) -> float:
        """The weight of objective ``name``; 1 for a model's single unnamed ``loss``."""
        return float(getattr(self, name)) if name in ("action", "latent", "image_text") else 1.0


@dataclass(frozen=True)
class TrainConfig:
    """One training run: policy, data, optimisation, checkpointing, logging and hardware settings."""

    policy: PolicyConfig
    """The policy architecture (``openlbm.configs.presets.policy_preset(name)`` gives the sizes)."""
    data: DataConfig
    """Datasets and their mixture weights, loader workers."""
    run_dir: Path = Path("runs/debug")
    """Output dir: config.json, metrics.jsonl, tb/, checkpoints/. Must be empty or a previous run with --resume."""
    steps: int = 1000
    """Number of optimizer steps."""
    batch_size: int = 32
    """Global batch size per optimizer step (summed over ranks and gradient-accumulation micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; each rank's micro-batch is ``batch_size / (world_size * grad_accum)``."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, learning-rate schedule and gradient clipping."""
    ema: EMAConfig = field(default_factory=EMAConfig)
    """Exponential moving average of the weights (what gets saved and evaluated)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint frequency and retention."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics sinks and frequency."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` runs forward/backward under bfloat16 autocast on the training device, CUDA or CPU (weights and
    optimizer stay fp32). Under FSDP2 the parameters are also gathered in bf16 and the gradients reduced in fp32
    (``openlbm.train.distributed.fsdp_mixed_precision``)."""
    compile: bool = False
    """``torch.compile`` the policy's ``compute_loss`` (worth it on GPU for long runs)."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Data-parallel strategy under torchrun: DDP (replicated) or FSDP2 (sharded, for large presets)."""
    seed: int = 0
    """Seeds model init, sampling order and all random generators."""
    deterministic: bool = True
    """Use deterministic algorithms (bitwise-reproducible on CPU; slower on GPU)."""
    resume: bool = False
    """Continue from ``run_dir/checkpoints/latest`` (exact: weights, optimizer, EMA, RNG, data order)."""
    init_from: Path | None = None
    """Initialise weights from a pretrained policy (run dir, checkpoint dir or policy dir) to fine-tune.
    Embodiments that the pretrained policy lacks get freshly initialised heads."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning knobs: frozen parts, per-part learning-rate multipliers, replay of pretraining data."""
    eval_every: int = 0
    """Call the evaluation hook every this many steps (0 = never); its metrics are logged as ``eval/<name>``."""
    eval_timeout_s: float = 7200.0
    """Under torchrun, how long the other ranks wait for rank 0's evaluation before stopping with an error. They
    wait on the rendezvous store, not in a collective, so this may exceed the collective timeout."""
    image_text: ImageTextConfig | None = None
    """Image-caption pairs (WebDataset shards) trained in the same steps as the robot data: each micro-batch gets
    one batch of ``image_text.batch_size`` pairs from this stream (split over ranks), and the policy aligns its
    camera encoder with the captions (``objectives.image_text``). ``image_text.image_size`` must be the policy's
    camera image size. None = no image-text co-training."""
    objectives: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    """Weights of the action, latent-action and image-text objectives in the step's loss."""
    cache_features: bool = True
    """With a frozen vision backbone (``policy.vision.frozen``), train on its per-frame features from a feature cache
    (built on first use, then reused) instead of decoding video and running the backbone every step. False = the
    same computation live (slower; the result is the same)."""
    feature_cache: Path | None = None
    """Folder of feature caches, one subfolder per (dataset, cameras, image size, encoder weights); runs pointed at
    the same folder share them. None = ``run_dir/features``."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"steps, batch_size and grad_accum must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.grad_accum}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.eval_timeout_s <= 0:
            raise ValueError(f"eval_timeout_s must be > 0, got {self.eval_timeout_s}")

    def micro_batch_size(self, world_size: int) -> int:
        """Samples per rank per forward pass; errors when the global batch does not split evenly."""
        per_step = world_size * self.grad_accum
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by world_size*grad_accum = {world_size}*"
                f"{self.grad_accum}"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def save(self, path: Path) -> None:
        write_json(path, self)


@dataclass(frozen=True)
class LAMTrainConfig(TrainConfig):
    """A training run of a latent action model (``lbm train lam``): the same loop and fields as any run, with a
    :class:`~openlbm.policies.latent_action.LAMConfig` as the model. The loop reads only what both configs have:
    ``build(embodiments, stats)``, ``n_obs_steps`` and ``horizon`` (what the data windows must hold)."""

    policy: LAMConfig  # type: ignore[assignment]
    """The latent action model and its frame gap (``--policy.frame-gap``, ``--policy.model.codebook-size``...)."""
