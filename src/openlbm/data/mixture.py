"""Weighted mixtures of datasets with different schemas, mapped onto embodiment specs.

``DataConfig(sources=...).build(...)`` returns :class:`MixtureData`: the mapped dataset, a seeded, rank-sharded,
resumable sampler, merged per-embodiment stats, and ``loader()`` yielding :class:`openlbm.types.Batch`.

Sampling stream: epoch ``e`` draws ``epoch_size`` sources i.i.d. from the normalized weights (seeded by
``(seed, e)``) and, within each source, walks a fresh random permutation of its frames (cycled if a source is drawn
more often than it has frames). Rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of that global stream, so
ranks see disjoint slices of one stream. The sampler's position is the number of samples the *consumer* has taken
from the loader (workers' prefetched batches do not count), so ``state_dict()`` resumes exactly.

Sources may lack what others have: a dataset without ``action`` (action-less video) yields rows with zero actions
and ``action_is_pad`` all True, and takes its embodiment's action dim from the embodiment's other sources (none:
``action_dim = 0`` and no action stats); a dataset without ``observation.state`` needs an embodiment with
``state_dim = 0``. When any source has the per-frame ``latent_action`` feature, every row carries
``latent_action [H, L]`` + ``latent_is_pad [H]`` (zeros + all True where its source lacks it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from openlbm import bounds
from openlbm.data.collate import batch_from_dict, collate_dict
from openlbm.data.dataset import DatasetMeta, RobotDataset
from openlbm.data.features import FeatureCache
from openlbm.data.images import resize_images
from openlbm.data.mixture_stats import merged_stats
from openlbm.jsonio import from_jsonable, read_json
from openlbm.types import (
    ACTION_KEY,
    FEATURE_PREFIX,
    IMAGE_PREFIX,
    LATENT_ACTION_KEY,
    STATE_KEY,
    Batch,
    EmbodimentSpec,
    camera_key,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceConfig:
    """One dataset in a mixture."""

    root: Path
    """Dataset root (LeRobot v3 layout)."""
    weight: float = 1.0
    """Relative sampling weight (multiplied by the dataset's frame count when ``scale_weights_by_size``)."""
    embodiment: str | None = None
    """Embodiment name to map onto; default: the dataset's ``robot_type`` (or folder name)."""
    rename: dict[str, str] = field(default_factory=dict)
    """Source key -> embodiment key, e.g. ``{"top": "corner2"}`` (cameras by short or full name) or
    ``{"observation.joints": "observation.state"}``."""
    image_size: tuple[int, int] | None = None
    """``(height, width)`` every camera of this source is resized to (bilinear, antialiased), i.e. its
    embodiment's ``image_size``; default: the dataset's own size. Sources of one embodiment must agree."""
    episodes: tuple[int, ...] | None = None
    """Use only these episode indices of the dataset (``None`` = all). Its normalization stats are then computed
    over those episodes only, not the whole dataset."""
    in_stats: bool = True
    """Whether this source contributes to its embodiment's normalization stats. Fine-tuning adds its replay
    (pretraining) sources with ``False``, so the stats come from the fine-tuning data only; an embodiment whose
    every source is ``False`` takes their stats anyway, with a warning."""

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and np.isfinite(self.weight)):
            raise ValueError(f"{self.root}: weight must be a finite number >= 0, got {self.weight}")
        if not isinstance(self.rename, dict):
            raise ValueError(f"{self.root}: rename must map source keys to embodiment keys, got {self.rename!r}")
        bad = {k: v for k, v in self.rename.items() if not (isinstance(k, str) and isinstance(v, str) and k and v)}
        if bad:
            raise ValueError(f"{self.root}: rename maps source keys to embodiment keys (non-empty strings), got {bad}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"{self.root}: image_size must be (height, width) >= 1, got {self.image_size}")


def read_sources(path: Path) -> tuple[SourceConfig, ...]:
    """The mixture sources listed in a JSON file: a list of :class:`SourceConfig` objects, the same shape as
    ``data.sources`` in a run's ``config.json`` (``[{"root": "oxe", "embodiment": "franka", "rename": {...},
    "image_size": [64, 64]}, ...]``). A relative ``root`` is relative to the file's folder. A value that does not
    fit raises ``ValueError`` naming the file, the entry and the field."""
    path = Path(path)
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of sources ({{\"root\": ..., ...}}), got {entries!r}")
    sources = tuple(from_jsonable(SourceConfig, e, f"{path}[{i}]") for i, e in enumerate(entries))
    return tuple(replace(s, root=path.parent / s.root) for s in sources)


@dataclass(frozen=True)
class DataConfig:
    """Training data: a weighted mixture of datasets and how to load it."""

    sources: tuple[SourceConfig, ...] = ()
    """Datasets to mix."""
    scale_weights_by_size: bool = False
    """Multiply each source weight by its number of frames (``True`` = uniform over all frames)."""
    num_workers: int = 2
    """DataLoader worker processes (0 = load in the main process)."""
    prefetch_factor: int = 4
    """Batches each worker keeps ready."""
    epoch_size: int | None = None
    """Samples per (global) epoch of the stream; default: the total number of frames."""
    tolerance_s: float | None = None
    """Max distance between a requested and a decoded video timestamp; default 0.25 / fps."""

    def build(
        self,
        embodiments: Sequence[EmbodimentSpec] | None,
        n_obs_steps: int,
        horizon: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> MixtureData:
        if not self.sources:
            raise ValueError("DataConfig.sources is empty: give at least one dataset (e.g. --dataset PATH)")
        metas = [DatasetMeta(s.root, self.tolerance_s) for s in self.sources]
        specs = list(embodiments) if embodiments else infer_embodiments(self.sources, metas)
        chosen = [_pick_embodiment(s, m, specs) for s, m in zip(self.sources, metas, strict=True)]
        max_s = max(e.state_dim for e in specs)
        max_a = max(e.action_dim for e in specs)
        latent_dim = mixture_latent_dim(self.sources, metas)
        parts = [
            _SourceView(i, s, m, emb, n_obs_steps, horizon, max_s, max_a, latent_dim)
            for i, (s, m, emb) in enumerate(zip(self.sources, metas, chosen, strict=True))
        ]
        dataset = MixtureDataset(parts)
        sizes = [len(p.ds) for p in parts]
        weights = [s.weight * (n if self.scale_weights_by_size else 1) for s, n in zip(self.sources, sizes, strict=True)]
        sampler = MixtureSampler(sizes, weights, seed, rank, world_size, self.epoch_size)
        stats = {e.name: merged_stats(stats_sources(e.name, parts)) for e in specs if any(p.emb.name == e.name for p in parts)}
        return MixtureData(dataset, sampler, stats, specs, self, batch_size, max_s, max_a, latent_dim)


def mixture_latent_dim(sources: Sequence[SourceConfig], metas: Sequence[DatasetMeta]) -> int | None:
    """``L`` of the ``latent_action`` feature (after ``rename``) shared by every source that has it; ``None`` when
    none has it. Sources labelled by different latent action models (different ``L``) cannot mix."""
    dims = {}
    for s, m in zip(sources, metas, strict=True):
        for key, spec in m.features.items():
            if _rename(s, key) == LATENT_ACTION_KEY:
                dims[str(m.root)] = int(np.prod(spec.shape))
    if len(set(dims.values())) > 1:
        raise ValueError(f"sources disagree on the latent_action dim L: {dims}; label every dataset of a mixture with "
                         "the same latent action model")
    return next(iter(dims.values()), None)


def infer_embodiments(sources: Sequence[SourceConfig], metas: Sequence[DatasetMeta]) -> list[EmbodimentSpec]:
    """One embodiment per distinct name (``source.embodiment`` / robot_type / folder name): the source's cameras
    and state/action dims after ``rename``, its fps, its declared state bound, and ``source.image_size`` (else its
    first camera's size).
    An action-less source takes the action dim of its embodiment's other sources (0 when none has actions)."""
    out: dict[str, EmbodimentSpec] = {}
    labelled: set[str] = set()  # embodiments whose action_dim comes from a source with actions
    for s, m in zip(sources, metas, strict=True):
        name = s.embodiment or m.robot_type or m.name
        cams = tuple(_short(_rename(s, k)) for k in m.camera_keys)
        size = s.image_size or (tuple(m.features[m.camera_keys[0]].shape[:2]) if cams else (0, 0))
        feats = {_rename(s, k): f for k, f in m.features.items()}
        declared = {_rename(s, k): v for k, v in m.info["features"].items()}
        spec = EmbodimentSpec(
            name=name, cameras=cams, image_size=(int(size[0]), int(size[1])),
            state_dim=int(np.prod(feats[STATE_KEY].shape)) if STATE_KEY in feats else 0,
            action_dim=int(np.prod(feats[ACTION_KEY].shape)) if ACTION_KEY in feats else 0, fps=m.fps,
            max_abs_state=bounds.max_abs(STATE_KEY, declared.get(STATE_KEY)) or bounds.DEFAULT_MAX_ABS,
        )
        has_action = ACTION_KEY in feats
        if name in out:
            # sources of one embodiment may declare different state bounds: the server accepts the widest
            widest = max(out[name].max_abs_state, spec.max_abs_state)
            prev, spec = replace(out[name], max_abs_state=widest), replace(spec, max_abs_state=widest)
            if not has_action:
                spec = replace(spec, action_dim=prev.action_dim)
            elif name not in labelled:
                prev = replace(prev, action_dim=spec.action_dim)
            if prev != spec:
                hint = f" ({m.root} has no {STATE_KEY})" if STATE_KEY not in feats else ""
                raise ValueError(f"datasets named embodiment {name!r} disagree: {prev} vs {spec} ({m.root}){hint}; "
                                 "set SourceConfig.embodiment to tell them apart")
        out[name] = spec
        if has_action:
            labelled.add(name)
    return list(out.values())


def stats_sources(name: str, parts: Sequence[_SourceView]) -> list[_SourceView]:
    """The sources whose stats normalize embodiment ``name``: those with ``in_stats``, else (warned) all of them."""
    mine = [p for p in parts if p.emb.name == name]
    chosen = [p for p in mine if p.source.in_stats]
    if not chosen:
        log.warning("embodiment %r: every source has in_stats=False; normalizing with their stats (%s)", name,
                    ", ".join(str(p.meta.root) for p in mine))
        return mine
    return chosen


def _short(key: str) -> str:
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key


def _rename(s: SourceConfig, key: str) -> str:
    """Source feature key -> embodiment feature key."""
    new = s.rename.get(key, s.rename.get(_short(key)))
    if new is None:
        return key
    return camera_key(new) if key.startswith(IMAGE_PREFIX) else new


def _pick_embodiment(s: SourceConfig, m: DatasetMeta, specs: Sequence[EmbodimentSpec]) -> EmbodimentSpec:
    by_name = {e.name: e for e in specs}
    for name in (s.embodiment, m.robot_type, m.name):
        if name and name in by_name:
            return _check_size(s, by_name[name])
    if s.embodiment:
        raise ValueError(f"{m.root}: embodiment {s.embodiment!r} not among {sorted(by_name)}")
    if len(specs) == 1:
        return _check_size(s, specs[0])
    raise ValueError(f"{m.root}: cannot tell which embodiment it is (robot_type {m.robot_type!r}); "
                     f"set SourceConfig.embodiment to one of {sorted(by_name)}")


def _check_size(s: SourceConfig, emb: EmbodimentSpec) -> EmbodimentSpec:
    if s.image_size is not None and tuple(s.image_size) != tuple(emb.image_size):
        raise ValueError(f"{s.root}: image_size {tuple(s.image_size)} differs from embodiment {emb.name!r}'s "
                         f"{tuple(emb.image_size)}")
    return emb


class _SourceView:
    """One source's RobotDataset plus the mapping of its samples onto an embodiment."""

    def __init__(self, i: int, s: SourceConfig, m: DatasetMeta, emb: EmbodimentSpec, n_obs: int, horizon: int,
                 max_s: int, max_a: int, latent_dim: int | None = None) -> None:
        self.index, self.emb, self.max_s, self.max_a, self.source = i, emb, max_s, max_a, s
        self.latent_dim = latent_dim
        inverse = {_rename(s, k): k for k in m.features}
        self.cams: dict[str, str] = {}  # embodiment camera key -> source key
        for cam in emb.cameras:
            src = inverse.get(camera_key(cam))
            if src is None or m.features[src].dtype != "video":
                raise ValueError(f"{m.root}: embodiment {emb.name!r} needs camera {cam!r}; dataset cameras are "
                                 f"{[_short(k) for k in m.camera_keys]} (map one with SourceConfig.rename)")
            self.cams[camera_key(cam)] = src
        self.state_key, self.action_key = inverse.get(STATE_KEY), inverse.get(ACTION_KEY)
        self.latent_key = inverse.get(LATENT_ACTION_KEY)
        if self.state_key is None and emb.state_dim:
            raise ValueError(f"{m.root}: has no {STATE_KEY} but embodiment {emb.name!r} has state_dim {emb.state_dim}; "
                             "give this state-less source its own embodiment (SourceConfig.embodiment) or map a "
                             f"feature onto {STATE_KEY} with SourceConfig.rename")
        for key, dim, what in ((self.state_key, emb.state_dim, "state"), (self.action_key, emb.action_dim, "action")):
            have = int(np.prod(m.features[key].shape)) if key else dim  # no action: rows are all padding
            if have != dim:
                raise ValueError(f"{m.root}: {what} has {have} dims ({key}), embodiment {emb.name!r} expects {dim}")
        delta = {}
        if self.state_key and self.state_key != STATE_KEY:
            delta[self.state_key] = [i / m.fps for i in range(-(n_obs - 1), 1)]
        for key, std in ((self.action_key, ACTION_KEY), (self.latent_key, LATENT_ACTION_KEY)):
            if key and key != std:
                delta[key] = [i / m.fps for i in range(horizon)]
        if s.episodes is not None:
            bad = [e for e in s.episodes if not 0 <= e < m.num_episodes]
            if bad or not s.episodes:
                raise ValueError(f"{m.root}: SourceConfig.episodes must be a non-empty list of episode indices in "
                                 f"0..{m.num_episodes - 1}, got {list(s.episodes)[:12]}")
        self.ds = RobotDataset(m.root, n_obs, horizon, delta or None, s.episodes, tolerance_s=m.tolerance_s,
                               camera_keys=list(self.cams.values()))
        self.meta, self.n_obs, self.horizon = m, n_obs, horizon
        self.features: FeatureCache | None = None

    def use_features(self, cache: FeatureCache) -> None:
        """Read the cameras' cached frozen-backbone features (``observation.features.<camera>``) instead of
        decoding their video."""
        self.ds.drop_cameras()
        self.features = cache

    def _cached(self, raw: dict[str, Any], out: dict[str, Any]) -> None:
        assert self.features is not None
        ep, start = raw["episode_index"], int(self.meta.ep_from[raw["episode_index"]])
        idx = np.arange(-(self.n_obs - 1), 1) + (raw["index"] - start)
        rows = start + np.clip(idx, 0, int(self.meta.ep_len[ep]) - 1)
        for dst, src in self.cams.items():
            out[FEATURE_PREFIX + dst[len(IMAGE_PREFIX):]] = torch.from_numpy(self.features.rows(src, rows))  # [T, C, h, w]
        out["obs_is_pad"] = torch.from_numpy(idx < 0)

    def sample(self, i: int) -> dict[str, Any]:
        raw = self.ds[i]
        out: dict[str, Any] = {}
        h, w = self.emb.image_size
        for dst, src in self.cams.items() if self.features is None else ():
            out[dst] = resize_images(raw[src], (h, w))  # [T, 3, h0, w0] -> [T, 3, h, w] uint8
        state = raw[self.state_key] if self.state_key else torch.zeros(self.n_obs, 0)
        action = raw[self.action_key] if self.action_key else torch.zeros(self.horizon, 0)
        out[STATE_KEY] = F.pad(state.float(), (0, self.max_s - state.shape[-1]))  # [T, S] -> [T, S_max]
        out[ACTION_KEY] = F.pad(action.float(), (0, self.max_a - action.shape[-1]))  # [H, A] -> [H, A_max]
        out["action_dim_mask"] = torch.arange(self.max_a) < self.emb.action_dim
        out["obs_is_pad"] = raw["obs_is_pad"]
        if self.features is not None:
            self._cached(raw, out)
        all_pad = torch.ones(self.horizon, dtype=torch.bool)
        out["action_is_pad"] = raw["is_pad"][self.action_key] if self.action_key else all_pad
        if self.latent_dim is not None:
            have = self.latent_key is not None
            lat = raw[self.latent_key].float() if have else torch.zeros(self.horizon, self.latent_dim)
            out[LATENT_ACTION_KEY] = lat.reshape(self.horizon, self.latent_dim)  # [H, *shape] -> [H, L]
            out["latent_is_pad"] = raw["is_pad"][self.latent_key] if have else all_pad
        out.update(task=raw["task"], episode_index=raw["episode_index"], index=raw["index"], dataset=self.index,
                   embodiment=self.emb.name)
        return out


class MixtureDataset(Dataset):
    """Concatenation of the mapped sources; flat index = source offset + frame sample index."""

    def __init__(self, parts: Sequence[_SourceView]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p.ds) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        src = int(np.searchsorted(self.offsets, i, side="right")) - 1
        if not 0 <= src < len(self.parts):
            raise IndexError(f"mixture index {i} out of range 0..{len(self) - 1}")
        return self.parts[src].sample(i - int(self.offsets[src]))


class MixtureSampler(Sampler[int]):
    """Infinite, seeded, rank-sharded stream of mixture indices with exact resume (see module docstring)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, rank: int = 0, world_size: int = 1,
                 epoch_size: int | None = None) -> None:
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every mixture source needs frames; sizes are {list(sizes)}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.sizes, self.seed, self.rank, self.world_size = list(sizes), int(seed), rank, world_size
        total = float(sum(weights))
        self.probs = [w / total for w in weights]
        self.epoch_size = int(epoch_size or sum(sizes))
        self.per_rank = self.epoch_size // world_size
        if self.per_rank == 0:
            raise ValueError(f"epoch_size {self.epoch_size} < world_size {world_size}")
        self.offsets = np.cumsum([0, *self.sizes])
        self.consumed = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch`` (flat mixture indices)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        src = rng.choice(len(self.sizes), size=self.epoch_size, p=self.probs)
        flat = np.empty(self.epoch_size, dtype=np.int64)
        for s, n in enumerate(self.sizes):
            where = np.flatnonzero(src == s)
            reps = -(-len(where) // n)
            perm = np.concatenate([rng.permutation(n) for _ in range(reps)])[: len(where)] if reps else []
            flat[where] = self.offsets[s] + np.asarray(perm, dtype=np.int64)
        mine = flat[self.rank :: self.world_size][: self.per_rank]  # disjoint stride slice of the global stream
        self._cache = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[int]:
        pos = self.consumed
        while True:
            epoch, k = divmod(pos, self.per_rank)
            idx = self.epoch_indices(epoch)
            for i in idx[k:]:
                yield int(i)
            pos = (epoch + 1) * self.per_rank

    def advance(self, n: int) -> None:
        """Record that the consumer took ``n`` more samples (called by :class:`MixtureLoader`)."""
        self.consumed += int(n)

    @property
    def epoch(self) -> int:
        return self.consumed // self.per_rank

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "epoch_size": self.epoch_size, "probs": self.probs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "world_size", "epoch_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this run has {getattr(self, key)}; cannot resume exactly")
        if "probs" in state and not np.allclose(state["probs"], self.probs):
            raise ValueError(f"sampler state has mixture probabilities {state['probs']}, this run {self.probs}")
        self.consumed = int(state["consumed"])


class MixtureLoader(DataLoader):
    """A DataLoader yielding :class:`Batch`; tells the sampler how many samples the consumer actually received."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for d in super().__iter__():
            batch = batch_from_dict(d)
            self.sampler.advance(batch.batch_size)
            yield batch


@dataclass
class MixtureData:
    """What :meth:`DataConfig.build` returns."""

    dataset: MixtureDataset
    sampler: MixtureSampler
    stats: dict[str, dict[str, dict[str, list]]]
    embodiments: list[EmbodimentSpec]
    config: DataConfig
    batch_size: int
    max_state_dim: int
    max_action_dim: int
    latent_dim: int | None = None
    """``L`` of the batches' ``latent_action`` (``None``: no source has the feature, batches carry none)."""

    def loader(self, batch_size: int | None = None, num_workers: int | None = None, pin_memory: bool | None = None) -> MixtureLoader:
        """Infinite loader over this rank's stream (persistent workers; pinned memory when CUDA is available)."""
        workers = self.config.num_workers if num_workers is None else num_workers
        return MixtureLoader(
            self.dataset,
            batch_size=batch_size or self.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_dict,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=self.config.prefetch_factor if workers > 0 else None,
            drop_last=True,
            # fork() copies locks held by FFmpeg/dav1d/jemalloc threads of this process and can deadlock a worker;
            # forkserver workers start from a clean single-threaded process
            multiprocessing_context=worker_context() if workers > 0 else None,
        )


def worker_context() -> str | None:
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else None
