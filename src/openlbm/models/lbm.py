"""The LBM network: per-embodiment projections around shared encoders and a shared diffusion-transformer trunk.

Observation tokens per sample (one group of samples per embodiment; groups with fewer tokens are padded and
masked): for each of the ``T`` history steps one token per camera (shared vision encoder + camera embedding) and
one proprio token (per-embodiment state projection), each plus a learned step embedding; then one language token
and one learned embodiment token. Action tokens: the per-embodiment input projection of the noisy chunk (native
action dims only) plus a position embedding; the trunk's output goes through the per-embodiment output projection.

Two auxiliary objectives share these parts (:mod:`openlbm.policies.lbm` computes their losses):

- **latent actions** (``latent_dim > 0``): the same trunk and head denoise a chunk of latent actions (codes a latent
  action model inferred from video, ``[B, H, L]``) through one embodiment-independent input/output projection
  pair, so video without robot actions trains everything but the action projections;
- **image-text alignment**: :meth:`LBMModel.image_text_logits` scores every image of an image-text batch against
  every caption, with the camera encoder's image token on one side and the language projection of the caption's
  frozen embedding (the same projection instructions go through) on the other.

Everything here works in normalized units on tensors; normalization, text encoding and validation belong to the
policy (:mod:`openlbm.policies.lbm`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from openlbm.models.heads import DiffusionConfig, DiffusionHead, FlowConfig, FlowHead
from openlbm.models.language import LanguageProjection
from openlbm.models.rng import SampleRNG
from openlbm.models.trunk import DiT, TrunkConfig, TrunkContext
from openlbm.models.vision import VisionConfig
from openlbm.types import EmbodimentSpec


@dataclass
class ObsEncoding:
    """Everything the denoiser needs from one observation batch; computed once per chunk."""

    ctx: TrunkContext
    groups: dict[str, Tensor | None]
    """embodiment name -> long indices of its samples in the batch (None: it holds the whole batch)."""
    batch_size: int


def index_tensor(values: Sequence[int], device: torch.device) -> Tensor:
    """int64 tensor of host integers on ``device``, copied without blocking the host (through pinned memory on
    CUDA: a copy from pageable memory would wait for the device)."""
    t = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def group_indices(embodiment: Sequence[str], device: torch.device) -> dict[str, Tensor | None]:
    """``["a", "b", "a"] -> {"a": [0, 2], "b": [1]}`` (insertion order = first appearance); ``{"a": None}`` when
    one embodiment holds the whole batch (nothing to gather or scatter, nothing to copy to the device)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(embodiment):
        groups.setdefault(name, []).append(i)
    if len(groups) == 1:
        return dict.fromkeys(groups)
    return {k: index_tensor(v, device) for k, v in groups.items()}


def per_group(groups: dict[str, Tensor | None], batch: int, fn: Callable[[str, Tensor | None], Tensor]) -> Tensor:
    """Apply ``fn(name, idx)`` to each embodiment's samples and scatter the results back to batch order.

    ``idx`` is None when one embodiment holds the whole batch (no gather/scatter on the common path).
    """
    if len(groups) == 1:
        return fn(next(iter(groups)), None)
    parts = {name: fn(name, idx) for name, idx in groups.items()}
    first = next(iter(parts.values()))
    out = first.new_zeros((batch, *first.shape[1:]))
    for name, idx in groups.items():
        out[idx] = parts[name]  # type: ignore[index]
    return out


def _linear(d_in: int, d_out: int) -> nn.Linear:
    """``nn.Linear``; 0-wide for an embodiment without actions or state (action-less video), where torch's "zero-element
    tensor" init warning would only alarm the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(d_in, d_out)


class LBMModel(nn.Module):
    """Vision/language/proprio encoders + DiT trunk + flow or diffusion head, for a fixed set of embodiments."""

    def __init__(
        self,
        embodiments: Sequence[EmbodimentSpec],
        vision: VisionConfig,
        trunk: TrunkConfig,
        head: FlowConfig | DiffusionConfig,
        n_obs_steps: int,
        horizon: int,
        text_dim: int,
        latent_dim: int = 0,
        image_text_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        d = trunk.dim
        self.specs = {e.name: e for e in embodiments}
        self.max_action_dim = max(e.action_dim for e in embodiments)
        self.horizon = horizon
        for e in embodiments:
            vision.check_image_size(tuple(e.image_size))
        self.vision = vision.build(d)
        self.language = LanguageProjection(text_dim, d)
        self.step_pos = nn.Parameter(torch.randn(n_obs_steps, d) * 0.02)
        self.state_in = nn.ModuleDict({e.name: _linear(e.state_dim, d) for e in embodiments})
        self.camera_emb = nn.ParameterDict({e.name: nn.Parameter(torch.randn(len(e.cameras), d) * 0.02) for e in embodiments})
        self.embodiment_token = nn.ParameterDict({e.name: nn.Parameter(torch.randn(d) * 0.02) for e in embodiments})
        self.action_in = nn.ModuleDict({e.name: _linear(e.action_dim, d) for e in embodiments})
        self.action_out = nn.ModuleDict({e.name: _linear(d, e.action_dim) for e in embodiments})
        for out in self.action_out.values():
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        self.image_text_temperature = image_text_temperature
        self.trunk = DiT(trunk, horizon)
        self.head: FlowHead | DiffusionHead = FlowHead(head) if isinstance(head, FlowConfig) else DiffusionHead(head)
        # Auxiliary heads come last so that adding one leaves every other initial weight as it was: on actions
        # alone, a policy with and without them starts from the same weights and gets the same gradients.
        self.latent_dim = latent_dim
        if latent_dim > 0:
            self.latent_in = nn.Linear(latent_dim, d)
            self.latent_out = nn.Linear(d, latent_dim)
            nn.init.zeros_(self.latent_out.weight)
            nn.init.zeros_(self.latent_out.bias)

    def shard_units(self) -> list[nn.Module]:
        """The repeated layers, in the order a forward pass runs them (vision blocks, observation layers, trunk
        blocks): the units a per-block sharding wrapper (FSDP2) gathers one at a time."""
        vision_blocks = list(getattr(self.vision.backbone, "blocks", ()))  # a ViT's; a CNN stays in the root unit
        return [*vision_blocks, *self.trunk.obs_layers, *self.trunk.blocks]

    # -- observation ------------------------------------------------------------------------------------------
    def _group_tokens(
        self, name: str, images: dict[str, Tensor], state: Tensor, lang: Tensor, rng: SampleRNG | None,
        cached: bool = False,
    ) -> Tensor:
        """Tokens of one embodiment's samples: ``[b, T*(n_cam+1) + 2, D]``. ``cached``: ``images`` holds the frozen
        backbone's feature maps ``[b, T, C, h, w]`` per camera instead of pixels (a feature cache)."""
        spec = self.specs[name]
        b, t = state.shape[:2]
        rand = None if rng is None else rng.rand
        cams = torch.stack([images[c] for c in spec.cameras], dim=2)  # n_cam x [b, T, ...] -> [b, T, n_cam, ...]
        flat = cams.flatten(0, 2)  # [b, T, n_cam, ...] -> [b*T*n_cam, ...]
        feat = flat if cached else self.vision.features(flat, rand)
        img_tok = self.vision.pool_features(feat, rand).view(b, t, len(spec.cameras), -1)  # [b*T*n_cam, D] -> [b, T, n_cam, D]
        img_tok = img_tok + self.camera_emb[name][None, None]
        state_tok = self.state_in[name](state[..., : spec.state_dim])[:, :, None]  # [b, T, D] -> [b, T, 1, D]
        step_tok = torch.cat([img_tok, state_tok], dim=2) + self.step_pos[None, :t, None]  # [b, T, n_cam+1, D]
        extra = torch.stack([self.language(lang), self.embodiment_token[name].expand(b, -1)], dim=1)  # [b, 2, D]
        return torch.cat([step_tok.flatten(1, 2), extra], dim=1)  # [b, T*(n_cam+1), D] ++ [b, 2, D]

    def encode_observation(
        self,
        images: dict[str, Tensor],
        state: Tensor,
        lang: Tensor,
        embodiment: Sequence[str],
        rng: SampleRNG | None = None,
        cached: bool = False,
    ) -> ObsEncoding:
        """images ``cam -> uint8 [B, T, 3, H, W]`` (or, ``cached``, a frozen backbone's feature maps
        ``[B, T, C, h, w]``), normalized state ``[B, T, S]``, text embedding ``[B, E]``.

        ``rng`` given = training (random crop + color jitter, or feature shifts); None = evaluation (center crop).
        """
        batch = state.shape[0]
        groups = group_indices(embodiment, state.device)
        if len(groups) == 1:
            tokens = self._group_tokens(next(iter(groups)), images, state, lang, rng, cached)
            mask = None  # every token is real: the trunk skips masking altogether
        else:
            parts = {}
            for name, idx in groups.items():
                assert idx is not None
                cams = {c: images[c][idx] for c in self.specs[name].cameras}
                sub = None if rng is None else rng.subset(idx)
                parts[name] = self._group_tokens(name, cams, state[idx], lang[idx], sub, cached)
            n_max = max(p.shape[1] for p in parts.values())
            first = next(iter(parts.values()))
            tokens = first.new_zeros(batch, n_max, first.shape[-1])
            mask = torch.zeros(batch, n_max, dtype=torch.bool, device=first.device)
            for name, idx in groups.items():
                assert idx is not None
                n = parts[name].shape[1]
                tokens[idx, :n] = parts[name]
                mask[idx, :n] = True
        return ObsEncoding(ctx=self.trunk.prepare(tokens, mask), groups=groups, batch_size=batch)

    # -- actions ----------------------------------------------------------------------------------------------
    def denoise(self, enc: ObsEncoding, x: Tensor, t: Tensor, latent: bool = False) -> Tensor:
        """Noisy normalized chunk ``[B, H, A_max]`` + time ``[B]`` -> head prediction ``[B, H, A_max]``; with
        ``latent``, a noisy latent-action chunk ``[B, H, L]`` -> ``[B, H, L]`` (shared projections)."""
        if latent:
            if self.latent_dim == 0:
                raise ValueError("this model has no latent-action head (latent_dim = 0)")
            return self.latent_out(self.trunk(self.latent_in(x), t, enc.ctx))

        def project_in(name: str, idx: Tensor | None) -> Tensor:
            xs = x if idx is None else x[idx]
            return self.action_in[name](xs[..., : self.specs[name].action_dim])

        tokens = per_group(enc.groups, enc.batch_size, project_in)  # [B, H, D]
        hidden = self.trunk(tokens, t, enc.ctx)

        def project_out(name: str, idx: Tensor | None) -> Tensor:
            hs = hidden if idx is None else hidden[idx]
            out = self.action_out[name](hs)  # [b, H, A_native]
            pad = x.shape[-1] - out.shape[-1]
            return nn.functional.pad(out, (0, pad)) if pad else out

        return per_group(enc.groups, enc.batch_size, project_out)

    def native_dim_mask(self, embodiment: Sequence[str], width: int, device: torch.device) -> Tensor:
        """bool ``[B, width]``: True on each sample's embodiment's real action dims."""
        names = set(embodiment)
        if len(names) == 1:  # the common case: no per-sample table to copy to the device
            dim = self.specs[next(iter(names))].action_dim
            return (torch.arange(width, device=device) < dim)[None].expand(len(embodiment), width)  # [1, W] -> [B, W]
        dims = index_tensor([self.specs[e].action_dim for e in embodiment], device)
        return torch.arange(width, device=device)[None] < dims[:, None]

    def loss(self, enc: ObsEncoding, action: Tensor, noise: Tensor, u: Tensor, latent: bool = False) -> Tensor:
        """Elementwise squared error ``[B, H, A]`` of the head's target for normalized ``action`` (or, with
        ``latent``, for a latent-action chunk ``[B, H, L]``)."""
        x_t, t, target = self.head.training_pair(action, noise, u)
        return (self.denoise(enc, x_t, t, latent) - target).pow(2)

    def image_text_logits(self, images: Tensor, text: Tensor) -> Tensor:
        """Cosine similarities / temperature ``[N, N]`` of uint8 images ``[N, 3, H, W]`` (camera encoder, center crop)
        and frozen caption embeddings ``[N, E]`` (the instruction's language projection): row ``i`` scores image
        ``i`` against every caption."""
        img = nn.functional.normalize(self.vision(images, None), dim=-1)  # [N, D]
        txt = nn.functional.normalize(self.language(text), dim=-1)  # [N, D]
        return img @ txt.T / self.image_text_temperature

    def sample(
        self, enc: ObsEncoding, noise: Tensor, num_steps: int | None = None,
        guide: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Normalized action chunk ``[B, H, A]`` from ``noise`` (reusing ``enc`` at every step); ``guide`` =
        (target, weights, beta) samples guided towards ``target`` (flow head only: ``FlowHead.sample_guided``)."""
        if guide is None:
            return self.head.sample(lambda x, t: self.denoise(enc, x, t), noise, num_steps)
        if not isinstance(self.head, FlowHead):
            raise ValueError("real-time chunking guidance needs the flow head (policy.head='flow')")
        return self.head.sample_guided(lambda x, t: self.denoise(enc, x, t), noise, *guide, num_steps=num_steps)
