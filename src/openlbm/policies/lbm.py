"""``LBMPolicy``: the LBM network + its normalizer + text encoder + chunked execution, saved as one directory.

Policy dir (``save`` / ``load``; no training code needed to load)::

    config.json        {"format": "openlbm.policy", "version": 1, "policy": PolicyConfig, "embodiments": [...],
                        "text_encoder": "...", "num_params": N}
    model.safetensors  the network's weights (never the frozen text encoder: it is reloaded from its package)
    stats.json         {embodiment: LeRobot-format stats}: the normalization the weights were trained with
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from openlbm.jsonio import read_json, to_jsonable, write_json
from openlbm.models.lbm import LBMModel, ObsEncoding, index_tensor
from openlbm.models.rng import SampleRNG
from openlbm.policies.config import PolicyConfig
from openlbm.policies.execution import (
    ChunkExecutor,
    ChunkRequest,
    ExecutionConfig,
    Guidance,
    frame_key,
    rtc_weights,
)
from openlbm.policies.normalize import MissingStatsError, Normalizer
from openlbm.policies.pretrained import load_vision_weights, load_weights, state_dict_diff
from openlbm.policies.text import build_text_encoder
from openlbm.policies.warm_start import InitReport, init_from
from openlbm.types import Batch, EmbodimentSpec, Observation

log = logging.getLogger(__name__)

FORMAT = "openlbm.policy"
VERSION = 1
INSTRUCTION_EMBEDDING = "instruction_embedding"
"""``batch.meta`` key of the instructions' frozen embeddings (:meth:`LBMPolicy.prepare_batch`)."""


def chunk_noise_seed(noise_seed: int, episode_key: int, chunk_index: int) -> int:
    """63-bit seed of one chunk's initial noise: a pure function of (noise seed, episode key, chunk index)."""
    key = hashlib.blake2b(f"openlbm-noise/{int(noise_seed)}/{int(episode_key)}/{int(chunk_index)}".encode(), digest_size=8)
    return int.from_bytes(key.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


class LBMPolicy(nn.Module):
    """Multitask, multi-embodiment, language-conditioned visuomotor policy (see :mod:`openlbm.models.lbm`)."""

    def __init__(
        self,
        config: PolicyConfig,
        embodiments: Sequence[EmbodimentSpec],
        stats: dict[str, dict[str, Any]],
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        if not embodiments:
            raise ValueError("a policy needs at least one embodiment")
        names = [e.name for e in embodiments]
        bad = [n for n in names if not n or "." in n]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"embodiment names must be unique, non-empty and dot-free, got {names}")
        self.config = config
        self.embodiments = list(embodiments)
        self._embodiment = self.embodiments[0]
        self.specs = {e.name: e for e in self.embodiments}
        self.normalizer = Normalizer(self.embodiments, stats, config.normalization)
        self.stats = {n: to_jsonable(stats[n]) for n in names}
        self.text_encoder = build_text_encoder(config.language)
        head = config.flow if config.head == "flow" else config.diffusion
        self.model = LBMModel(
            self.embodiments, config.vision, config.trunk, head, config.n_obs_steps, config.horizon, self.text_encoder.dim,
            latent_dim=config.latent_dim, image_text_temperature=config.image_text_temperature,
        )
        if load_pretrained and (config.vision.pretrained is not None or config.vision.imagenet_weights):
            load_vision_weights(self.model.vision, config.vision.pretrained)
        self.embodiment_schedules = True
        """Run an embodiment's own chunk schedule (``PolicyConfig.embodiment_execution``) where the config gives
        one; ``False`` runs the chosen execution's ``n_action_steps`` / ``temporal_ensemble`` for every embodiment
        (e.g. async or RTC on an embodiment whose schedule ensembles). Set it before :meth:`set_execution`; not
        saved with the policy."""
        self.base_execution = self.default_execution()
        """The execution chosen at run time (:meth:`set_execution`), with the policy-level chunk schedule; the
        executor runs it with the active embodiment's schedule (:meth:`execution_for`)."""
        self.executor = ChunkExecutor(config.n_obs_steps, config.horizon, self.execution_for(self._embodiment.name),
                                      self.specs)
        self.noise_seed: int | None = 0
        """The sampler (the same in ``lbm eval``, in-training eval and ``lbm serve``): with an int, each chunk's
        initial noise is a fresh ``N(0, I)`` draw from a generator seeded by :func:`chunk_noise_seed` of (this
        seed, the episode key = :func:`~openlbm.policies.execution.frame_key` of the episode's first frame, the
        chunk index since the episode start). Each chunk thus gets new noise (the real stochastic policy is
        sampled), yet evaluation is reproducible and a chunk depends neither on the rest of the batch nor on the
        env slot or worker that ran the episode. ``None`` = torch's global RNG. Not saved with the policy."""

    @property
    def embodiment(self) -> EmbodimentSpec:
        """The embodiment ``select_action`` acts as by default (the first; the eval runner picks its suite's robot).
        Setting it switches the executor to that embodiment's chunk schedule (clearing every slot when it
        changes)."""
        return self._embodiment

    @embodiment.setter
    def embodiment(self, spec: EmbodimentSpec) -> None:
        self._embodiment = spec
        if self.execution_for(spec.name) != self.executor.execution:
            self.executor = ChunkExecutor(self.config.n_obs_steps, self.config.horizon, self.execution_for(spec.name),
                                          self.specs)

    def default_execution(self) -> ExecutionConfig:
        """The execution the policy was configured with, sync: its policy-level ``n_action_steps`` and
        ``temporal_ensemble`` (an embodiment's own schedule is applied by :meth:`execution_for`)."""
        return ExecutionConfig(n_action_steps=self.config.n_action_steps, temporal_ensemble=self.config.temporal_ensemble)

    def execution_for(self, embodiment: str, execution: ExecutionConfig | None = None) -> ExecutionConfig:
        """``execution`` (default :attr:`base_execution`) as ``embodiment`` runs it: with that embodiment's
        ``PolicyConfig.embodiment_execution`` schedule when it has one (mode, delay and RTC kept) and
        :attr:`embodiment_schedules` is on, else unchanged. The one rule in process and in ``lbm serve``."""
        execution = self.base_execution if execution is None else execution
        if not self.embodiment_schedules or not any(e.embodiment == embodiment for e in self.config.embodiment_execution):
            return execution
        n, ensemble = self.config.schedule(embodiment)
        try:
            return replace(execution, n_action_steps=n, temporal_ensemble=ensemble)
        except ValueError as e:
            raise ValueError(f"embodiment {embodiment!r} executes n_action_steps={n}, temporal_ensemble={ensemble} "
                             f"(policy config embodiment_execution): {e}; --no-embodiment-schedule runs "
                             f"n_action_steps={execution.n_action_steps} per chunk instead") from None

    @property
    def execution(self) -> ExecutionConfig:
        """How ``select_action`` turns chunks into actions (:class:`~openlbm.policies.execution.ExecutionConfig`)."""
        return self.executor.execution

    def set_execution(self, execution: ExecutionConfig) -> None:
        """Switch the execution mode (sync / async / rtc, steps per chunk, ensembling); clears every slot. The
        active embodiment runs it with its own chunk schedule if the config gives one (:meth:`execution_for`)."""
        if execution.mode == "rtc" and self.config.head != "flow":
            raise ValueError("execution mode 'rtc' needs the flow head; this policy's head is "
                             f"{self.config.head!r} (use 'async')")
        effective = self.execution_for(self._embodiment.name, execution)
        self.executor = ChunkExecutor(self.config.n_obs_steps, self.config.horizon, effective, self.specs)
        self.base_execution = execution

    @property
    def device(self) -> torch.device:
        return self.model.step_pos.device

    @property
    def max_action_dim(self) -> int:
        return self.model.max_action_dim

    # -- validation -------------------------------------------------------------------------------------------
    def check_observation(self, obs: Observation, n_steps: int | None = None) -> None:
        """``Observation.validate`` + known embodiments + their cameras at the right size + history length."""
        obs.validate()
        self._check_layout(obs, n_steps)

    def _check_layout(self, obs: Observation, n_steps: int | None = None) -> None:
        """The checks of :meth:`check_observation` that read no tensor values (shapes and names only)."""
        unknown = sorted({e for e in obs.embodiment if e not in self.specs})
        if unknown:
            raise MissingStatsError(f"embodiment(s) {unknown} unknown to this policy (knows {sorted(self.specs)})")
        want_t = self.config.n_obs_steps if n_steps is None else n_steps
        if obs.n_steps != want_t:
            raise ValueError(f"observation has T={obs.n_steps} steps, policy expects n_obs_steps={want_t}")
        for name in sorted(set(obs.embodiment)):
            spec = self.specs[name]
            if obs.state.shape[-1] < spec.state_dim:
                raise ValueError(f"observation.state has {obs.state.shape[-1]} dims, {name!r} needs {spec.state_dim}")
            for cam in spec.cameras:
                if obs.features is not None:
                    if cam not in obs.features:
                        raise ValueError(f"observation lacks cached features of camera {cam!r} of embodiment {name!r}")
                    continue
                if cam not in obs.images:
                    raise ValueError(f"observation lacks camera {cam!r} of embodiment {name!r} (got {sorted(obs.images)})")
                size = tuple(obs.images[cam].shape[-2:])
                if size != tuple(spec.image_size):
                    raise ValueError(
                        f"observation.images.{cam} is {size[0]}x{size[1]} but embodiment {name!r} expects "
                        f"{spec.image_size[0]}x{spec.image_size[1]} (H x W): resize it at the source (env/dataset)"
                    )

    # -- model calls ------------------------------------------------------------------------------------------
    def encode_observation(self, obs: Observation, rng: SampleRNG | None = None, lang: Tensor | None = None
                           ) -> ObsEncoding:
        """Everything the denoiser needs from ``obs`` (normalized state, vision, language); once per chunk.
        ``lang``: the instructions' frozen embeddings ``[B, E]`` when already computed (:meth:`prepare_batch`)."""
        if lang is None:
            lang = self.text_encoder.encode(obs.instruction).to(self.device)  # [B, E]
        state = self.normalizer.normalize("state", obs.state, obs.embodiment)  # [B, T, S]
        if obs.features is not None:
            if not self.config.vision.cacheable:
                raise ValueError("the batch carries cached vision features but policy.vision is not frozen: "
                                 "cached features only stand in for a frozen backbone")
            return self.model.encode_observation(obs.features, state, lang, obs.embodiment, rng, cached=True)
        return self.model.encode_observation(obs.images, state, lang, obs.embodiment, rng)

    def initial_noise(
        self,
        obs: Observation,
        chunk_index: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        episode_key: Sequence[int | None] | None = None,
    ) -> Tensor:
        """The sampler's starting noise ``[B, H, A_max]`` for ``obs``: from ``generator`` if given (one stream for
        the whole batch), else per sample from ``noise_seed`` (see its docstring), else from torch's global RNG.
        A missing ``chunk_index`` is 0 and a missing ``episode_key`` is the key of the window's last frame: a
        window without them is taken as the first chunk of an episode starting there."""
        b = obs.batch_size
        shape = (b, self.config.horizon, self.max_action_dim)
        if generator is not None or self.noise_seed is None:
            return torch.randn(shape, generator=generator, device="cpu" if generator is not None else self.device)
        index = [0] * b if chunk_index is None else [int(c) for c in chunk_index]
        keys = [None] * b if episode_key is None else list(episode_key)
        if len(index) != b or len(keys) != b:
            raise ValueError(f"chunk_index/episode_key have {len(index)}/{len(keys)} entries for a batch of {b}")
        seeds = []
        for i in range(b):
            key = keys[i]
            if key is None:
                spec = self.specs[obs.embodiment[i]]
                key = frame_key({c: v[i, -1] for c, v in obs.images.items()}, obs.state[i, -1], obs.instruction[i], spec)
            seeds.append(chunk_noise_seed(self.noise_seed, key, index[i]))
        return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])

    def sample_actions(
        self,
        enc: ObsEncoding,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Normalized chunk ``[B, H, A_max]`` by denoising from ``noise`` (``[B, H, A_max]``; default: drawn from
        ``generator`` or torch's global RNG), reusing ``enc`` at every step."""
        if noise is None:
            shape = (enc.batch_size, self.config.horizon, self.max_action_dim)
            noise = torch.randn(shape, generator=generator, device="cpu" if generator is not None else self.device)
        return self.model.sample(enc, noise.to(self.device), num_steps)

    @torch.no_grad()
    def predict_chunk(
        self,
        obs: Observation,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        chunk_index: Sequence[int] | None = None,
        episode_key: Sequence[int | None] | None = None,
        guidance: Sequence[Guidance | None] | None = None,
    ) -> Tensor:
        """Action chunk ``[B, horizon, A]`` in physical units; ``A`` = the largest native action dim among the
        batch's embodiments (= the native dim when the batch has one embodiment; narrower ones are zero-padded).
        ``num_steps`` overrides the head's sampling steps; noise: see :meth:`initial_noise`. ``guidance[i]``
        (real-time chunking, flow head): sample ``i``'s chunk is guided to agree with its prefix
        (:mod:`openlbm.policies.execution`); ``None`` entries sample unguided."""
        self.check_observation(obs)
        noise = self.initial_noise(obs, chunk_index, generator, episode_key)
        obs = obs.to(self.device)
        if guidance is None or all(g is None for g in guidance):
            chunk = self.sample_actions(self.encode_observation(obs), num_steps, noise=noise)
        else:
            # Guidance differentiates through the denoiser: leave inference mode so the encoding can be saved for
            # backward (it is computed here, without grad, as a normal tensor).
            with torch.inference_mode(False):
                enc = self.encode_observation(obs)
                guide = self._guide_target(guidance, obs.embodiment)
                chunk = self.model.sample(enc, noise.clone().to(self.device), num_steps, guide=guide).detach()
        chunk = self.normalizer.unnormalize("action", chunk, obs.embodiment)
        width = max(self.specs[e].action_dim for e in obs.embodiment)
        return chunk[..., :width]

    def prepare_batch(self, batch: Batch) -> Batch:
        """Host-side work for :meth:`compute_loss`, done by the trainer as batches come off the loader: the frozen
        text encoder's embeddings of the instructions, in ``meta[INSTRUCTION_EMBEDDING]`` (float32 ``[B, E]``,
        on the host). With it, ``compute_loss`` is tensor code only, which ``torch.compile`` traces whole (the
        encoder's cache lock and its string keys would split the graph and recompile per instruction set)."""
        batch.meta[INSTRUCTION_EMBEDDING] = self.text_encoder.encode(batch.obs.instruction)
        return batch

    def _guide_target(
        self, guidance: Sequence[Guidance | None], embodiment: Sequence[str]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized target ``[B, H, A_max]``, weights ``[B, H, A_max]`` (0 off the prefix and native dims) and
        the guidance clip ``beta`` ``[B, 1, 1]``."""
        h, a_max = self.config.horizon, self.max_action_dim
        if len(guidance) != len(embodiment):
            raise ValueError(f"guidance has {len(guidance)} entries for a batch of {len(embodiment)}")
        target = torch.zeros(len(guidance), h, a_max, device=self.device)
        weights = torch.zeros(len(guidance), h, 1, device=self.device)
        beta = torch.ones(len(guidance), 1, 1, device=self.device)
        for i, g in enumerate(guidance):
            if g is None:
                continue
            beta[i] = g.beta
            k, a = min(g.prefix.shape[0], h), min(g.prefix.shape[-1], a_max)
            target[i, :k, :a] = g.prefix[:k, :a].to(self.device, torch.float32)
            weights[i, :, 0] = rtc_weights(h, k, g.frozen).to(self.device)
        target = self.normalizer.normalize("action", target, embodiment)
        dims = self.model.native_dim_mask(embodiment, a_max, self.device)  # [B, A_max]
        return target, weights * dims[:, None, :], beta

    def loss_weight(self, batch: Batch) -> dict[str, Tensor]:
        """Per objective, the number of elements its loss in :meth:`compute_loss` is a mean over (the trainer weights
        micro-batches by these to get exact global-batch means): valid action steps x real action dims; valid
        latent steps x ``L``; image-text rows and columns."""
        counts = {"action": ((~batch.action_is_pad).sum(dim=1) * batch.action_dim_mask.sum(dim=1)).sum()}
        if batch.latent_action is not None and batch.latent_is_pad is not None:
            counts["latent"] = (~batch.latent_is_pad).sum() * batch.latent_action.shape[-1]
        if batch.image_text is not None:
            counts["image_text"] = torch.tensor(2 * batch.image_text.batch_size)
        return {k: v.to(torch.float64) for k, v in counts.items()}

    def compute_loss(self, batch: Batch, validate: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-objective losses, each a mean over its :meth:`loss_weight` elements; per-sample noise from
        ``meta["sample_seed"]`` (see :mod:`openlbm.models.rng`). Metrics are 0-d tensors: nothing here reads a
        value back to the host. ``validate=False`` skips ``Batch.validate`` (its NaN checks read the device): the
        trainer validates every batch on the host as it comes off the loader.

        ``action``: the head's masked loss over real action steps and dims (rows without actions are all pad).
        ``latent`` (when the batch has latent-action labels): the same head on the latent chunk, each step's vector
        scaled to unit RMS (a latent action model's codes are unit vectors per group, far smaller than the noise).
        ``image_text`` (when the batch carries image-text pairs): symmetric InfoNCE over the batch's image-caption
        similarities, every pair with the same caption counted as a positive.
        """
        if validate:
            batch.validate()
        self._check_layout(batch.obs)
        obs = batch.obs
        b, a_max = batch.batch_size, self.max_action_dim
        if batch.action.shape[1] != self.config.horizon:
            raise ValueError(f"action has horizon {batch.action.shape[1]}, policy expects {self.config.horizon}")
        seeds = batch.meta.get("sample_seed")
        rng = SampleRNG(b, self.device, seeds if isinstance(seeds, Tensor) else None)
        enc = self.encode_observation(obs, rng, batch.meta.get(INSTRUCTION_EMBEDDING))
        action = self._fit_width(batch.action, a_max)  # [B, H, A_max]
        dim_mask = self._fit_width(batch.action_dim_mask, a_max)  # [B, A_max]
        action = self.normalizer.normalize("action", action, obs.embodiment)
        noise = rng.randn((b, self.config.horizon, a_max))
        u = rng.rand((b,))
        err = self.model.loss(enc, action, noise, u)  # [B, H, A_max]
        dim_mask = dim_mask & self.model.native_dim_mask(obs.embodiment, a_max, err.device)
        mask = (~batch.action_is_pad)[:, :, None] & dim_mask[:, None, :]  # [B, H, 1] & [B, 1, A] -> [B, H, A]
        denom = mask.sum()
        losses = {"action": (err * mask).sum() / denom.clamp(min=1)}
        metrics = {"valid_frac": denom.detach() / max(mask.numel(), 1)}
        if batch.latent_action is not None:
            losses["latent"] = self._latent_loss(batch, enc, rng)
        if batch.image_text is not None:
            losses["image_text"], metrics["image_text_acc"] = self._image_text_loss(batch)
        return losses, metrics

    def _latent_loss(self, batch: Batch, enc: ObsEncoding, rng: SampleRNG) -> Tensor:
        assert batch.latent_action is not None and batch.latent_is_pad is not None
        width = batch.latent_action.shape[-1]
        if width != self.config.latent_dim:
            raise ValueError(
                f"the data's latent actions are {width} wide but the policy's latent head is "
                f"{self.config.latent_dim} (set --policy.latent-dim {width})"
            )
        lat = batch.latent_action
        lat = lat / lat.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp(min=1e-6)  # unit RMS per step
        b, h = lat.shape[:2]
        err = self.model.loss(enc, lat, rng.randn((b, h, width)), rng.rand((b,)), latent=True)  # [B, H, L]
        valid = (~batch.latent_is_pad)[:, :, None]  # [B, H] -> [B, H, 1]
        return (err * valid).sum() / (valid.sum() * width).clamp(min=1)

    def _image_text_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        it = batch.image_text
        assert it is not None
        text = self.text_encoder.encode(it.text).to(self.device)  # [N, E]
        logits = self.model.image_text_logits(it.images.to(self.device), text)  # [N, N]
        ids = {t: i for i, t in enumerate(dict.fromkeys(it.text))}
        label = index_tensor([ids[t] for t in it.text], logits.device)
        same = label[:, None] == label[None, :]  # [N, N]: pairs with the same caption are all positives
        neg_inf = torch.finfo(logits.dtype).min
        rows = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~same, neg_inf), 1)
        cols = torch.logsumexp(logits, 0) - torch.logsumexp(logits.masked_fill(~same, neg_inf), 0)
        acc = same[torch.arange(len(label), device=logits.device), logits.detach().argmax(1)].float().mean()
        return (rows.sum() + cols.sum()) / (2 * len(label)), acc

    @staticmethod
    def _fit_width(x: Tensor, width: int) -> Tensor:
        if x.shape[-1] >= width:
            return x[..., :width]
        return nn.functional.pad(x, (0, width - x.shape[-1]))

    # -- execution --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: Observation) -> Tensor:
        """``[B, A]`` for a ``T = 1`` observation of ``B`` independent envs (see :mod:`openlbm.policies.execution`)."""
        self.check_observation(obs, n_steps=1)

        def predict(window: Observation, requests: list[ChunkRequest]) -> Tensor:
            return self.predict_chunk(
                window,
                chunk_index=[r.chunk_index for r in requests],
                episode_key=[r.episode_key for r in requests],
                guidance=[r.guidance for r in requests],
            )

        return self.executor.step(obs.to(self.device), predict)

    def reset(self, indices: Sequence[int] | None = None) -> None:
        """Clear history and queued actions of the given batch slots (all when None)."""
        self.executor.reset(indices)

    def frames_needed(self) -> list[bool]:
        """Per batch slot: will the next frame's images be read (:meth:`ChunkExecutor.frames_needed`)?"""
        return self.executor.frames_needed()

    # -- optimisation -----------------------------------------------------------------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The network's repeated layers in forward order (:meth:`LBMModel.shard_units`): FSDP2's per-block units."""
        return self.model.shard_units()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no decay on norms, biases and embeddings; the vision backbone at ``vision.lr_mult``
        times the rate (its pooling and neck at the full rate); a frozen backbone has no trainable parameters."""
        enc_mult = self.config.vision.lr_mult
        no_decay_names = ("step_pos", "camera_emb", "embodiment_token", "action_pos", "pos_embed", "cls_token")
        groups: dict[str, dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and not any(n in name for n in no_decay_names)
            enc = name.startswith("model.vision.backbone.")
            key = f"{'vision' if enc else 'main'}_{'decay' if decay else 'no_decay'}"
            g = groups.setdefault(key, {"name": key, "params": [], "weight_decay": weight_decay if decay else 0.0,
                                        "lr_mult": enc_mult if enc else 1.0})
            g["params"].append(p)
        return list(groups.values())

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "policy": self.config.to_dict(),
            "embodiments": [e.to_dict() for e in self.embodiments],
            "text_encoder": self.text_encoder.name,
            "num_params": sum(p.numel() for p in self.parameters()),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": FORMAT})
        write_json(d / "stats.json", self.stats, indent=None)
        write_json(d / "config.json", meta)
        return d

    @staticmethod
    def read_dir(directory: str | Path) -> tuple[PolicyConfig, list[EmbodimentSpec], dict[str, Any]]:
        d = Path(directory)
        for name in ("config.json", "model.safetensors", "stats.json"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d} is not a policy dir: {name} missing (expected LBMPolicy.save output)")
        meta = read_json(d / "config.json")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'config.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{d / 'config.json'}: version {meta['version']} is newer than this openlbm ({VERSION})")
        try:
            cfg = PolicyConfig.from_dict(meta["policy"])
        except ValueError as e:  # names the field; add the file
            raise ValueError(f"{d / 'config.json'}: {e}") from None
        embodiments = [EmbodimentSpec.from_dict(e) for e in meta["embodiments"]]
        return cfg, embodiments, read_json(d / "stats.json")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> LBMPolicy:
        """Rebuild from a ``save`` dir (weights exactly; the pretrained vision file is not needed)."""
        d = Path(directory)
        cfg, embodiments, stats = cls.read_dir(d)
        policy = cls(cfg, embodiments, stats, load_pretrained=False)
        tensors = load_weights(d / "model.safetensors")
        missing, unexpected, shapes = state_dict_diff(policy.state_dict(), tensors, ours_label="config")
        if missing or unexpected or shapes:
            raise ValueError(
                f"{d / 'model.safetensors'} does not match {d / 'config.json'}: {len(missing)} missing {missing[:8]}, "
                f"{len(unexpected)} unexpected {unexpected[:8]}, {len(shapes)} shape mismatches {shapes[:8]}"
            )
        policy.load_state_dict(tensors)
        return policy.to(device)

    def init_from(self, directory: str | Path) -> InitReport:
        """Copy weights from another policy dir for fine-tuning (:func:`openlbm.policies.warm_start.init_from`)."""
        return init_from(self, directory)
