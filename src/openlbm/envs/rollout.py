"""Parallel rollouts: environments step in worker processes, the policy runs batched in the main process.

```
 main process                                   worker 0 .. N-1 (spawned, LP_NUM_THREADS=1, 1 torch thread)
 ───────────────────────────────────────────    ───────────────────────────────────────────────────────────
 free slot k? ─ reset(task, seed, instr) ───►   env = cfg.build(task); env.reset(seed) ─► EnvFrame
 wait for every in-flight reply (deadline)  ◄─  (frame, reward, terminated, truncated, info)
 policy.select_action(all N slots at once)       (idle slots get a copy of a live frame; output ignored)
 step(action[k]) to every live slot  ───────►   env.step(action) ─► ...
```
Slot ``k`` is always batch index ``k`` of the policy, so policies that keep per-slot history or action queues
(chunked execution: one ``select_action`` per env step, the policy pops its own queue) see consistent slots;
``policy.reset([k])`` runs at each episode start. An episode ends at its first success (Meta-World's standard),
at the time limit, or on an error. A worker that dies (EOF on its pipe) or misses its deadline is killed and
replaced, and its episode is reported with ``error`` set and ``success=False``: never dropped, never retried
silently. Env exceptions (e.g. a NaN action) are caught in the worker and reported the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import numpy as np

from openlbm.types import EmbodimentSpec, EnvFrame, PolicyLike, observation_from_frames

log = logging.getLogger(__name__)

_ENV_LOCK = threading.Lock()
_WORKER_ENV = {"LP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class EnvConfig(Protocol):
    """What the runner needs of a suite's env config (a frozen dataclass: ``MetaWorldConfig``, ``AlohaConfig``)."""

    cameras: tuple[str, ...]
    max_steps: int

    def build(self, task: str, seed: int = 0) -> Any: ...

    def embodiment(self) -> EmbodimentSpec: ...


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to roll out. ``(task, seed)`` fixes the initial state exactly."""

    episode_id: str
    task: str
    seed: int
    instruction: str


@dataclass
class EpisodeResult:
    """Outcome of one episode. ``error`` is set (and ``success`` False) when the env or its worker failed."""

    episode_id: str
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    seconds: float
    error: str | None = None
    frames: np.ndarray | None = None
    """uint8 ``[T, Hi, Wi, 3]`` of the first camera (initial frame included) when ``record_video`` is on."""
    trajectory: dict[str, np.ndarray] | None = None
    """With ``record_trajectory``: per-step arrays of length ``steps`` (``images.<cam>`` uint8 [T, H, W, 3],
    ``state`` float32 [T, S], ``action`` float32 [T, A], ``reward`` float32 [T], ``success`` bool [T], and
    ``privileged`` [T, D] when the env provides it); entry t holds the observation before action t and the
    reward/success after it (LeRobot's ``next.*``)."""


@contextlib.contextmanager
def _sigint_ignored() -> Any:
    """Start children with SIGINT ignored (an ignored signal stays ignored across exec, and Python then installs no
    handler): a Ctrl-C reaches the whole process group, and the parent alone should react to it, shutting its
    workers down, instead of every worker dying mid-step with its own traceback."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change handlers; a Ctrl-C goes to the main thread anyway
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(conn: Connection, env_cfg: Any, cache_size: int = 2) -> None:
    """Worker loop: build envs on demand (small LRU by task), answer reset/step, report exceptions as errors."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    envs: OrderedDict[str, Any] = OrderedDict()
    env: Any = None
    can_skip = False  # does env.step take render=? (an env without it renders every frame: skipping is optional)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        cmd = msg[0]
        if cmd == "close":
            break
        try:
            if cmd == "reset":
                _, task, seed, instruction = msg
                if task not in envs:
                    if len(envs) >= cache_size:
                        envs.popitem(last=False)[1].close()
                    envs[task] = env_cfg.build(task, seed)
                envs.move_to_end(task)
                env = envs[task]
                can_skip = "render" in inspect.signature(env.step).parameters
                frame, info = env.reset(seed=seed, options={"instruction": instruction})
                conn.send(("ok", frame, 0.0, False, False, info))
            elif cmd == "step":
                skip = can_skip and not msg[2]
                frame, reward, terminated, truncated, info = env.step(msg[1], render=False) if skip else env.step(msg[1])
                conn.send(("ok", frame, reward, terminated, truncated, info))
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        except Exception as e:  # report, keep serving: the main process decides what the episode counts as
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
    for e in envs.values():
        e.close()


@dataclass
class _Slot:
    """Main-process bookkeeping for one worker."""

    proc: Any
    conn: Connection
    spec: EpisodeSpec | None = None
    index: int = -1
    t0: float = 0.0
    steps: int = 0
    frame: EnvFrame | None = None
    record: bool = False
    """Record this episode's video."""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """The last rendered images: stand-ins for a frame the policy said it will not read (never read by it)."""
    waiting_since: float | None = None
    deadline_s: float = 0.0
    video: list[np.ndarray] = field(default_factory=list)
    traj: dict[str, list] = field(default_factory=dict)


class RolloutRunner:
    """Roll out a :class:`PolicyLike` on many episodes with ``num_workers`` env processes.

    ``step_timeout_s`` bounds every env reply; ``start_timeout_s`` bounds a reset (which may spawn the worker,
    import MuJoCo and create the GL context). ``stop_on_success=False`` runs every episode to the time limit.
    The env config's embodiment fixes the action dim sent to the envs (a policy may return more, padded, dims)
    and the state dim the envs must report. With ``skip_unread_frames``, in an episode whose video and trajectory
    are not recorded, a frame the policy's ``frames_needed()`` says it will not read is not rendered: with 25-step chunks
    and a 2-frame history that is 23 of every 25 frames, and the episodes are the same as with every frame rendered.
    """

    def __init__(
        self,
        env_cfg: EnvConfig,
        num_workers: int,
        max_steps: int | None = None,
        *,
        step_timeout_s: float = 60.0,
        start_timeout_s: float = 180.0,
        stop_on_success: bool = True,
        start_method: str = "spawn",
        skip_unread_frames: bool = True,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.env_cfg = replace(env_cfg, max_steps=max_steps) if max_steps is not None else env_cfg  # type: ignore[type-var]
        self.max_steps = self.env_cfg.max_steps
        self.embodiment = self.env_cfg.embodiment()
        self.num_workers = num_workers
        self.step_timeout_s = step_timeout_s
        self.start_timeout_s = start_timeout_s
        self.stop_on_success = stop_on_success
        self.skip_unread_frames = skip_unread_frames
        self._ctx = mp.get_context(start_method)
        self._slots: list[_Slot] = [self._spawn() for _ in range(num_workers)]
        self.num_replaced = 0
        self._startup_failures = 0

    # -- worker management -------------------------------------------------------------------------------------
    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.env_cfg), daemon=True)
        with _ENV_LOCK, _sigint_ignored():  # the child inherits os.environ at start: pin its BLAS/llvmpipe threads
            saved = {k: os.environ.get(k) for k in _WORKER_ENV}
            os.environ.update(_WORKER_ENV)
            try:
                proc.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child.close()
        return _Slot(proc=proc, conn=parent)

    def _replace(self, k: int) -> None:
        old = self._slots[k]
        if old.proc.is_alive():
            old.proc.kill()
        old.proc.join(timeout=10)
        old.conn.close()
        self._slots[k] = self._spawn()
        self.num_replaced += 1

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the current workers (slot order)."""
        return [int(s.proc.pid) for s in self._slots]

    def close(self) -> None:
        for s in self._slots:
            with contextlib.suppress(BrokenPipeError, OSError):
                s.conn.send(("close",))
        for s in self._slots:
            s.proc.join(timeout=5)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(timeout=5)
            s.conn.close()
        self._slots = []

    def __enter__(self) -> RolloutRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one episode's lifecycle -------------------------------------------------------------------------------
    def _send(self, k: int, msg: tuple, timeout_s: float) -> None:
        slot = self._slots[k]
        slot.waiting_since, slot.deadline_s = time.monotonic(), timeout_s
        with contextlib.suppress(BrokenPipeError, OSError):  # a dead worker is noticed as EOF when gathering
            slot.conn.send(msg)

    def _gather(self) -> dict[int, tuple]:
        """Wait for every in-flight worker; dead or late ones come back as ``("error", why)`` and are replaced."""
        replies: dict[int, tuple] = {}
        waiting = {k for k, s in enumerate(self._slots) if s.waiting_since is not None}
        while waiting:
            now = time.monotonic()
            deadlines = {k: self._slots[k].waiting_since + self._slots[k].deadline_s for k in waiting}
            ready = wait([self._slots[k].conn for k in waiting], timeout=max(0.0, min(deadlines.values()) - now))
            for k in list(waiting):
                slot = self._slots[k]
                if slot.conn in ready:
                    try:
                        replies[k] = slot.conn.recv()
                    except (EOFError, OSError):
                        slot.proc.join(timeout=5)
                        replies[k] = ("error", f"worker crashed (pid {slot.proc.pid}, exit code {slot.proc.exitcode})")
                        self._fail_worker(k)
                elif time.monotonic() >= deadlines[k]:
                    replies[k] = ("error", f"worker timed out: no reply within {slot.deadline_s:.0f}s (pid {slot.proc.pid})")
                    self._fail_worker(k)
                else:
                    continue
                self._slots[k].waiting_since = None
                waiting.discard(k)
        return replies

    def _check_startup_failures(self, error: str) -> None:
        if not error.startswith("worker crashed"):
            return
        self._startup_failures += 1
        if self._startup_failures > 2 * self.num_workers:
            raise RuntimeError(
                f"{self._startup_failures} rollout workers in a row died before answering (last: {error}). Workers are "
                "started with multiprocessing 'spawn', which re-imports your __main__ module: guard a script's "
                "entry point with `if __name__ == \"__main__\":`."
            )

    def _fail_worker(self, k: int) -> None:
        old = self._slots[k]
        log.warning("rollout worker %d (pid %s) failed on %s; replacing it", k, old.proc.pid, old.spec)
        spec, index, t0, steps = old.spec, old.index, old.t0, old.steps
        self._replace(k)
        new = self._slots[k]
        new.spec, new.index, new.t0, new.steps = spec, index, t0, steps

    def _start(self, k: int, index: int, spec: EpisodeSpec, policy: PolicyLike, record: bool) -> None:
        slot = self._slots[k]
        slot.spec, slot.index, slot.t0, slot.steps, slot.frame = spec, index, time.monotonic(), 0, None
        slot.images, slot.record = {}, record
        slot.video, slot.traj = [], {}
        policy.reset([k])
        reseed = getattr(policy, "reseed", None)  # optional hook: per-episode noise streams (ScriptedExpert)
        if callable(reseed):
            reseed(k, spec.seed)
        self._send(k, ("reset", spec.task, spec.seed, spec.instruction), self.start_timeout_s)

    def _finish(self, k: int, success: bool, error: str | None) -> EpisodeResult:
        slot = self._slots[k]
        assert slot.spec is not None
        traj = None
        if slot.traj:
            traj = {key: np.stack(v) if v else np.zeros((0,)) for key, v in slot.traj.items()}
        res = EpisodeResult(
            episode_id=slot.spec.episode_id, task=slot.spec.task, seed=slot.spec.seed,
            instruction=slot.spec.instruction, success=success and error is None, steps=slot.steps,
            seconds=time.monotonic() - slot.t0, error=error,
            frames=np.stack(slot.video) if slot.record and slot.video else None, trajectory=traj,
        )
        slot.spec, slot.frame, slot.video, slot.traj = None, None, [], {}
        return res

    def _record(self, slot: _Slot, frame: EnvFrame, record_trajectory: bool) -> None:
        if slot.record and frame.images:
            slot.video.append(next(iter(frame.images.values())))
        if record_trajectory:
            for cam, img in frame.images.items():
                slot.traj.setdefault(f"images.{cam}", []).append(img)
            slot.traj.setdefault("state", []).append(frame.state)
            if frame.privileged is not None:
                slot.traj.setdefault("privileged", []).append(frame.privileged)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(
        self,
        policy: PolicyLike,
        episodes: Sequence[EpisodeSpec],
        record_video: bool | Callable[[EpisodeSpec], bool] = False,
        on_result: Callable[[EpisodeResult], None] | None = None,
        progress: bool = True,
        *,
        record_trajectory: bool = False,
    ) -> list[EpisodeResult]:
        """Roll out every episode; results come back in the order of ``episodes``.

        ``record_video``: for every episode, or decided per episode at its start by a function of its spec (a
        recorded episode renders every frame; the others only the frames the policy reads).

        ``on_result`` is called as each episode finishes (completion order). A policy with a
        ``reseed(slot, seed)`` method (e.g. :class:`~openlbm.envs.expert.ScriptedExpert`) gets the episode seed at
        each episode start, so its randomness is per episode, independent of scheduling.
        """
        if not self._slots:
            raise RuntimeError("RolloutRunner is closed")
        pending = deque(enumerate(episodes))
        results: list[EpisodeResult | None] = [None] * len(episodes)
        bar = _Progress(len(episodes), enabled=progress)

        def done(k: int, success: bool, error: str | None) -> None:
            res = self._finish(k, success, error)
            results[self._slots[k].index] = res
            bar.update(res)
            if on_result is not None:
                on_result(res)

        try:
            while pending or any(s.spec is not None for s in self._slots):
                for k, slot in enumerate(self._slots):
                    if slot.spec is None and pending:
                        i, spec = pending.popleft()
                        self._start(k, i, spec, policy, record_video(spec) if callable(record_video) else record_video)
                for k, reply in self._gather().items():
                    slot = self._slots[k]
                    if reply[0] == "error":
                        done(k, False, reply[1])
                        self._check_startup_failures(reply[1])
                        continue
                    self._startup_failures = 0
                    _, frame, reward, terminated, truncated, info = reply
                    if np.shape(frame.state) != (self.embodiment.state_dim,):
                        done(k, False, f"env state has shape {np.shape(frame.state)}, but embodiment "
                                       f"{self.embodiment.name} has state_dim {self.embodiment.state_dim}")
                        continue
                    success = bool(info.get("success", False))
                    if slot.steps > 0 and record_trajectory:
                        slot.traj.setdefault("reward", []).append(np.float32(reward))
                        slot.traj.setdefault("success", []).append(success)
                    if slot.steps > 0 and ((success and self.stop_on_success) or terminated or truncated):
                        if slot.record and frame.images:
                            slot.video.append(next(iter(frame.images.values())))
                        done(k, success, None)
                        continue
                    if frame.images or not slot.images:
                        slot.images = frame.images
                    else:  # not rendered: the policy promised not to read it
                        frame = replace(frame, images=slot.images)
                    slot.frame = frame
                    self._record(slot, frame, record_trajectory)
                self._act(policy, record_trajectory)
        except BaseException:
            # A policy bug or Ctrl-C mid-step: workers may hold half-done episodes; restart them so the runner
            # stays usable, then let the caller see the original exception.
            for k, slot in enumerate(self._slots):
                if slot.spec is not None or slot.waiting_since is not None:
                    self._replace(k)
            raise
        finally:
            bar.close()
        return [r for r in results if r is not None]

    def _act(self, policy: PolicyLike, record_trajectory: bool) -> None:
        live = [k for k, s in enumerate(self._slots) if s.spec is not None and s.frame is not None]
        if not live:
            return
        filler = self._slots[live[0]].frame
        frames = [s.frame if (s.spec is not None and s.frame is not None) else filler for s in self._slots]
        actions = policy.select_action(observation_from_frames(frames, policy.embodiment.name))
        actions = np.asarray(actions.detach().cpu().numpy() if hasattr(actions, "detach") else actions)
        dim = self.embodiment.action_dim
        if actions.ndim != 2 or actions.shape[0] != len(frames) or actions.shape[1] < dim:
            raise ValueError(
                f"policy.select_action must return [B={len(frames)}, >={dim}] for {self.embodiment.name}, "
                f"got {actions.shape}"
            )
        needed = getattr(policy, "frames_needed", None)
        skip = self.skip_unread_frames and not record_trajectory and callable(needed)
        render = needed() if skip else [True] * len(frames)  # type: ignore[misc]
        for k in live:
            slot = self._slots[k]
            a = actions[k, :dim].astype(np.float32)  # [A_padded] -> the embodiment's native action dims
            if record_trajectory:
                slot.traj.setdefault("action", []).append(a)
            slot.frame = None
            slot.steps += 1
            self._send(k, ("step", a, bool(render[k]) or slot.record), self.step_timeout_s)


class _Progress:
    """A rich progress bar (episodes, success rate, episodes/s, ETA) that is a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.n_success = 0
        self.n_error = 0
        self._p = None
        if enabled and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("rollouts"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            )
            self._p.start()
            self._task = self._p.add_task("rollouts", total=total, info="")
            self._t0 = time.monotonic()

    def update(self, res: EpisodeResult) -> None:
        self.n_success += int(res.success)
        self.n_error += int(res.error is not None)
        if self._p is not None:
            n = self._p.tasks[0].completed + 1
            rate = n / max(1e-9, time.monotonic() - self._t0)
            info = f"success {self.n_success}/{n}  errors {self.n_error}  {rate:.2f} ep/s"
            self._p.update(self._task, advance=1, info=info)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
