"""Named presets: plain functions returning a frozen config, in two tables looked up the same way.

Policy sizes (:data:`POLICY_PRESETS`, :func:`policy_preset`), a :class:`~openlbm.policies.config.PolicyConfig`:

| policy  | params  | vision (feature grid at the default size)        | trunk (dim x depth) | text encoder     | for                |
|---------|---------|--------------------------------------------------|---------------------|------------------|--------------------|
| debug   | 0.07 M  | ResNet (8,16) x (1,1), no stem pool (8x8 @ 32)   | 32 x 2 (+1 obs)     | hash (no model)  | tests, smoke runs  |
| small   | 4.5 M   | EfficientNet-Lite0 to block 5, ImageNet, frozen  | 192 x 4 (+2 obs)    | all-MiniLM-L6-v2 | CPU training       |
|         |         | + 3x3 neck, 32 keypoints (8x8 @ 64)               |                     |                  |                    |
| aloha   | 4.6 M   | as small; horizon 50, ALOHA: temporal ensembling  | as small            | all-MiniLM-L6-v2 | ALOHA on a CPU     |
| base    | 96 M    | ResNet-18 (64..512) x (2,2,2,2), no stem pool     | 640 x 8 (+2 obs)    | all-MiniLM-L6-v2 | GPU pretraining    |
|         |         | (8x8 @ 128)                                      |                     |                  |                    |
| large   | 346 M   | as base                                          | 1024 x 12 (+4 obs)  | all-MiniLM-L6-v2 | multi-GPU (FSDP2)  |

Training presets (:data:`PRESETS`, :func:`preset`), a :class:`~openlbm.configs.train.TrainConfig`.
``lbm train <preset> --dataset PATH ...`` starts from one of these; every field can be overridden on the command
line. Datasets are never part of a preset (pass ``--dataset`` or ``--data.sources``).

| preset       | policy  | steps   | batch | for                                                         |
|--------------|---------|---------|-------|-------------------------------------------------------------|
| ``debug``    | debug   | 4       | 4     | tests and smoke runs: seconds on a laptop CPU                |
| ``small``    | small   | 20 000  | 64    | CPU-trainable single-task / few-task policies               |
| ``quickstart`` | small | 2 000   | 64    | ``lbm quickstart``: 5 Meta-World tasks, 64 px (time: README)   |
| ``aloha``    | aloha   | 20 000  | 64    | ALOHA: small, 50-step chunks, temporal ensembling on ALOHA  |
| ``aloha-debug`` | (debug) | 4    | 4     | tests of ALOHA's per-embodiment execution                   |
| ``base``     | base    | 200 000 | 256   | 96 M-parameter multitask pretraining on GPU (bf16)          |
| ``large``    | large   | 400 000 | 1024  | 346 M parameters, FSDP2 over many GPUs                      |
| ``lam``      | (LAM)   | 6 000   | 64    | a latent action model on video (docs/latent-actions.md)     |
| ``lam-debug``| (LAM)   | 4       | 4     | tests and smoke runs of the latent action model             |

The ``lam`` presets are :class:`~openlbm.configs.train.LAMTrainConfig`: the same loop trains a latent action model
(:class:`~openlbm.policies.latent_action.LAMConfig`) instead of a policy; it reads frames only.

Fine-tuning presets (:data:`FINETUNE_PRESETS`, ``preset(name, finetune=True)``; ``lbm finetune <preset>
--init-from PRETRAINED --dataset NEW``) start from the training preset of the same name with a lower peak learning
rate and a short warmup, since the weights are already trained; the other fine-tuning knobs (freezing, per-part
multipliers, replay) are ``--finetune.*`` flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from openlbm.configs.train import (
    CheckpointConfig,
    EMAConfig,
    LAMTrainConfig,
    LogConfig,
    OptimConfig,
    TrainConfig,
)
from openlbm.data.mixture import DataConfig
from openlbm.models.heads import DiffusionConfig, FlowConfig
from openlbm.models.latent_action import LatentActionConfig
from openlbm.models.trunk import TrunkConfig
from openlbm.models.vision import VisionConfig
from openlbm.policies.config import EmbodimentExecution, LanguageConfig, PolicyConfig
from openlbm.policies.latent_action import LAMConfig

T = TypeVar("T")


# -- policy sizes ------------------------------------------------------------------------------------------------------
def debug_policy() -> PolicyConfig:
    """0.07 M parameters, hash text encoder: tests and smoke runs."""
    return PolicyConfig(
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        flow=FlowConfig(num_steps=4),
        diffusion=DiffusionConfig(train_steps=50, sample_steps=4),
        vision=VisionConfig(widths=(8, 16), depths=(1, 1), stem_width=8, stem_pool=False, num_keypoints=8, group_size=4),
        language=LanguageConfig(encoder="hash", hash_dim=32),
        trunk=TrunkConfig(dim=32, depth=2, heads=4, obs_depth=1, mlp_ratio=2.0),
    )


def small_vision() -> VisionConfig:
    """ImageNet EfficientNet-Lite0 (shipped in a package), frozen, cut after block 5 (stride 8: an 8x8 map of 40
    channels at 64 px), a trainable 3x3 neck and 32 spatial-softmax keypoints: features cached once per frame."""
    return VisionConfig(kind="efficientnet", efficientnet_blocks=5, imagenet_weights=True, frozen=True, neck_width=64,
                        num_keypoints=32, group_size=16)


def small_policy() -> PolicyConfig:
    """4.5 M parameters (4.5 M trainable on the frozen encoder's features): CPU training."""
    return PolicyConfig(
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        flow=FlowConfig(num_steps=10),
        vision=small_vision(),
        trunk=TrunkConfig(dim=192, depth=4, heads=6, obs_depth=2, mlp_ratio=4.0),
    )


def base_policy() -> PolicyConfig:
    """96 M parameters: GPU pretraining."""
    return PolicyConfig(
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        vision=VisionConfig(num_keypoints=64, stem_pool=False),
        trunk=TrunkConfig(dim=640, depth=8, heads=10, obs_depth=2),
    )


def large_policy() -> PolicyConfig:
    """346 M parameters: multi-GPU (FSDP2) pretraining."""
    return replace(
        base_policy(),
        horizon=32,
        n_action_steps=16,
        trunk=TrunkConfig(dim=1024, depth=12, heads=16, obs_depth=4),
    )


ALOHA_EXECUTION = EmbodimentExecution("aloha_bimanual", n_action_steps=1, temporal_ensemble=0.01)
"""ALOHA's chunk schedule (the ACT paper's): a chunk every 20 ms control step, the overlapping predictions of the
last ``horizon`` chunks averaged with weights ``exp(-0.01 i)``. Joint-position targets at 50 Hz jump where one
chunk hands over to the next; ensembling smooths them (the name is ``openlbm.envs.aloha.EMBODIMENT_NAME``)."""


def aloha_policy() -> PolicyConfig:
    """The small policy with ALOHA's chunking: 50-step chunks (1 s at 50 Hz), temporal ensembling for the ALOHA
    embodiment; any other embodiment of the same policy executes 25 steps per chunk."""
    return replace(small_policy(), horizon=50, n_action_steps=25, embodiment_execution=(ALOHA_EXECUTION,))


POLICY_PRESETS: dict[str, Callable[[], PolicyConfig]] = {
    "debug": debug_policy,
    "small": small_policy,
    "aloha": aloha_policy,
    "base": base_policy,
    "large": large_policy,
}
"""Policy size name -> function building it."""


# -- training runs -----------------------------------------------------------------------------------------------------
def debug() -> TrainConfig:
    """Tiny everything: a few steps of the debug policy, no workers, no TensorBoard. Runs in seconds."""
    return TrainConfig(
        policy=debug_policy(),
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
        policy=small_policy(),
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
        # 2 000 steps x 64 samples: ~9 passes over the 40 demos x 5 tasks (about 15 000 frames) at 64 px
        steps=2_000,
        optim=OptimConfig(lr=3e-4, warmup_steps=100, weight_decay=1e-4),
        ema=EMAConfig(decay=0.995),
        checkpoint=CheckpointConfig(every=1_000, keep_last_k=2),
    )


def aloha() -> TrainConfig:
    """The small preset with ALOHA's chunking (:func:`aloha_policy`): bimanual 50 Hz joint control on a CPU."""
    return replace(small(), policy=aloha_policy(), run_dir=Path("runs/aloha"))


def aloha_debug() -> TrainConfig:
    """The debug preset with ALOHA's schedule on 16-step chunks: tests of the per-embodiment execution."""
    policy = replace(debug_policy(), horizon=16, n_action_steps=8, embodiment_execution=(ALOHA_EXECUTION,))
    return replace(debug(), policy=policy, run_dir=Path("runs/aloha-debug"))


def base() -> TrainConfig:
    """96 M parameters: multitask pretraining on one or more GPUs with bf16 autocast and torch.compile."""
    return TrainConfig(
        policy=base_policy(),
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
    """346 M parameters: FSDP2-sharded pretraining over many GPUs."""
    return replace(
        base(),
        policy=large_policy(),
        run_dir=Path("runs/large"),
        steps=400_000,
        batch_size=1024,
        distributed="fsdp",
        optim=OptimConfig(lr=1e-4, warmup_steps=5_000, weight_decay=1e-4),
    )


def lam() -> LAMTrainConfig:
    """A latent action model on video (frames only; actions and state are ignored): ~1 M parameters, CPU-trainable
    at 64 px. Label datasets with it afterwards: ``lbm data label-latent --lam RUN``."""
    return LAMTrainConfig(
        policy=LAMConfig(frame_gap=8),
        data=replace(DataConfig(), num_workers=2),
        run_dir=Path("runs/lam"),
        steps=6_000,
        batch_size=64,
        optim=OptimConfig(lr=3e-4, warmup_steps=200, weight_decay=1e-4),
        # the codebook is a moving average of the live encoder: label with the live weights, not a weight EMA
        ema=EMAConfig(enabled=False),
        checkpoint=CheckpointConfig(every=1_000, keep_last_k=2),
        log=LogConfig(every=50),
    )


def lam_debug() -> LAMTrainConfig:
    """Tiny latent action model, a few steps: tests and smoke runs."""
    model = LatentActionConfig(groups=2, codebook_size=4, code_dim=4, encoder_widths=(8, 16), encoder_hidden=32,
                               pool_size=2, decoder_widths=(8, 16), decoder_blocks=1, group_size=4, ema_decay=0.9)
    return LAMTrainConfig(
        policy=LAMConfig(frame_gap=2, model=model),
        data=replace(DataConfig(), num_workers=0),
        run_dir=Path("runs/lam-debug"),
        steps=4,
        batch_size=4,
        optim=OptimConfig(lr=1e-3, warmup_steps=1, weight_decay=0.0),
        ema=EMAConfig(enabled=False),
        checkpoint=CheckpointConfig(every=2, keep_last_k=2),
        log=LogConfig(every=1, tensorboard=False, progress=False),
        device="cpu",
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
    "aloha": aloha,
    "aloha-debug": aloha_debug,
    "base": base,
    "large": large,
    "lam": lam,
    "lam-debug": lam_debug,
}
"""Preset name -> function building it."""


def policy_preset(name: str) -> PolicyConfig:
    """The named policy size; a clear error lists the valid names."""
    return _pick(POLICY_PRESETS, name, "policy")


def preset(name: str, finetune: bool = False) -> TrainConfig:
    """The named training (or, with ``finetune``, fine-tuning) preset; a clear error lists the valid names."""
    return _pick(FINETUNE_PRESETS, name, "fine-tuning") if finetune else _pick(PRESETS, name, "training")


def _pick(table: dict[str, Callable[[], T]], name: str, kind: str) -> T:
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; valid: {', '.join(table)}")
    return table[name]()
