"""``evaluate(cfg)``: closed-loop rollouts on fixed, recorded initial states, written as they finish, resumable.

Initial states. Episode ``k`` of task ``t`` starts from the Meta-World state fixed by the seed::

    seed(cfg.seed, t, k) = int.from_bytes(sha256(f"eval/{cfg.seed}/{t}/{k}")[:4], "little") & 0x7FFFFFFF

a pure function of its inputs (no process, rank or worker enters it), stored in every episode record. Two
evaluations with the same ``seed`` therefore run every policy from exactly the same starts, which is what makes the
paired comparison of ``lbm compare`` possible. The ``eval/`` prefix keeps these seeds apart from the demonstration
seeds of ``lbm data generate`` (``sha256(f"{seed}/{t}/{k}")``), so evaluation starts are held out from training.

Sharding. Episodes are listed task-major, ``i = task_index * episodes_per_task + k``; torchrun rank ``r`` of ``W``
takes ``i % W == r`` and appends to ``episodes.rank<r>.jsonl``; within a rank the rollout runner spreads episodes
over ``num_workers`` env processes. Rank 0 waits for every rank's records and writes ``summary.json`` and the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openlbm.envs.generate import demo_starts
from openlbm.envs.suites import robot_name
from openlbm.eval.records import (
    CONFIG_FILE,
    EvalSummary,
    RecordWriter,
    load_records,
    records_path,
    summarize,
)
from openlbm.eval.video import encode_mp4
from openlbm.jsonio import changed_fields, read_json, to_jsonable, write_json
from openlbm.locking import LOCK_FILE, lock_dir
from openlbm.types import EmbodimentSpec, PolicyLike

log = logging.getLogger(__name__)

EXPERT = "expert"
"""``EvalConfig.policy`` value that selects the suite's scripted expert."""

_IDENTITY = ("policy", "suite", "seed", "demo_starts", "instructions", "max_steps", "cameras", "image_size", "server")
"""Config fields that must not change when an evaluation is resumed in the same dir."""


class SpecMismatchError(ValueError):
    """The policy's embodiment (cameras, image size, state/action dims) does not match the environment's."""


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: which policy, on which tasks and starts, with how many episodes, written where."""

    policy: str = EXPERT
    """A training run dir, a checkpoint dir or a policy dir (resolved by ``openlbm.policies.policy_dir.
    resolve_policy_dir``), or ``"expert"`` for the suite's scripted expert. Ignored when ``server`` is set."""
    out: Path | None = None
    """Eval dir: records, summary, videos and report go here; re-running with the same dir resumes. Default:
    ``<policy>/eval/<tasks>-<instructions>-s<seed>`` (``evals/expert-...`` for the expert or a server)."""
    suite: Literal["metaworld", "aloha"] = "metaworld"
    """Simulation suite: ``metaworld`` (Sawyer arm) or ``aloha`` (bimanual ALOHA)."""
    tasks: str | tuple[str, ...] | None = None
    """A task set name (``mt10``, ``mt50``, ``quickstart``, ``aloha``...), a comma list of tasks, or a tuple of
    names, all of the suite; ``None`` = the suite's default set (``quickstart`` / ``aloha``)."""
    episodes_per_task: int = 50
    """Episodes per task (each from its own fixed initial state)."""
    instructions: Literal["train", "heldout"] = "train"
    """Which instruction paraphrases to give the policy (``heldout`` ones were never seen in training)."""
    seed: int = 0
    """Base seed of the initial states (see the module docstring for the formula)."""
    demo_starts: Path | None = None
    """A dataset made by ``lbm data generate``: evaluate on the initial states of its first ``episodes_per_task``
    demos of each task instead of held-out ones (``seed`` is then unused). The positive control: a policy trained on
    those demos that fails on their own starts has a bug, not too little data. A loaded policy's teacher-forced
    action error per action dim on those demos is written beside (``action_error.json``, printed by ``lbm eval``;
    ``openlbm.eval.action_error``)."""
    num_workers: int = 2
    """Env processes per rank (about one per CPU core)."""
    max_steps: int | None = None
    """Time limit per episode; ``None`` uses the suite's default (``MetaWorldConfig`` 200, ``AlohaConfig`` 400)."""
    record_video: bool = True
    """Save a success and a failure clip per task (first camera) under ``videos/`` for the report."""
    cameras: tuple[str, ...] | None = None
    """Cameras to render; ``None`` takes the policy's. Must match the policy's embodiment."""
    image_size: tuple[int, int] | None = None
    """``(height, width)``; ``None`` takes the policy's. Must match the policy's embodiment."""
    device: str = "auto"
    """Torch device for a loaded policy: ``auto`` picks CUDA when available."""
    server: str | None = None
    """``ws://host:port`` of an ``lbm serve`` policy server to evaluate instead of loading ``policy``."""
    noise_seed: int | None = 0
    """The sampler's noise seed, set on a loaded ``LBMPolicy`` (``LBMPolicy.noise_seed``): each chunk's initial
    noise is a fresh draw keyed by (this seed, the chunk's observation window, its chunk index in the episode), so
    an evaluation samples the stochastic policy yet is reproducible, and no episode depends on which others share a
    batch. ``0`` is also the default of ``lbm serve`` and of in-training evaluation: the three score the same
    sampler. ``None`` = torch's global RNG (not reproducible). Not used with ``server`` (the server's
    ``--noise-seed`` applies) or the expert."""
    execution: Literal["sync", "async", "rtc"] = "sync"
    """How the loaded policy's chunks become actions (``ExecutionConfig.mode``): ``sync`` (the simulation pauses
    while a chunk is computed), ``async`` (the next chunk is computed while the current one executes and replaces
    it ``delay_steps`` later) or ``rtc`` (async, guided to agree with the committed actions; flow head). With
    ``server`` it must be what the server executes (its metadata), else the evaluation stops."""
    delay_steps: int = 0
    """Simulated inference delay for async/rtc, in control steps: a latency of D ms at the env's f Hz is
    ``ceil(D * f / 1000)`` (``openlbm.policies.execution.delay_steps``)."""
    embodiment_schedule: bool = True
    """Run the suite robot's own chunk schedule where the policy config gives one (``aloha`` presets: a chunk every
    step, ensembled); ``--no-embodiment-schedule`` runs ``execution`` with the policy's ``n_action_steps`` instead
    (``LBMPolicy.embodiment_schedules``), e.g. async or RTC on ALOHA. Not used with ``server`` (the server's
    ``--no-embodiment-schedule`` applies)."""
    rank: int | None = None
    """This process's shard; ``None`` reads torchrun's ``RANK`` (0 without torchrun)."""
    world_size: int | None = None
    """Number of shards; ``None`` reads torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
    progress: bool = True
    """Show a progress bar."""
    report: bool = True
    """Write ``report.html`` when done (rank 0)."""
    merge_timeout_s: float = 6 * 3600.0
    """How long rank 0 waits for the other ranks' records before summarizing what it has."""
    sequential_baseline: Path | None = None
    """Eval dir of a baseline run with the same ``seed``: run episodes round-robin over tasks and stop as soon as
    the group-sequential sign test (``openlbm.eval.sequential``) decides better/worse at ``alpha``."""
    look_every: int = 0
    """Paired episodes between sequential looks (0 = 5 per task)."""
    alpha: float = 0.05
    """Two-sided error rate of the sequential test."""

    def out_dir(self) -> Path:
        """``out``, or the default eval dir derived from the policy, tasks, instructions and seed."""
        if self.out is not None:
            return Path(self.out)
        from openlbm.envs.tasks import DEFAULT_TASKS

        tasks = self.tasks if self.tasks is not None else DEFAULT_TASKS[self.suite]
        tasks = tasks if isinstance(tasks, str) else ",".join(tasks)
        name = f"{tasks.replace(',', '+')}-{self.instructions}-" + ("demo-starts" if self.demo_starts else f"s{self.seed}")
        if self.policy == EXPERT or self.server:
            return Path("evals") / f"expert-{name}"
        return Path(self.policy) / "eval" / name

    def build(self, policy: PolicyLike | None = None) -> EvalSummary:
        """Run the evaluation (same as :func:`evaluate`)."""
        return evaluate(self, policy)


def episode_seed(base_seed: int, task: str, k: int) -> int:
    """Seed of episode ``k`` of ``task``: a pure function of its inputs (31-bit, see the module docstring)."""
    digest = hashlib.sha256(f"eval/{base_seed}/{task}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class PlannedEpisode:
    index: int
    episode_id: str
    task: str
    seed: int
    instruction: str


def plan_episodes(tasks: list[str], episodes_per_task: int, seed: int, split: str,
                  starts: Mapping[str, Sequence[int]] | None = None) -> list[PlannedEpisode]:
    """Every episode of the evaluation in global (task-major) order; ``starts`` (task -> seeds) replaces the
    held-out seeds (``lbm eval --demo-starts``)."""
    from openlbm.envs.tasks import instruction_for

    out = []
    for ti, task in enumerate(tasks):
        have = len((starts or {}).get(task, ()))
        if starts is not None and have < episodes_per_task:
            raise ValueError(f"--demo-starts: the dataset has {have} demo(s) of {task}, fewer than "
                             f"--episodes-per-task {episodes_per_task}")
        for k in range(episodes_per_task):
            s = int(starts[task][k]) if starts is not None else episode_seed(seed, task, k)
            out.append(PlannedEpisode(ti * episodes_per_task + k, f"{task}/{k:04d}", task, s, instruction_for(task, s, split)))  # type: ignore[arg-type]
    return out


def check_spec(policy_emb: EmbodimentSpec, env_emb: EmbodimentSpec) -> None:
    """Raise :class:`SpecMismatchError` listing every field where the policy and the environment disagree."""
    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, list | tuple) else v

    problems = []
    for name in ("name", "cameras", "image_size", "state_dim", "action_dim"):
        pv, ev = norm(getattr(policy_emb, name)), norm(getattr(env_emb, name))
        if pv != ev:
            problems.append(f"  {name}: policy {pv!r} vs environment {ev!r}")
    if problems:
        raise SpecMismatchError(
            f"policy embodiment {policy_emb.name!r} does not match the {env_emb.name!r} environment:\n"
            + "\n".join(problems)
            + "\n(no rollout was started; pass --cameras/--image-size matching the policy, or evaluate a policy "
            "trained on this embodiment)"
        )


def _validate(cfg: EvalConfig) -> list[str]:
    from openlbm.envs.tasks import DEFAULT_TASKS, resolve_tasks

    if cfg.suite not in DEFAULT_TASKS:
        raise ValueError(f"unknown suite {cfg.suite!r}; available: {', '.join(DEFAULT_TASKS)}")
    if cfg.episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {cfg.episodes_per_task}")
    if cfg.num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {cfg.num_workers}")
    if cfg.instructions not in ("train", "heldout"):
        raise ValueError(f"instructions must be 'train' or 'heldout', got {cfg.instructions!r}")
    tasks = resolve_tasks(cfg.tasks if cfg.tasks is not None else DEFAULT_TASKS[cfg.suite], suite=cfg.suite)
    out = cfg.out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"eval output dir {out} is not writable: {e.strerror or e}") from e
    return tasks


def _rank_world(cfg: EvalConfig) -> tuple[int, int]:
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", "0"))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world}")
    return rank, world


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def env_config(cfg: EvalConfig, policy_emb: EmbodimentSpec | None) -> Any:
    """The suite's env config: explicit ``cameras``/``image_size`` win, else the policy's, else the defaults."""
    from openlbm.envs.suites import env_config as suite_env_config

    cams = cfg.cameras if cfg.cameras is not None else (policy_emb.cameras if policy_emb else None)
    size = cfg.image_size if cfg.image_size is not None else (policy_emb.image_size if policy_emb else None)
    return suite_env_config(cfg.suite, cams, size, cfg.max_steps)


@contextlib.contextmanager
def open_policy(cfg: EvalConfig) -> Iterator[PolicyLike]:
    """Load the policy ``cfg`` names (expert, remote server or checkpoint) and close it afterwards."""
    if cfg.server is not None:
        if not cfg.server.startswith(("ws://", "wss://")):
            raise ValueError(f"--server must be a ws:// or wss:// URL, got {cfg.server!r}")
        from openlbm.serve.client import RemotePolicy

        # Everything this evaluation asks for that changes actions must be what the server executes.
        expect = {"mode": cfg.execution, "delay_steps": cfg.delay_steps, "noise_seed": cfg.noise_seed}
        remote = RemotePolicy(cfg.server, expect=expect)
        robot = robot_name(cfg.suite)
        if robot != remote.embodiment.name and robot in remote.metadata["embodiments"]:
            remote.close()  # a multi-embodiment server: drive the embodiment of this suite's robot
            remote = RemotePolicy(cfg.server, embodiment=robot, expect=expect)
        try:
            yield remote
        finally:
            remote.close()
        return
    if cfg.policy == EXPERT:
        from openlbm.envs.suites import scripted_expert

        yield scripted_expert(cfg.suite, env_config(cfg, None))
        return
    from openlbm.policies.lbm import LBMPolicy
    from openlbm.policies.policy_dir import resolve_policy_dir

    policy_dir = resolve_policy_dir(Path(cfg.policy))
    policy = LBMPolicy.load(policy_dir, device=_pick_device(cfg.device))
    suite_robot = robot_name(cfg.suite)
    if suite_robot in policy.specs:  # a multi-embodiment policy acts as this suite's robot
        policy.embodiment = policy.specs[suite_robot]
    policy.eval()
    policy.noise_seed = cfg.noise_seed
    policy.embodiment_schedules = cfg.embodiment_schedule
    policy.set_execution(replace(policy.default_execution(), mode=cfg.execution, delay_steps=cfg.delay_steps))
    yield policy  # type: ignore[misc]


def _execution_of(policy: PolicyLike) -> dict[str, Any] | None:
    """What changes a policy's actions beyond its weights (``ExecutionConfig`` + noise seed); None for experts."""
    execution = getattr(policy, "execution", None)
    if execution is None:
        return None
    noise = policy.metadata["execution"]["noise_seed"] if hasattr(policy, "metadata") else getattr(policy, "noise_seed", None)
    return {**execution.to_dict(), "noise_seed": noise}


def _check_resume(out: Path, meta: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        write_json(path, meta)
        return
    old = read_json(path)
    # dirs written before the execution was recorded were all evaluated with the policy's own (sync) execution
    keys = [*_IDENTITY, *(["execution"] if "execution" in old else [])]
    changed = changed_fields(old, meta, keys=keys)
    if changed:
        raise ValueError(
            f"{out} holds an evaluation with different settings ({'; '.join(changed)}); resuming would mix them. "
            "Use a new --out dir."
        )
    if old.get("planned") != meta["planned"] or old.get("tasks") != meta["tasks"]:
        write_json(path, meta)  # more tasks/episodes: same starts, extended plan


class _VideoKeeper:
    """Keeps the first success and the first failure clip per task (already saved ones survive a resume)."""

    def __init__(self, out: Path, fps: float) -> None:
        self.dir = out / "videos"
        self.fps = fps
        self.have = {p.name.split("__")[0] + "__" + p.name.split("__")[1] for p in self.dir.glob("*__*__*.mp4")}

    def wants(self, task: str) -> bool:
        """Is a clip of ``task`` still missing? (Only such episodes are recorded: recording renders every frame.)"""
        return not {f"{task}__success", f"{task}__failure"} <= self.have

    def offer(self, task: str, success: bool, episode_id: str, frames: np.ndarray | None) -> None:
        key = f"{task}__{'success' if success else 'failure'}"
        if frames is None or key in self.have or len(frames) == 0:
            return
        k = episode_id.rsplit("/", 1)[-1]
        encode_mp4(frames, self.dir / f"{key}__{k}.mp4", fps=self.fps)
        self.have.add(key)


def _wait_for_ranks(out: Path, planned: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = load_records(out)
        if len(records) >= planned or time.monotonic() > deadline:
            if len(records) < planned:
                log.warning("%s: only %d of %d episodes recorded after waiting; summarizing those", out, len(records), planned)
            return records
        time.sleep(2.0)


def evaluate(cfg: EvalConfig, policy: PolicyLike | None = None) -> EvalSummary:
    """Evaluate ``policy`` (or the one ``cfg`` names) and return the summary; see the module docstring."""
    tasks = _validate(cfg)
    rank, world = _rank_world(cfg)
    with contextlib.ExitStack() as stack:
        # One evaluation per output folder (per rank under torchrun: each rank owns its own records file).
        lock_file = LOCK_FILE if world == 1 else f".openlbm.rank{rank}.lock"
        stack.callback(lock_dir(cfg.out_dir(), f"an evaluation (rank {rank})", lock_file).release)
        if policy is None:
            policy = stack.enter_context(open_policy(cfg))
        if not isinstance(policy, PolicyLike):
            raise TypeError(f"policy must implement PolicyLike (embodiment, select_action, reset), got {type(policy)}")
        env_cfg = env_config(cfg, policy.embodiment)
        check_spec(policy.embodiment, env_cfg.embodiment())  # before any worker starts
        starts = demo_starts(cfg.demo_starts) if cfg.demo_starts is not None else None
        plan = plan_episodes(tasks, cfg.episodes_per_task, cfg.seed, cfg.instructions, starts)
        out = cfg.out_dir()
        meta = {
            **{k: v for k, v in to_jsonable(cfg).items() if k in _IDENTITY},
            "out": str(out), "tasks": tasks, "episodes_per_task": cfg.episodes_per_task, "planned": len(plan),
            "cameras": list(env_cfg.cameras), "image_size": list(env_cfg.image_size), "max_steps": env_cfg.max_steps,
            "seed_formula": 'int.from_bytes(sha256(f"eval/{seed}/{task}/{k}")[:4], "little") & 0x7FFFFFFF',
            "embodiment": policy.embodiment.to_dict(),
            "execution": _execution_of(policy),
        }
        _check_resume(out, meta)
        done = {r["episode_id"] for r in load_records(out)}
        todo = [e for e in plan if e.index % world == rank and e.episode_id not in done]
        log.info("rank %d/%d: %d episodes to run (%d already recorded)", rank, world, len(todo), len(done))
        if cfg.sequential_baseline is not None:
            if world != 1:
                raise ValueError("sequential evaluation runs in one process (its looks are sequential); unset WORLD_SIZE")
            _run_sequential(cfg, policy, env_cfg, plan, records_path(out, rank, world))
        elif todo:
            _rollout(cfg, policy, env_cfg, [todo], records_path(out, rank, world))
        if cfg.demo_starts is not None and rank == 0 and hasattr(policy, "specs"):
            from openlbm.eval.action_error import write_demo_error

            # where the rollouts failed, which action dims the policy had not fit on those very demos
            try:
                write_demo_error(policy, cfg.demo_starts, tasks, cfg.episodes_per_task, out)
            except ValueError as e:  # e.g. a mixture policy whose cameras the dataset lacks: the rollouts still count
                log.warning("%s: no teacher-forced action error: %s", cfg.demo_starts, e)
    if rank != 0:
        return summarize(out, load_records(out), tasks, len(plan), cfg.server or cfg.policy)
    records = _wait_for_ranks(out, len(plan), cfg.merge_timeout_s) if world > 1 else load_records(out)
    summary = summarize(out, records, tasks, len(plan), cfg.server or cfg.policy)
    summary.save()
    if cfg.report:
        from openlbm.eval.report import write_report

        write_report(out)
    return summary


def _run_sequential(cfg: EvalConfig, policy: PolicyLike, env_cfg: Any, plan: list[PlannedEpisode], path: Path) -> None:
    """Round-robin over tasks in looks of ``look_every`` episodes; stop once the paired test decides."""
    from openlbm.eval.compare import paired_sequence
    from openlbm.eval.sequential import run_sequential

    assert cfg.sequential_baseline is not None
    base = load_records(Path(cfg.sequential_baseline))
    base_keys = {(r["task"], int(r["seed"])) for r in base}
    paired = [e for e in plan if (e.task, e.seed) in base_keys]
    if not paired:
        raise ValueError(f"{cfg.sequential_baseline} shares no initial state with this evaluation (use its --seed)")
    paired.sort(key=lambda e: (int(e.episode_id[-4:]), e.task))  # every look covers all tasks evenly
    look = cfg.look_every or 5 * len({e.task for e in paired})

    def decide() -> bool:
        xs, ys = paired_sequence(base, load_records(cfg.out_dir()))
        test = run_sequential(xs, ys, look_every=look, planned_pairs=len(paired), alpha=cfg.alpha)
        state = {"baseline": str(cfg.sequential_baseline), "alpha": cfg.alpha, "look_every": look,
                 "planned_pairs": len(paired), "decided": test.decided, "verdict": test.verdict,
                 "looks": [vars(lk) for lk in test.looks]}
        write_json(cfg.out_dir() / "sequential.json", state)
        if test.decided:
            log.info("sequential test decided after %d paired episodes: %s", test.looks[-1].pairs, test.verdict)
        return test.decided

    done = {r["episode_id"] for r in load_records(cfg.out_dir())}
    chunks = [[e for e in paired[i : i + look] if e.episode_id not in done] for i in range(0, len(paired), look)]
    if not decide():
        _rollout(cfg, policy, env_cfg, chunks, path, after_chunk=decide)


def _rollout(
    cfg: EvalConfig,
    policy: PolicyLike,
    env_cfg: Any,
    chunks: list[list[PlannedEpisode]],
    path: Path,
    after_chunk: Callable[[], bool] | None = None,
) -> None:
    """Run the chunks with one set of env workers; ``after_chunk() -> True`` stops early."""
    import torch

    from openlbm.envs.rollout import EpisodeResult, EpisodeSpec, RolloutRunner

    writer = RecordWriter(path)
    videos = _VideoKeeper(cfg.out_dir(), fps=20.0)

    def on_result(res: EpisodeResult) -> None:
        writer.write({
            "episode_id": res.episode_id, "task": res.task, "seed": res.seed, "instruction": res.instruction,
            "success": bool(res.success), "steps": int(res.steps), "seconds": round(float(res.seconds), 4),
            "error": res.error,
        })
        if cfg.record_video:
            videos.offer(res.task, res.success, res.episode_id, res.frames)

    def record(spec: EpisodeSpec) -> bool:
        return cfg.record_video and bool(env_cfg.cameras) and videos.wants(spec.task)
    workers = min(cfg.num_workers, max(len(c) for c in chunks))
    try:
        with RolloutRunner(env_cfg, num_workers=max(1, workers)) as runner, torch.inference_mode():
            for chunk in chunks:
                specs = [EpisodeSpec(e.episode_id, e.task, e.seed, e.instruction) for e in chunk]
                if specs:
                    runner.run(policy, specs, record_video=record, on_result=on_result, progress=cfg.progress)
                if after_chunk is not None and after_chunk():
                    break
    finally:
        writer.close()
