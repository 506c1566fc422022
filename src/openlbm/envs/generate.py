"""Scripted demonstrations: run a suite's experts (Meta-World, ALOHA) in parallel workers and write the successes.

Determinism and resumption rest on three rules:

1. Attempt ``k`` of a task has seed ``episode_seed(base_seed, task, k)`` (a hash, stable across processes and
   machines), and everything about the attempt (initial state, instruction, action noise) derives from that seed.
2. Attempts are *processed* in a fixed order, task by task and ``k`` ascending, whatever order the workers finish
   them in. A task gets attempts ``0..N-1`` first, then as many more as it fell short, so the kept episodes are
   the first ``N`` successes, and 1 worker and 16 workers write byte-identical frame data.
3. Every processed attempt is appended to ``meta/generation_attempts.jsonl`` *before* its episode is committed,
   with the episode index it is about to get. On resume, the writer drops any half-written episode and lines that
   point past the last committed episode are discarded, so nothing is duplicated or lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openlbm.envs import suites
from openlbm.envs.rollout import EpisodeResult, EpisodeSpec, RolloutRunner
from openlbm.envs.tasks import DEFAULT_TASKS, instruction_for, resolve_tasks
from openlbm.jsonio import changed_fields, read_json, to_jsonable, write_json
from openlbm.types import ACTION_KEY, STATE_KEY, FeatureSpec, camera_key

log = logging.getLogger(__name__)

ATTEMPTS_FILE = "meta/generation_attempts.jsonl"
SUMMARY_FILE = "meta/generation.json"


@dataclass(frozen=True)
class GenerateConfig:
    """Scripted-expert demonstration generation (``lbm data generate``)."""

    out: Path
    """Output dataset directory (created; an existing one made by the same config is resumed)."""
    tasks: str | None = None
    """Task set (mt10, mt50, ml45_train, ml45_test, quickstart, aloha) or comma-separated task names of the suite;
    ``None`` = the suite's default set (``quickstart`` / ``aloha``)."""
    episodes_per_task: int = 50
    """Successful episodes to keep per task."""
    cameras: tuple[str, ...] | None = None
    """Cameras to record (stored as ``observation.images.<camera>`` videos); ``None`` = the suite's defaults."""
    size: int = 128
    """Image width in pixels (and height, unless ``height`` is given)."""
    height: int | None = None
    """Image height in pixels; ``None`` = ``size`` (square). ALOHA's cameras keep gym-aloha's horizontal view at any
    aspect, and ``--size 128 --height 64`` frames its table band with both arms (docs/simulation.md)."""
    max_steps: int | None = None
    """Time limit per attempt (``None`` = the suite's default: 200 Meta-World, 400 ALOHA); attempts that do not
    succeed by then are dropped (and counted)."""
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    """Env worker processes (one per core is best)."""
    seed: int = 0
    """Base seed: with the task and the attempt number it determines every initial state and noise draw."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to expert actions (diversity); the noisy action is the one recorded."""
    max_attempts_factor: float = 2.0
    """Give up on a task after ``ceil(factor * episodes_per_task) + 5`` attempts (an expert that rarely succeeds)."""
    video_codec: str = "h264"
    """Codec for the camera videos (passed to the dataset writer)."""
    suite: Literal["metaworld", "aloha"] = "metaworld"
    """Simulator suite: ``metaworld`` (Sawyer, 4-d actions) or ``aloha`` (bimanual, 14-d joint actions)."""
    progress: bool = True
    """Show a progress bar."""

    def env_config(self) -> Any:
        """The suite's env config (``MetaWorldConfig`` / ``AlohaConfig``) for these settings."""
        return suites.env_config(self.suite, self.cameras, self.image_size(), self.max_steps)

    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of every recorded image."""
        return (self.size if self.height is None else self.height), self.size

    def task_list(self) -> list[str]:
        return resolve_tasks(self.tasks if self.tasks is not None else DEFAULT_TASKS[self.suite], suite=self.suite)

    def identity(self) -> dict[str, Any]:
        """The fields that define the dataset's content (a resumed run must agree on all of them)."""
        d = to_jsonable(self)
        for k in ("out", "workers", "progress"):
            d.pop(k)
        env_cfg = self.env_config()
        d["cameras"] = list(env_cfg.cameras)
        d["max_steps"] = env_cfg.max_steps
        d["tasks"] = self.task_list()
        return d


def episode_seed(base_seed: int, task: str, k: int) -> int:
    """Seed of attempt ``k`` of ``task``: a pure, process-independent function of its inputs (31-bit)."""
    digest = hashlib.sha256(f"{base_seed}/{task}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def features(cfg: GenerateConfig) -> dict[str, FeatureSpec]:
    env_cfg = cfg.env_config()
    feats = {
        camera_key(cam): FeatureSpec("video", (*cfg.image_size(), 3), ("height", "width", "channels"))
        for cam in env_cfg.cameras
    }
    state_names, action_names = suites.feature_names(cfg.suite)
    feats[STATE_KEY] = FeatureSpec("float32", (len(state_names),), state_names)
    feats[ACTION_KEY] = FeatureSpec("float32", (len(action_names),), action_names)
    feats["next.success"] = FeatureSpec("bool", (1,))
    feats["next.reward"] = FeatureSpec("float32", (1,))
    return feats


def demo_starts(root: Path) -> dict[str, list[int]]:
    """task -> the initial-state seeds of the dataset's kept demos, in episode order: where a policy trained on them
    must succeed (the positive control of ``lbm eval --demo-starts``). Only datasets made by ``lbm data generate``
    record them; attempts whose episode was never committed are left out, as the generator itself does."""
    return {task: [seed for _, seed in eps] for task, eps in _kept_demos(root).items()}


def demo_episodes(root: Path) -> dict[str, list[int]]:
    """task -> the dataset's episode indices of its kept demos, in the order of :func:`demo_starts`."""
    return {task: [ep for ep, _ in eps] for task, eps in _kept_demos(root).items()}


def _kept_demos(root: Path) -> dict[str, list[tuple[int, int]]]:
    """task -> sorted ``(episode index, seed)`` of the committed demos."""
    from openlbm.data.layout import read_info

    path = Path(root) / ATTEMPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; demo initial states are recorded by `lbm data generate` only")
    committed = int(read_info(Path(root)).get("total_episodes") or 0)
    starts: dict[str, list[tuple[int, int]]] = {}
    for rec in _logged_attempts(path):
        if rec.get("episode_index") is not None and rec["episode_index"] < committed:
            starts.setdefault(str(rec["task"]), []).append((int(rec["episode_index"]), int(rec["seed"])))
    return {task: sorted(eps) for task, eps in starts.items()}


def _logged_attempts(path: Path) -> list[dict[str, Any]]:
    """Every record of an attempts log; a torn last line (a crash mid-write) is no record, any other bad line is an
    error naming it."""
    out = []
    raw_lines = path.read_text().splitlines()
    for i, raw in enumerate(raw_lines):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            if i == len(raw_lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return out


def _read_attempts(root: Path, committed: int) -> list[dict[str, Any]]:
    """Logged attempts whose episode (if any) was committed; rewrites the log without the rest."""
    path = root / ATTEMPTS_FILE
    if not path.exists():
        return []
    lines = [r for r in _logged_attempts(path) if r.get("episode_index") is None or r["episode_index"] < committed]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in lines))
    tmp.replace(path)
    return lines


class _Generation:
    """One generation run: owns the writer, the attempt log and the in-order commit buffer."""

    def __init__(self, cfg: GenerateConfig, writer: Any, attempts: list[dict[str, Any]]) -> None:
        self.cfg, self.writer = cfg, writer
        self.tasks = cfg.task_list()
        self.cameras = cfg.env_config().cameras
        self.max_attempts = math.ceil(cfg.max_attempts_factor * cfg.episodes_per_task) + 5
        self.next_k = dict.fromkeys(self.tasks, 0)
        self.kept = dict.fromkeys(self.tasks, 0)
        self.failed = dict.fromkeys(self.tasks, 0)
        self.errors = dict.fromkeys(self.tasks, 0)
        for rec in attempts:
            self._count(rec)
        self.log_file = open(cfg.out / ATTEMPTS_FILE, "a")  # noqa: SIM115 - closed in finish()
        self.buffer: dict[int, EpisodeResult] = {}
        self.next_to_process = 0
        self.round_index: dict[str, int] = {}

    def _count(self, rec: dict[str, Any]) -> None:
        task = rec["task"]
        if task not in self.next_k or rec["k"] != self.next_k[task]:
            raise ValueError(f"{self.cfg.out / ATTEMPTS_FILE}: unexpected attempt {rec} (log out of order)")
        self.next_k[task] += 1
        if rec["episode_index"] is not None:
            self.kept[task] += 1
        elif rec.get("error"):
            self.errors[task] += 1
        else:
            self.failed[task] += 1

    def plan_round(self) -> list[EpisodeSpec]:
        specs = []
        for task in self.tasks:
            need = self.cfg.episodes_per_task - self.kept[task]
            n = max(0, min(need, self.max_attempts - self.next_k[task]))
            for k in range(self.next_k[task], self.next_k[task] + n):
                s = episode_seed(self.cfg.seed, task, k)
                specs.append(EpisodeSpec(f"{task}/{k}", task, s, instruction_for(task, s, "train")))
        self.round_index = {s.episode_id: i for i, s in enumerate(specs)}
        self.buffer, self.next_to_process = {}, 0
        return specs

    def on_result(self, res: EpisodeResult) -> None:
        """Buffer ``res`` and process every attempt whose predecessors are all done, in plan order."""
        self.buffer[self.round_index[res.episode_id]] = res
        while self.next_to_process in self.buffer:
            self._process(self.buffer.pop(self.next_to_process))
            self.next_to_process += 1

    def _process(self, res: EpisodeResult) -> None:
        k = int(res.episode_id.rsplit("/", 1)[1])
        keep = res.success and res.error is None and res.trajectory is not None
        rec = {"task": res.task, "k": k, "seed": res.seed, "success": res.success, "steps": res.steps,
               "episode_index": self.writer.num_episodes if keep else None, "error": res.error}
        if keep:
            self._add_frames(res)
        self.log_file.write(json.dumps(rec) + "\n")
        self.log_file.flush()
        os.fsync(self.log_file.fileno())
        if keep:
            index = self.writer.save_episode()
            if index != rec["episode_index"]:
                raise RuntimeError(f"dataset writer returned episode {index}, expected {rec['episode_index']}")
        self._count(rec)
        if res.error:
            log.warning("attempt %s failed with an error: %s", res.episode_id, res.error.splitlines()[0])

    def _add_frames(self, res: EpisodeResult) -> None:
        traj = res.trajectory
        assert traj is not None
        for t in range(res.steps):
            frame: dict[str, Any] = {camera_key(cam): traj[f"images.{cam}"][t] for cam in self.cameras}
            frame[STATE_KEY] = traj["state"][t].astype(np.float32)
            frame[ACTION_KEY] = traj["action"][t].astype(np.float32)
            frame["next.success"] = np.array([bool(traj["success"][t])])
            frame["next.reward"] = np.array([traj["reward"][t]], dtype=np.float32)
            self.writer.add_frame(frame, task=res.instruction)

    def summary(self) -> dict[str, Any]:
        per_task = {}
        for t in self.tasks:
            tried = self.kept[t] + self.failed[t]
            per_task[t] = {"attempts": self.next_k[t], "kept": self.kept[t], "failed": self.failed[t],
                           "errors": self.errors[t], "expert_success_rate": self.kept[t] / tried if tried else None}
        tried = sum(v["kept"] + v["failed"] for v in per_task.values())
        return {"config": self.cfg.identity(), "expert_success_rate": sum(self.kept.values()) / tried if tried else None,
                "episodes": sum(self.kept.values()), "tasks": per_task}


def _write_summary(root: Path, summary: dict[str, Any]) -> None:
    write_json(root / SUMMARY_FILE, summary)


def _open_writer(cfg: GenerateConfig) -> tuple[Any, list[dict[str, Any]]]:
    from openlbm.data.writer import DatasetWriter
    from openlbm.locking import LOCK_FILE, lock_dir

    # Locked before looking at the folder: a second `generate` on the same --out is refused here, before it could
    # read a half-written dataset (the writer's own lock is re-entrant, so it shares this one).
    _lock = lock_dir(cfg.out, "`lbm data generate`")  # held until this function returns
    summary_path = cfg.out / SUMMARY_FILE
    if (cfg.out / "meta" / "info.json").exists():
        if not summary_path.exists():
            raise ValueError(f"{cfg.out} is an existing dataset not made by `lbm data generate`; choose another --out")
        changed = changed_fields(read_json(summary_path)["config"], cfg.identity())
        if changed:
            raise ValueError(f"{cfg.out} was generated with different settings ({'; '.join(changed)}); use another --out")
        writer = DatasetWriter.open(cfg.out)
        attempts = _read_attempts(cfg.out, writer.num_episodes)
        log.info("resuming %s: %d episodes committed, %d attempts logged", cfg.out, writer.num_episodes, len(attempts))
        return writer, attempts
    if any(p.name != LOCK_FILE for p in cfg.out.iterdir()):
        raise ValueError(f"{cfg.out} exists and is not an openlbm dataset; choose an empty or new --out")
    emb = cfg.env_config().embodiment()
    writer = DatasetWriter.create(cfg.out, features(cfg), fps=emb.fps, robot_type=emb.name, video_codec=cfg.video_codec)
    (cfg.out / "meta").mkdir(parents=True, exist_ok=True)
    _write_summary(cfg.out, {"config": cfg.identity(), "expert_success_rate": None, "episodes": 0, "tasks": {}})
    return writer, []


def check_size(size: int, flag: str = "--size") -> None:
    """Refuse a camera side the demo videos cannot hold, before anything is written."""
    if size < 2 or size % 2:
        # the videos are yuv420p (chroma at half resolution): odd sides cannot be encoded
        raise ValueError(f"{flag} must be an even number of pixels >= 2 (the videos are yuv420p), got {size}")


def generate_demos(cfg: GenerateConfig) -> Path:
    """Generate (or finish generating) the dataset described by ``cfg``; returns its root."""
    if cfg.episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {cfg.episodes_per_task}")
    if cfg.action_noise < 0:
        raise ValueError(f"action_noise must be >= 0, got {cfg.action_noise}")
    check_size(cfg.size)
    if cfg.height is not None:
        check_size(cfg.height, "--height")
    cfg.task_list()  # fail on a typo or a task of another suite before touching the output directory
    env_cfg = cfg.env_config()
    writer, attempts = _open_writer(cfg)
    gen = _Generation(cfg, writer, attempts)
    bar = _GenProgress(cfg, gen)
    expert = suites.scripted_expert(cfg.suite, env_cfg, action_noise=cfg.action_noise, seed=cfg.seed)
    try:
        with RolloutRunner(env_cfg, num_workers=cfg.workers) as runner:
            while specs := gen.plan_round():

                def on_result(res: EpisodeResult) -> None:
                    gen.on_result(res)
                    bar.update()

                runner.run(expert, specs, progress=False, on_result=on_result, record_trajectory=True)
                _write_summary(cfg.out, gen.summary())
        writer.finalize()
    finally:
        bar.close()
        gen.log_file.close()
    summary = gen.summary()
    _write_summary(cfg.out, summary)
    short = {t: v["kept"] for t, v in summary["tasks"].items() if v["kept"] < cfg.episodes_per_task}
    if short:
        log.warning("expert gave up before %d successes on: %s", cfg.episodes_per_task, short)
    return cfg.out


class _GenProgress:
    def __init__(self, cfg: GenerateConfig, gen: _Generation) -> None:
        self.gen, self._p = gen, None
        self._t0, self._done0 = time.monotonic(), sum(gen.next_k.values())
        if cfg.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("demos"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._p.start()
            total = len(gen.tasks) * cfg.episodes_per_task
            self._task = self._p.add_task("demos", total=total, completed=sum(gen.kept.values()), info="")

    def update(self) -> None:
        if self._p is None:
            return
        g = self.gen
        n = sum(g.next_k.values()) - self._done0
        rate = n / max(1e-9, time.monotonic() - self._t0)
        info = f"kept {sum(g.kept.values())}  failed {sum(g.failed.values())}  errors {sum(g.errors.values())}  {rate:.2f} ep/s"
        self._p.update(self._task, completed=sum(g.kept.values()), info=info)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
