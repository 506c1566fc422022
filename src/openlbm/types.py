"""The openlbm data contract, written once.

Everything that crosses a package boundary (dataset -> trainer -> policy -> evaluator / server) is one of the types
below. Shapes use these letters:

    B  batch            T  observation steps (``n_obs_steps``; 1 for a single live frame)
    H  horizon          A  action dim (padded to the policy's max across embodiments)
    S  state dim (padded likewise)                 C, Hi, Wi  image channels (3), height, width

Conventions (kept everywhere, so no module ever guesses):
- Images are ``uint8`` channel-first ``[..., 3, Hi, Wi]`` in batches and observations; they are only turned into
  floats inside the model. Simulators, video decoders and the wire produce channel-last ``[Hi, Wi, 3]`` numpy
  frames; the one conversion point is :func:`chw_from_hwc` (used by :func:`observation_from_frames`, the dataset
  reader and the policy server), and :func:`hwc_from_chw` is its inverse (a client putting images on the wire).
- State and actions are float32 in *physical* units. Normalization belongs to the policy (it owns its stats) and is
  never applied by the data layer.
- Feature keys follow the LeRobot v3 names: ``observation.images.<camera>``, ``observation.state``, ``action``;
  ``latent_action`` (float32 ``[L]`` per frame) is the latent-action label a latent action model writes.
- Data without actions (video) still yields normal batches: its ``action`` rows are zeros with ``action_is_pad``
  all True, so every action loss ignores them; a source without state has state dim 0 (zeros after padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from openlbm.embodiment import EmbodimentSpec

IMAGE_PREFIX = "observation.images."
FEATURE_PREFIX = "observation.features."
"""A camera's cached vision features in a sample (``observation.features.<camera>``, float16 ``[T, C, h, w]``)."""
STATE_KEY = "observation.state"
ACTION_KEY = "action"
LATENT_ACTION_KEY = "latent_action"


def camera_key(camera: str) -> str:
    """``"corner2"`` -> ``"observation.images.corner2"``."""
    return camera if camera.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + camera


@dataclass(frozen=True)
class FeatureSpec:
    """One per-frame feature of a dataset, as in LeRobot's ``meta/info.json`` ``features`` entries."""

    dtype: str
    """``"video"``, ``"image"``, ``"float32"``, ``"int64"``, ``"bool"``, ``"string"``..."""
    shape: tuple[int, ...]
    """Per-frame shape; images are channel-last ``(Hi, Wi, 3)`` on disk, as LeRobot writes them."""
    names: tuple[str, ...] | None = None
    """Optional names of the dimensions (e.g. ``("x", "y", "z", "gripper")``)."""


@dataclass
class Observation:
    """A batch of observations with ``T`` steps of history.

    ``images[cam]``: uint8 ``[B, T, 3, Hi, Wi]``; ``state``: float32 ``[B, T, S]``; ``obs_is_pad``: bool ``[B, T]``
    (True where the step lies before the episode start and was filled by repeating the first frame).
    ``instruction`` and ``embodiment`` are per-sample strings. ``privileged`` is simulator state for scripted
    experts only (``[B, D]`` float); learned policies never read it. ``features[cam]``: float16
    ``[B, T, C, h, w]``, a frozen vision backbone's maps read from a feature cache in place of ``images[cam]``
    (training only; a batch has them for every camera or for none).
    """

    images: dict[str, Tensor]
    state: Tensor
    instruction: list[str]
    embodiment: list[str]
    obs_is_pad: Tensor | None = None
    task: list[str] | None = None
    privileged: Tensor | None = None
    features: dict[str, Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.state.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.state.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Observation:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            images={k: v.to(device, non_blocking=non_blocking) for k, v in self.images.items()},
            features=None if self.features is None else
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.features.items()},
            state=self.state.to(device, non_blocking=non_blocking),
            obs_is_pad=mv(self.obs_is_pad),
            privileged=mv(self.privileged),
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if shapes/dtypes break the contract."""
        if self.state.dtype != torch.float32 or self.state.ndim != 3:
            raise ValueError(f"observation.state must be float32 [B, T, S], got {self.state.dtype} {tuple(self.state.shape)}")
        b, t = self.state.shape[:2]
        for cam, img in self.images.items():
            if img.dtype != torch.uint8 or img.ndim != 5 or img.shape[:2] != (b, t) or img.shape[2] != 3:
                raise ValueError(
                    f"observation.images.{cam} must be uint8 [B={b}, T={t}, 3, H, W], got {img.dtype} {tuple(img.shape)}"
                )
        for cam, feat in (self.features or {}).items():
            if feat.dtype != torch.float16 or feat.ndim != 5 or feat.shape[:2] != (b, t):
                raise ValueError(
                    f"observation.features.{cam} must be float16 [B={b}, T={t}, C, h, w], got {feat.dtype} {tuple(feat.shape)}"
                )
        if len(self.instruction) != b or len(self.embodiment) != b:
            raise ValueError(f"instruction/embodiment must have {b} entries, got {len(self.instruction)}/{len(self.embodiment)}")
        if not torch.isfinite(self.state).all():
            raise ValueError("observation.state contains NaN or inf")


@dataclass
class Batch:
    """A training batch: observations plus the future action chunk.

    ``action``: float32 ``[B, H, A]`` (physical units, zero-padded beyond the embodiment's action dim);
    ``action_is_pad``: bool ``[B, H]`` (True past the episode end: excluded from the loss);
    ``action_dim_mask``: bool ``[B, A]`` (True for the embodiment's real action dims: padded dims excluded from the loss).
    Rows from a dataset without actions have ``action`` zeros and ``action_is_pad`` all True.
    """

    obs: Observation
    action: Tensor
    action_is_pad: Tensor
    action_dim_mask: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    """Bookkeeping that models ignore: ``episode_index``, ``index``, ``dataset`` (Tensors or lists)."""
    latent_action: Tensor | None = None
    """float32 ``[B, H, L]``: the dataset's per-frame ``latent_action`` feature over the same horizon window as
    ``action`` (same clamping past the episode end); zeros for rows whose dataset lacks the feature. ``None`` when no
    source of the batch has it."""
    latent_is_pad: Tensor | None = None
    """bool ``[B, H]``: True past the episode end and on every step of a row whose dataset lacks ``latent_action``
    (given exactly when ``latent_action`` is)."""
    image_text: ImageTextBatch | None = None
    """Image-caption pairs trained in the same step (the trainer attaches one batch of its image-text stream to each
    micro-batch when ``TrainConfig.image_text`` is set); ``None`` otherwise."""

    @property
    def batch_size(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(
            self,
            obs=self.obs.to(device, non_blocking=non_blocking),
            action=self.action.to(device, non_blocking=non_blocking),
            action_is_pad=self.action_is_pad.to(device, non_blocking=non_blocking),
            action_dim_mask=self.action_dim_mask.to(device, non_blocking=non_blocking),
            latent_action=None if self.latent_action is None else self.latent_action.to(device, non_blocking=non_blocking),
            latent_is_pad=None if self.latent_is_pad is None else self.latent_is_pad.to(device, non_blocking=non_blocking),
            image_text=None if self.image_text is None else self.image_text.to(device, non_blocking=non_blocking),
        )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if shapes/dtypes break the contract."""
        self.obs.validate()
        b = self.obs.batch_size
        if self.action.dtype != torch.float32 or self.action.ndim != 3 or self.action.shape[0] != b:
            raise ValueError(f"action must be float32 [B={b}, H, A], got {self.action.dtype} {tuple(self.action.shape)}")
        h, a = self.action.shape[1:]
        if self.action_is_pad.dtype != torch.bool or tuple(self.action_is_pad.shape) != (b, h):
            raise ValueError(f"action_is_pad must be bool [{b}, {h}], got {self.action_is_pad.dtype} {tuple(self.action_is_pad.shape)}")
        if self.action_dim_mask.dtype != torch.bool or tuple(self.action_dim_mask.shape) != (b, a):
            raise ValueError(
                f"action_dim_mask must be bool [{b}, {a}], got {self.action_dim_mask.dtype} {tuple(self.action_dim_mask.shape)}"
            )
        if not torch.isfinite(self.action).all():
            raise ValueError("action contains NaN or inf")
        if (self.latent_action is None) != (self.latent_is_pad is None):
            raise ValueError("latent_action and latent_is_pad must be given together (or both None)")
        if self.latent_action is not None and self.latent_is_pad is not None:
            lat, pad = self.latent_action, self.latent_is_pad
            if lat.dtype != torch.float32 or lat.ndim != 3 or tuple(lat.shape[:2]) != (b, h):
                raise ValueError(f"latent_action must be float32 [B={b}, H={h}, L], got {lat.dtype} {tuple(lat.shape)}")
            if pad.dtype != torch.bool or tuple(pad.shape) != (b, h):
                raise ValueError(f"latent_is_pad must be bool [{b}, {h}], got {pad.dtype} {tuple(pad.shape)}")
            if not torch.isfinite(lat).all():
                raise ValueError("latent_action contains NaN or inf")
        if self.image_text is not None:
            self.image_text.validate()


@dataclass
class EnvFrame:
    """One live observation from a simulator or robot, channel-last numpy, no batch or time dim."""

    images: dict[str, np.ndarray]
    """camera -> uint8 ``[Hi, Wi, 3]``."""
    state: np.ndarray
    """float32 ``[S]``."""
    instruction: str
    task: str = ""
    privileged: np.ndarray | None = None
    """Full simulator observation, for scripted experts only."""


def chw_from_hwc(images: np.ndarray) -> Tensor:
    """Channel-last uint8 numpy ``[..., Hi, Wi, 3]`` -> contiguous channel-first tensor ``[..., 3, Hi, Wi]``."""
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"expected channel-last images [..., Hi, Wi, 3], got shape {list(images.shape)}")
    # [..., Hi, Wi, 3] -> [..., 3, Hi, Wi]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def hwc_from_chw(images: Tensor) -> np.ndarray:
    """Inverse of :func:`chw_from_hwc`: tensor ``[..., 3, Hi, Wi]`` -> contiguous numpy ``[..., Hi, Wi, 3]``."""
    # [..., 3, Hi, Wi] -> [..., Hi, Wi, 3]
    return np.ascontiguousarray(images.detach().cpu().movedim(-3, -1).numpy())


def observation_from_frames(frames: Sequence[EnvFrame], embodiment: str) -> Observation:
    """Stack live frames into a ``T = 1`` :class:`Observation` (HWC numpy -> CHW uint8 tensors)."""
    if not frames:
        raise ValueError("observation_from_frames needs at least one frame")
    cams = list(frames[0].images)
    images = {}
    for cam in cams:
        stacked = np.stack([f.images[cam] for f in frames])  # [B, Hi, Wi, 3]
        images[cam] = chw_from_hwc(stacked)[:, None]  # [B, 3, Hi, Wi] -> [B, 1, 3, Hi, Wi]
    state = torch.from_numpy(np.stack([np.asarray(f.state, dtype=np.float32) for f in frames]))[:, None]  # [B, 1, S]
    priv = None
    if frames[0].privileged is not None:
        priv = torch.from_numpy(np.stack([np.asarray(f.privileged, dtype=np.float32) for f in frames]))
    return Observation(
        images=images,
        state=state,
        instruction=[f.instruction for f in frames],
        embodiment=[embodiment] * len(frames),
        obs_is_pad=torch.zeros(len(frames), 1, dtype=torch.bool),
        task=[f.task for f in frames],
        privileged=priv,
    )


@runtime_checkable
class PolicyLike(Protocol):
    """Anything the rollout runner, evaluator and server can drive: learned policies and scripted experts alike.

    ``select_action`` receives a ``T = 1`` observation for ``B`` independent environments and returns float32
    ``[B, action_dim]`` in physical units; the policy keeps its own observation history and action queue per
    batch slot. ``reset(indices)`` clears that state for the given slots (all when ``None``).

    Optional: ``frames_needed() -> list[bool]``, per slot whether the frame of the next step will be read at all;
    a ``False`` lets the rollout runner skip rendering that frame (learned policies answer from their chunk
    schedule, :meth:`openlbm.policies.execution.ChunkExecutor.frames_needed`). Without it every frame is rendered.
    """

    embodiment: EmbodimentSpec

    def select_action(self, obs: Observation) -> Tensor: ...

    def reset(self, indices: Sequence[int] | None = None) -> None: ...


@dataclass
class ImageTextBatch:
    """A batch of image-caption pairs (web-style data without robot state or actions).

    ``images``: uint8 ``[B, 3, Hi, Wi]`` (one image per row, channel-first like every image in a batch);
    ``text``: ``B`` captions. Objectives that use it (vision-language co-training) read only these two fields.
    """

    images: Tensor
    text: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    """Bookkeeping that models ignore: ``shard`` (file path) and ``key`` (the WebDataset member key) per row, so
    any row can be traced back to its file."""

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageTextBatch:
        return replace(self, images=self.images.to(device, non_blocking=non_blocking))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if shapes/dtypes break the contract."""
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [B, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        b = self.batch_size
        if len(self.text) != b or not all(isinstance(t, str) and t.strip() for t in self.text):
            raise ValueError(f"text must be {b} non-empty strings, got {len(self.text)} entries")
        for k in ("shard", "key"):
            if k in self.meta and len(self.meta[k]) != b:
                raise ValueError(f"meta[{k!r}] must have {b} entries, got {len(self.meta[k])}")
