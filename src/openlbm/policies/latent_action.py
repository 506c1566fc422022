"""``LAM``: a latent action model (:mod:`openlbm.models.latent_action`) as the trainer trains it and labelling loads
it: frame pairs from training batches, optimizer groups, and a directory loadable without the training code.

Frame pairs come from the dataset layer's observation window, unchanged: with ``n_obs_steps = frame_gap + 1`` the
window of the sample at frame ``s`` holds frames ``s - k .. s``, and the pair is its first and last frame::

    frames   | 0   1   ...  s-k  ...  s  ... N-1 |
    window   |             [s-k  ...  s]         |   o_t = window[0], o_{t+k} = window[-1]

Before the episode start the window repeats frame 0 (``obs_is_pad``), so the first ``k`` samples of an episode
pair frame 0 with frames ``1 .. k-1``: real transitions over a shorter gap, kept. Actions and state are never read,
so video without actions trains it the same way. Labelling pairs ``(o_t, o_{min(t+k, N-1)})`` instead (the last
frame repeated past the episode end), so frame ``t``'s label describes the motion that starts there.

LAM dir (``save`` / ``load``)::

    config.json        {"format": "openlbm.latent_action", "version": 1, "lam": LAMConfig, "embodiments": [...],
                        "cameras": [...], "image_size": [h, w], "num_params": N}
    model.safetensors  the network's weights and codebook
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from openlbm.jsonio import from_jsonable, read_json, to_jsonable, write_json
from openlbm.models.latent_action import LatentActionConfig, LatentActionOutput
from openlbm.policies.pretrained import load_weights, state_dict_diff
from openlbm.policies.warm_start import InitReport
from openlbm.types import Batch, EmbodimentSpec

FORMAT = "openlbm.latent_action"
VERSION = 1


@dataclass(frozen=True)
class LAMConfig:
    """A latent action model and the frame pairs it learns from (``TrainConfig.policy`` of ``lbm train lam``)."""

    frame_gap: int = 4
    """``k``: the model encodes the change from frame ``t`` to frame ``t + k``."""
    cameras: tuple[str, ...] = ()
    """Cameras stacked into each frame, in order; empty = every camera of the (first) embodiment. Every embodiment
    of the training mixture must have them (map other names onto them with ``SourceConfig.rename``)."""
    model: LatentActionConfig = field(default_factory=LatentActionConfig)
    """Encoder, codebook and decoder sizes."""

    def __post_init__(self) -> None:
        if self.frame_gap < 1:
            raise ValueError(f"frame_gap must be >= 1, got {self.frame_gap}")

    @property
    def n_obs_steps(self) -> int:
        """Observation window the trainer asks the data for: ``frame_gap + 1`` frames, the pair at its ends."""
        return self.frame_gap + 1

    @property
    def horizon(self) -> int:
        """Action window the trainer asks the data for: one step (the LAM never reads actions)."""
        return 1

    def build(self, embodiments: Sequence[EmbodimentSpec], stats: dict[str, Any] | None = None) -> LAM:
        """A freshly initialised LAM for the cameras of ``embodiments`` (``stats`` unused: frames need none)."""
        return LAM(self, embodiments)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LAMConfig:
        """Read :meth:`to_dict` output; a key or value that does not fit raises ``ValueError`` naming the field."""
        return from_jsonable(cls, d, "lam")


class LAM(nn.Module):
    """Latent action model over the stacked cameras of one or more embodiments (same cameras, same image size)."""

    def __init__(self, config: LAMConfig, embodiments: Sequence[EmbodimentSpec]) -> None:
        super().__init__()
        if not embodiments:
            raise ValueError("a latent action model needs at least one embodiment (the training data's)")
        self.config = config
        self.embodiments = list(embodiments)
        self.cameras = tuple(config.cameras or embodiments[0].cameras)
        if not self.cameras:
            raise ValueError(f"embodiment {embodiments[0].name!r} has no cameras: a latent action model needs video")
        for e in self.embodiments:
            missing = [c for c in self.cameras if c not in e.cameras]
            if missing:
                raise ValueError(f"embodiment {e.name!r} lacks camera(s) {missing} of the latent action model "
                                 f"(it has {list(e.cameras)}); choose --policy.cameras or map names with rename")
            if tuple(e.image_size) != tuple(embodiments[0].image_size):
                raise ValueError(f"embodiments {embodiments[0].name!r} and {e.name!r} have different image sizes "
                                 f"{tuple(embodiments[0].image_size)} / {tuple(e.image_size)}; resize with "
                                 "SourceConfig.image_size")
        self.image_size = tuple(embodiments[0].image_size)
        self.model = config.model.build(len(self.cameras))

    @property
    def device(self) -> torch.device:
        return self.model.quantizer.codebook.device

    def stack(self, images: dict[str, Tensor]) -> Tensor:
        """Camera images ``{camera: uint8 [..., 3, H, W]}`` -> ``[..., 3 * cameras, H, W]`` in :attr:`cameras` order."""
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise ValueError(f"images lack camera(s) {missing} of the latent action model; got {sorted(images)}")
        for c in self.cameras:
            if tuple(images[c].shape[-2:]) != self.image_size:
                raise ValueError(f"camera {c!r}: images are {tuple(images[c].shape[-2:])}, the latent action model "
                                 f"was built for {self.image_size}")
        return torch.cat([images[c] for c in self.cameras], dim=-3)  # C x [..., 3, H, W] -> [..., 3C, H, W]

    def forward_pairs(self, batch: Batch) -> LatentActionOutput:
        """The model's output on the batch's frame pairs (first and last step of its observation window)."""
        frames = self.stack(batch.obs.images)  # [B, T, 3C, H, W]
        if frames.shape[1] != self.config.n_obs_steps:
            raise ValueError(f"observation window has {frames.shape[1]} steps, the latent action model pairs frames "
                             f"{self.config.frame_gap} apart and needs n_obs_steps = {self.config.n_obs_steps}")
        return self.model(frames[:, 0].to(self.device), frames[:, -1].to(self.device))

    def compute_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction + commitment loss, a mean over the batch's samples; metrics as in ``LatentActionOutput``
        (0-d device tensors: nothing is read back to the host)."""
        out = self.forward_pairs(batch)
        return out.loss, {**out.metrics, "loss": out.loss.detach()}

    def loss_weight(self, batch: Batch) -> Tensor:
        """Samples the loss averages over (the trainer's global-batch weighting): every one, actions or not."""
        return torch.tensor(float(batch.obs.batch_size), dtype=torch.float64)

    @torch.no_grad()
    def encode(self, o_t: dict[str, Tensor], o_tk: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Label frame pairs given as ``{camera: uint8 [B, 3, H, W]}``: (code vectors ``[B, L]``, indices ``[B, G]``)."""
        return self.model.encode(self.stack(o_t).to(self.device), self.stack(o_tk).to(self.device))

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no decay on norms and biases."""
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        return [{"name": "main_decay", "params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
                {"name": "main_no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": FORMAT})
        write_json(d / "config.json", {
            "format": FORMAT, "version": VERSION, "lam": self.config.to_dict(),
            "embodiments": [e.to_dict() for e in self.embodiments], "cameras": list(self.cameras),
            "image_size": list(self.image_size), "num_params": sum(p.numel() for p in self.parameters()),
        })
        return d

    @staticmethod
    def read_dir(directory: str | Path) -> tuple[LAMConfig, list[EmbodimentSpec]]:
        d = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d} is not a latent action model dir: {name} missing")
        meta = read_json(d / "config.json")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'config.json'}: format {meta.get('format')!r}, expected {FORMAT!r} (a latent "
                             "action model saved by `lbm train lam`)")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{d / 'config.json'}: version {meta['version']} is newer than this openlbm ({VERSION})")
        try:
            cfg = LAMConfig.from_dict(meta["lam"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"{d / 'config.json'}: {e}") from None
        return cfg, [EmbodimentSpec.from_dict(e) for e in meta["embodiments"]]

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> LAM:
        """Rebuild from a ``save`` dir, weights and codebook exactly."""
        d = Path(directory)
        cfg, embodiments = cls.read_dir(d)
        lam = cls(cfg, embodiments)
        lam._load_tensors(d)
        return lam.to(device).eval()

    def _load_tensors(self, d: Path) -> list[str]:
        tensors = load_weights(d / "model.safetensors")
        missing, unexpected, shapes = state_dict_diff(self.state_dict(), tensors, ours_label="config")
        if missing or unexpected or shapes:
            raise ValueError(f"{d / 'model.safetensors'} does not match this latent action model: missing "
                             f"{missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}")
        self.load_state_dict(tensors)
        return sorted(tensors)

    def init_from(self, directory: str | Path) -> InitReport:
        """Continue from another LAM dir's weights and codebook (same sizes), e.g. to adapt it to new video."""
        d = Path(directory)
        _, embodiments = self.read_dir(d)
        loaded = self._load_tensors(d)
        return InitReport(source=str(d), loaded=loaded, new=[], dropped=[],
                          source_embodiments=sorted(e.name for e in embodiments))
