"""How predicted chunks become executed actions: per-slot observation history, chunk schedule, temporal ensembling,
asynchronous execution and real-time chunking (RTC). The one implementation: in-process execution
(``LBMPolicy.select_action``), the server's client (``openlbm.serve.client.RemotePolicy``) and the policy server
itself (for clients that send one frame per control step) all run :class:`ChunkExecutor`.

Synchronous (``mode="sync"``), ``n_obs_steps = 2``, ``horizon = 8``, ``n_action_steps = s = 4`` (``o`` =
observation used, ``a`` = action predicted, ``x`` = action executed); the robot waits while a chunk is computed::

    env step t:   0  1  2  3  4  5  6  7  8
    observation:  o  o                         (t = 0 is padded by repeating frame 0: [o0, o0])
    chunk at 0:   a  a  a  a  a  a  a  a       predicted from [o0, o0]
    executed:     x  x  x  x                   then the next chunk is predicted
    chunk at 4:               a  a  a  a  a  a  a  a      predicted from [o3, o4]
    executed:                 x  x  x  x

Asynchronous (``mode="async"`` or ``"rtc"``) with inference delay ``d = delay_steps = 2``: a chunk predicted from
the observation at step ``t`` is only available at ``t + d``; meanwhile the robot keeps executing the previous one.
Row ``i`` of a chunk is always the action for step ``t + i`` (as in training), so the rows ``0 .. d-1`` of a new
chunk are stale: the steps they were meant for are executed from the old chunk (they are *committed*)::

    env step t:   0  1  2  3  4  5  6  7  8  9  10
    chunk 0:      a  a  a  a  a  a  a  a               predicted at 0 (the first chunk is waited for)
    executed:     x  x  x  x
    chunk 1:            a  a  a  a  a  a  a  a         predicted at 2 = s - d, available at 4
    executed:                 x  x  x  x
    chunk 2:                        a  a  a  a  a  a  a  a      predicted at 6, available at 8
    executed:                                   x  x  x  x

Each chunk still contributes ``s`` executed actions; ``d <= s`` (one inference at a time) and ``s + d <= horizon``.
``async`` switches to the new chunk as it is (a jump at the seam when the two chunks disagree). ``rtc`` (Black et
al. 2025, "Real-Time Execution of Action Chunking Flow Policies") samples the new chunk *guided* towards the old
one where they overlap: its first ``d`` rows are frozen to the committed actions (weight 1), the following rows up
to the end of the old chunk get soft weights decaying to 0 (:func:`rtc_weights`), the rest is free. The guidance
itself (a vector-Jacobian product through the flow head's denoiser) is ``openlbm.models.heads.FlowHead.sample``'s.

With temporal ensembling (ACT) a chunk is predicted at *every* step and the action for step ``t`` is the weighted
mean of every stored chunk's prediction for ``t``, weights ``exp(-m * i)`` with ``i = 0`` the oldest (sync only).

Each batch slot is an independent environment: it keeps its own history and schedule, only the slots that start
an inference are sent to the model, and ``reset([i])`` clears slot ``i`` (the rollout runner calls it at episode
start). ``predict`` receives each window's noise key: the slot's *episode key* (:func:`frame_key` of the first frame
after its reset) and its *chunk index* (chunks predicted for the slot since that reset, 0 for the first). They key
the sampling noise (``LBMPolicy.noise_seed``): fresh per chunk, a pure function of the episode's start and the
chunk's position in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

from openlbm.types import EmbodimentSpec, Observation

log = logging.getLogger(__name__)

MODES = ("sync", "async", "rtc")


@dataclass(frozen=True)
class ExecutionConfig:
    """Everything between a policy's chunks and the actions a robot executes (all of it changes the actions)."""

    n_action_steps: int = 8
    """Actions executed from each chunk before the next one takes over (``s``; ``PolicyConfig.n_action_steps``)."""
    temporal_ensemble: float | None = None
    """ACT temporal ensembling coefficient ``m`` (a chunk every step, overlapping predictions averaged with
    weights ``exp(-m * i)``, ``i = 0`` the oldest); ``None`` = execute ``n_action_steps`` per chunk. Sync only."""
    mode: Literal["sync", "async", "rtc"] = "sync"
    """``sync``: the robot waits for each chunk. ``async``: the next chunk is computed while the current one
    executes and replaces it ``delay_steps`` later. ``rtc``: async, the new chunk guided to agree with the
    committed actions (flow head only)."""
    delay_steps: int = 0
    """Inference delay ``d`` in control steps (async/rtc): a chunk is used from row ``d`` on, ``d`` steps after
    its observation. At ``f`` Hz a latency of ``D`` ms is ``ceil(D * f / 1000)`` steps (:func:`delay_steps`)."""
    rtc_beta: float = 5.0
    """RTC's guidance weight clip ``beta`` (the paper's default 5)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"execution mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.n_action_steps < 1 or self.delay_steps < 0 or not self.rtc_beta > 0:
            raise ValueError(f"need n_action_steps >= 1, delay_steps >= 0, rtc_beta > 0; got {self.n_action_steps}, "
                             f"{self.delay_steps}, {self.rtc_beta}")
        if self.mode == "sync" and self.delay_steps:
            raise ValueError("delay_steps is for mode async/rtc; in sync mode the robot waits for every chunk")
        if self.temporal_ensemble is not None and self.mode != "sync":
            raise ValueError(f"temporal_ensemble predicts a chunk every step: it needs mode 'sync', not {self.mode!r}")

    def check(self, horizon: int) -> None:
        """Raise ``ValueError`` unless this schedule fits chunks of ``horizon`` actions."""
        s, d = self.n_action_steps, self.delay_steps
        if s > horizon:
            raise ValueError(f"n_action_steps={s} exceeds the policy's horizon={horizon}")
        if d > s or s + d > horizon:
            raise ValueError(f"delay_steps={d} needs d <= n_action_steps={s} and s + d <= horizon={horizon}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExecutionConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def delay_steps(delay_ms: float, fps: float) -> int:
    """Control steps that elapse during an inference of ``delay_ms`` at ``fps`` Hz: ``ceil(ms * fps / 1000)``."""
    return math.ceil(round(delay_ms * fps / 1000.0, 9))


def rtc_weights(horizon: int, overlap: int, frozen: int) -> Tensor:
    """RTC's soft mask ``[horizon]`` (Black et al. 2025, eq. 5): 1 on the ``frozen`` committed rows, then
    ``c (e^c - 1) / (e - 1)`` with ``c = (overlap - i) / (overlap - frozen + 1)`` up to the end of the previous
    chunk (row ``overlap``), 0 after it."""
    i = torch.arange(horizon, dtype=torch.float32)
    c = ((overlap - i) / (overlap - frozen + 1)).clamp(min=0.0)
    soft = c * torch.expm1(c) / math.expm1(1.0)
    return torch.where(i < frozen, torch.ones_like(soft), torch.where(i < overlap, soft, torch.zeros_like(soft)))


@dataclass(frozen=True)
class Guidance:
    """What an RTC chunk must agree with: the previous chunk's actions for its rows ``0 .. K-1``."""

    prefix: Tensor
    """``[K, A]`` physical units: the previous chunk from the row executed at this chunk's observation on."""
    frozen: int
    """``d``: the prefix rows executed while this chunk is computed (weight 1)."""
    beta: float = 5.0
    """The guidance weight clip (``ExecutionConfig.rtc_beta``)."""


@dataclass(frozen=True)
class ChunkRequest:
    """One window's chunk request: which slot, its noise key and (RTC) its guidance."""

    slot: int
    episode_key: int
    chunk_index: int
    guidance: Guidance | None = None


Predict = Callable[[Observation, list[ChunkRequest]], "Tensor | Callable[[], Tensor]"]
"""``predict(window, requests) -> [n, H, A]``: ``window`` is ``T = n_obs_steps`` for the ``n`` requesting slots.
It may return a callable instead (a chunk still being computed, e.g. on a server): the executor calls it when the
chunk is due, ``delay_steps`` later."""


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


class _Result:
    """A chunk being computed for several slots; resolved once, on first use."""

    def __init__(self, value: Tensor | Callable[[], Tensor]) -> None:
        self._value = value

    def get(self) -> Tensor:
        if callable(self._value):
            self._value = self._value()
        return self._value


@dataclass
class _Slot:
    history: deque[_Frame]
    chunk: Tensor | None = None
    """``[H, A]``: the chunk being executed."""
    pos: int = 0
    """Steps since ``chunk``'s observation = the row executed next."""
    start: int = 0
    """The first row of ``chunk`` that was executed (0 for the first chunk, ``d`` after it)."""
    pending: tuple[_Result, int, int] | None = None
    """A chunk being computed: (result, its row in the batch, the ``pos`` of the current chunk when it is due)."""
    ensemble: list[list[Tensor | int]] = field(default_factory=list)
    """Temporal ensembling: [chunk [H, A], age] pairs, oldest first."""
    n_real: int = 0
    """Frames observed since reset (the rest of the history is padding)."""
    n_chunks: int = 0
    """Chunks requested for this slot since reset (the next one's chunk index)."""
    episode_key: int = 0
    """:func:`frame_key` of the first frame since reset."""
    seams: int = 0
    """Chunks taken over from a previous one since reset (the first chunk is no seam)."""


class ChunkExecutor:
    """Per-slot observation history + chunk schedule (or ensembling buffer); see the module docstring."""

    def __init__(
        self, n_obs_steps: int, horizon: int, execution: ExecutionConfig, specs: dict[str, EmbodimentSpec]
    ) -> None:
        execution.check(horizon)
        self.specs = specs
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.execution = execution
        self.slots: list[_Slot] = []

    def _new_slot(self) -> _Slot:
        return _Slot(history=deque(maxlen=self.n_obs_steps))

    def _clear(self, i: int) -> _Slot:
        """Start slot ``i`` over (a new episode)."""
        pending = self.slots[i].pending
        if pending is not None:
            # A remote answer still in flight must be read off its connection; it is discarded, failed or not.
            with contextlib.suppress(Exception):
                pending[0].get()
        self.slots[i] = self._new_slot()
        return self.slots[i]

    def reset(self, indices: Sequence[int] | None = None) -> None:
        for i in range(len(self.slots)) if indices is None else indices:
            if 0 <= i < len(self.slots):
                self._clear(i)
        if indices is None:
            self.slots = []

    def _push(self, i: int, frame: _Frame) -> None:
        slot = self.slots[i]
        if slot.history and slot.history[-1].embodiment != frame.embodiment:
            slot = self._clear(i)
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

    def _launches(self, slot: _Slot) -> bool:
        """Does this slot start an inference at this step?"""
        ex = self.execution
        if slot.pending is not None:
            return False
        if ex.temporal_ensemble is not None or slot.chunk is None:
            return True
        return slot.pos == slot.start + ex.n_action_steps - ex.delay_steps  # d steps before the chunk runs out

    def _guidance(self, slot: _Slot) -> Guidance | None:
        ex = self.execution
        if ex.mode != "rtc" or slot.chunk is None:
            return None
        return Guidance(prefix=slot.chunk[slot.pos :], frozen=ex.delay_steps, beta=ex.rtc_beta)

    def step(self, obs: Observation, predict: Predict) -> Tensor:
        """One env step for every slot: ``obs`` is ``T = 1``; returns ``[B, A]``."""
        if obs.n_steps != 1:
            raise ValueError(f"select_action takes one observation step per slot (T = 1), got T = {obs.n_steps}")
        b = obs.batch_size
        if len(self.slots) != b:
            if self.slots:
                log.info("select_action batch size changed %d -> %d: resetting all slots", len(self.slots), b)
                self.reset()
            self.slots = [self._new_slot() for _ in range(b)]
        for i in range(b):
            frame = _Frame({c: v[i, -1] for c, v in obs.images.items()}, obs.state[i, -1], obs.instruction[i], obs.embodiment[i])
            self._push(i, frame)
        for slot in self.slots:
            self._take_due(slot)
        need = [i for i, s in enumerate(self.slots) if self._launches(s)]
        if need:
            self._launch(need, obs.state.device, predict)
        if self.execution.temporal_ensemble is None:
            # with d = s the chunk after an episode's first one is launched at once, from the same observation
            again = [i for i in need if self._launches(self.slots[i])]
            if again:
                self._launch(again, obs.state.device, predict)
        actions = [self._act(s) for s in self.slots]
        width = max(a.shape[-1] for a in actions)
        return torch.stack([torch.nn.functional.pad(a, (0, width - a.shape[-1])) for a in actions])

    def frames_needed(self) -> list[bool]:
        """Per slot: will the frame that the next :meth:`step` brings ever be read (by a window or an episode
        key)? ``False`` is a promise: a caller may pass that frame with stale images (a simulator then skips
        rendering it). Exact for the sync chunk schedule; ``True`` wherever the schedule is not fixed in advance
        (temporal ensembling reads every frame; async/RTC and a slot without a chunk are answered conservatively)."""
        return [self._frame_needed(s) for s in self.slots]

    def _frame_needed(self, slot: _Slot) -> bool:
        ex = self.execution
        if ex.temporal_ensemble is not None or ex.mode != "sync" or slot.chunk is None or slot.pending is not None:
            return True
        # In sync mode the next inference starts at the step whose executed row is start + s, i.e. j steps from
        # now with j = start + s - pos + 1; the next frame stays in the history for n_obs_steps steps (its own
        # included), and every later inference is a whole chunk (s >= 1 steps) after that one.
        j = slot.start + ex.n_action_steps - slot.pos + 1
        return j <= self.n_obs_steps

    def _launch(self, need: list[int], device: torch.device, predict: Predict) -> None:
        """Request chunks for the slots ``need`` (one ``predict`` call); a slot's first chunk is waited for."""
        group = [self.slots[i] for i in need]
        requests = [ChunkRequest(i, s.episode_key, s.n_chunks, self._guidance(s)) for i, s in zip(need, group, strict=True)]
        result = _Result(predict(self._window(group, device), requests))
        for j, slot in enumerate(group):
            slot.n_chunks += 1
            first = slot.chunk is None or self.execution.temporal_ensemble is not None
            slot.pending = (result, j, slot.pos + (0 if first else self.execution.delay_steps))
            self._take_due(slot)

    def _take_due(self, slot: _Slot) -> None:
        """Switch to the pending chunk once it is due."""
        if slot.pending is None or slot.pos < slot.pending[2]:
            return
        result, j, _ = slot.pending
        chunk, slot.pending = result.get()[j], None
        if self.execution.temporal_ensemble is not None:
            slot.ensemble.append([chunk, 0])
            return
        first = slot.chunk is None
        slot.chunk, slot.start = chunk, 0 if first else self.execution.delay_steps
        slot.pos, slot.seams = slot.start, slot.seams + (not first)

    def _act(self, slot: _Slot) -> Tensor:
        if self.execution.temporal_ensemble is not None:
            return self._ensemble(slot)
        assert slot.chunk is not None
        slot.pos += 1
        return slot.chunk[slot.pos - 1]

    def _ensemble(self, slot: _Slot) -> Tensor:
        slot.ensemble = [c for c in slot.ensemble if c[1] < self.horizon]
        m = self.execution.temporal_ensemble
        assert m is not None
        weights = [math.exp(-m * i) for i in range(len(slot.ensemble))]
        total = sum(w * c[0][c[1]] for w, c in zip(weights, slot.ensemble, strict=True))
        for c in slot.ensemble:
            c[1] += 1
        return total / sum(weights)
