"""Chunked action execution for ``select_action``: per-slot observation history, action queue, temporal ensembling.

Timing, with ``n_obs_steps = 2``, ``horizon = 8``, ``n_action_steps = 4`` (``o`` = observation used, ``a`` =
action predicted, ``x`` = action executed)::

    env step t:   0  1  2  3  4  5  6  7  8
    observation:  o  o                         (t = 0 is padded by repeating frame 0: [o0, o0])
    chunk at 0:   a  a  a  a  a  a  a  a       predicted from [o0, o0]
    executed:     x  x  x  x                   then the queue is empty
    chunk at 4:               a  a  a  a  a  a  a  a      predicted from [o3, o4]
    executed:                 x  x  x  x

With temporal ensembling (ACT) a chunk is predicted at *every* step and the action for step ``t`` is the
weighted mean of every stored chunk's prediction for ``t``, weights ``exp(-m * i)`` with ``i = 0`` the oldest.

Each batch slot is an independent environment: it keeps its own history and queue, only the slots whose queue ran
out are sent to the model, and ``reset([i])`` clears slot ``i`` (the rollout runner calls it at episode start).

This is the only observation history in openlbm: in-process execution (``LBMPolicy.select_action``) and the policy
server's client (``openlbm.serve.client.RemotePolicy``, which sends each window over the wire to a stateless
server) both run it, so a served policy sees exactly the windows an in-process one sees. ``predict`` also receives
each window's noise key: the slot's *episode key* (:func:`frame_key` of the first frame after its reset) and its
*chunk index* (chunks predicted for the slot since that reset, 0 for the first). They key the sampling noise
(``LBMPolicy.noise_seed``): fresh per chunk, a pure function of the episode's start and the chunk's position in it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from openlbm.types import EmbodimentSpec, Observation

log = logging.getLogger(__name__)


def frame_key(images: dict[str, Tensor], state: Tensor, instruction: str, spec: EmbodimentSpec) -> int:
    """63-bit digest of one frame (``images[cam]`` uint8 ``[3, Hi, Wi]``, ``state`` ``[S]``) as ``spec`` sees it:
    its cameras in order, its native state dims, the instruction. The episode key of an episode is the key of its
    first frame; equal frames (in-process, or rebuilt by the server from the wire) give equal keys."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{spec.name}\0{instruction}\0".encode())
    h.update(state[: spec.state_dim].to("cpu", torch.float32).contiguous().numpy().tobytes())
    for cam in spec.cameras:
        h.update(images[cam].to("cpu", torch.uint8).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class _Frame:
    images: dict[str, Tensor]
    """cam -> uint8 [3, Hi, Wi]"""
    state: Tensor
    """[S]"""
    instruction: str
    embodiment: str


@dataclass
class _Slot:
    history: deque[_Frame]
    queue: deque[Tensor] = field(default_factory=deque)
    chunks: list[list[Tensor | int]] = field(default_factory=list)
    """Temporal ensembling: [chunk [H, A], age] pairs, oldest first."""
    n_real: int = 0
    """Frames observed since reset (the rest of the history is padding)."""
    n_chunks: int = 0
    """Chunks predicted for this slot since reset (the next one's chunk index)."""
    episode_key: int = 0
    """:func:`frame_key` of the first frame since reset."""


Predict = Callable[[Observation, list[int], list[int]], Tensor]
"""``predict(window, episode_key, chunk_index) -> [n, H, A]``: ``window`` is ``T = n_obs_steps``; ``episode_key[j]``
and ``chunk_index[j]`` are window ``j``'s slot's episode key and the number of chunks it got since its reset."""


class ChunkExecutor:
    """Per-slot observation history + action queue (or ensembling buffer); see the module docstring."""

    def __init__(
        self,
        n_obs_steps: int,
        n_action_steps: int,
        horizon: int,
        ensemble: float | None,
        specs: dict[str, EmbodimentSpec],
    ) -> None:
        self.specs = specs
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.horizon = horizon
        self.ensemble = ensemble
        self.slots: list[_Slot] = []

    def _new_slot(self) -> _Slot:
        return _Slot(history=deque(maxlen=self.n_obs_steps))

    def reset(self, indices: Sequence[int] | None = None) -> None:
        if indices is None:
            self.slots = []
            return
        for i in indices:
            if 0 <= i < len(self.slots):
                self.slots[i] = self._new_slot()

    def _push(self, slot: _Slot, frame: _Frame) -> None:
        if slot.history and slot.history[-1].embodiment != frame.embodiment:
            slot.history.clear()
            slot.queue.clear()
            slot.chunks.clear()
            slot.n_real = slot.n_chunks = 0
        if not slot.history:
            slot.history.extend([frame] * self.n_obs_steps)  # pad by repeating the first frame
            slot.episode_key = frame_key(frame.images, frame.state, frame.instruction, self.specs[frame.embodiment])
        else:
            slot.history.append(frame)
        slot.n_real = min(slot.n_real + 1, self.n_obs_steps)

    def _window(self, slots: list[_Slot], device: torch.device) -> Observation:
        """Stack the histories of ``slots`` into a ``T = n_obs_steps`` observation."""
        frames = [list(s.history) for s in slots]
        cams = frames[0][-1].images.keys()
        images = {c: torch.stack([torch.stack([f.images[c] for f in fs]) for fs in frames]) for c in cams}  # [n, T, 3, H, W]
        state = torch.stack([torch.stack([f.state for f in fs]) for fs in frames])  # [n, T, S]
        pad = torch.tensor(
            [[j < self.n_obs_steps - s.n_real for j in range(self.n_obs_steps)] for s in slots], device=device
        )
        return Observation(
            images=images,
            state=state,
            instruction=[fs[-1].instruction for fs in frames],
            embodiment=[fs[-1].embodiment for fs in frames],
            obs_is_pad=pad,
        )

    def step(self, obs: Observation, predict: Predict) -> Tensor:
        """One env step for every slot: ``obs`` is ``T = 1``; returns ``[B, A]`` (``predict`` gives ``[n, H, A]``)."""
        if obs.n_steps != 1:
            raise ValueError(f"select_action takes one observation step per slot (T = 1), got T = {obs.n_steps}")
        b = obs.batch_size
        if len(self.slots) != b:
            if self.slots:
                log.info("select_action batch size changed %d -> %d: resetting all slots", len(self.slots), b)
            self.slots = [self._new_slot() for _ in range(b)]
        for i, slot in enumerate(self.slots):
            frame = _Frame({c: v[i, -1] for c, v in obs.images.items()}, obs.state[i, -1], obs.instruction[i], obs.embodiment[i])
            self._push(slot, frame)
        need = [i for i, s in enumerate(self.slots) if self.ensemble is not None or not s.queue]
        if need:
            group = [self.slots[i] for i in need]
            window = self._window(group, obs.state.device)
            chunks = predict(window, [s.episode_key for s in group], [s.n_chunks for s in group])  # [n, H, A]
            for slot, chunk in zip(group, chunks, strict=True):
                slot.n_chunks += 1
                if self.ensemble is None:
                    slot.queue.extend(chunk[: self.n_action_steps])
                else:
                    slot.chunks.append([chunk, 0])
        actions = [self._pop(s) for s in self.slots]
        width = max(a.shape[-1] for a in actions)
        return torch.stack([torch.nn.functional.pad(a, (0, width - a.shape[-1])) for a in actions])

    def _pop(self, slot: _Slot) -> Tensor:
        if self.ensemble is None:
            return slot.queue.popleft()
        slot.chunks = [c for c in slot.chunks if c[1] < self.horizon]
        weights = [math.exp(-self.ensemble * i) for i in range(len(slot.chunks))]
        total = sum(w * c[0][c[1]] for w, c in zip(weights, slot.chunks, strict=True))
        for c in slot.chunks:
            c[1] += 1
        return total / sum(weights)
