"""Image-text shards from the simulator (``lbm data image-text``): Meta-World renders captioned with scene facts.

Every episode of the plan (task by task, attempt ``k`` ascending, seed ``episode_seed(seed, task, k)`` as in
``lbm data generate``) is rolled out by the scripted expert through :class:`~openlbm.envs.rollout.RolloutRunner`
to the time limit (not stopped at success, so the shards also show finished tasks). Failed attempts are kept too:
their captions say the task is not complete. Every ``frame_stride``-th step from step 1 becomes one sample per
camera: ``KEY.jpg`` (the render), ``KEY.txt`` (instruction + facts, see :mod:`openlbm.envs.scene_facts`) and
``KEY.json`` (the same caption, the facts, the measured quantities, task, episode, step, camera).

Crash safety and resumption: shards are written through :class:`~openlbm.data.imagetext.ShardSink` (``.tmp``, then
renamed when complete) and ``imagetext.json`` records, after each complete shard, the position of the next sample
(episode of the plan, sample within it). Rollouts are a pure function of the config, so a rerun with the same flags
replays from that episode, drops the samples already written and continues: the shards come out byte-identical to
an uninterrupted run. A different config on the same folder, or a folder holding anything else, is refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from openlbm.data.imagetext import ShardSink, encode_image
from openlbm.envs import suites
from openlbm.envs.generate import episode_seed
from openlbm.envs.rollout import EpisodeResult, EpisodeSpec, RolloutRunner
from openlbm.envs.scene_facts import frame_facts
from openlbm.envs.tasks import instruction_for, resolve_tasks
from openlbm.jsonio import changed_fields, read_json, to_jsonable, write_json

log = logging.getLogger(__name__)

MANIFEST = "imagetext.json"


@dataclass(frozen=True)
class ImageTextGenConfig:
    """Generation of captioned Meta-World renders as WebDataset shards."""

    out: Path
    """Output folder (created; an interrupted run with the same settings is resumed)."""
    tasks: str = "quickstart"
    """Meta-World task set (mt10, mt50, ml45_train, ml45_test, quickstart, ...) or comma-separated task names."""
    episodes_per_task: int = 5
    """Episodes rolled out per task (every one is kept, successful or not)."""
    size: int = 128
    """Square render size in pixels."""
    cameras: tuple[str, ...] = ("corner2_lerobot",)
    """Cameras rendered; each kept step gives one sample per camera (same caption)."""
    shard_size: int = 1000
    """Samples per shard (the last shard may hold fewer)."""
    frame_stride: int = 10
    """Keep steps 1, 1 + stride, 1 + 2 * stride, ... of each episode."""
    max_steps: int = 150
    """Steps per episode (the expert finishes most quickstart tasks within ~100; later steps show them done)."""
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    """Env worker processes."""
    seed: int = 0
    """Base seed: with the task and attempt number it fixes every initial state and noise draw."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions (more varied scenes, more failures)."""
    image_format: Literal["jpg", "png", "webp"] = "jpg"
    """Encoding of the renders in the shards (jpg at quality 95, png lossless)."""
    progress: bool = True
    """Show a progress bar."""

    def identity(self) -> dict[str, Any]:
        """The fields that define the shards' content (a resumed run must agree on all of them)."""
        d = to_jsonable(self)
        for k in ("out", "workers", "progress"):
            d.pop(k)
        d["tasks"] = resolve_tasks(self.tasks, suite="metaworld")
        return d

    def check(self) -> None:
        for name in ("episodes_per_task", "size", "shard_size", "frame_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 2:
            raise ValueError(f"max-steps must be >= 2 (step 0 is never captioned), got {self.max_steps}")
        if not self.cameras:
            raise ValueError("give at least one camera (--cameras corner2)")
        if self.action_noise < 0:
            raise ValueError(f"action-noise must be >= 0, got {self.action_noise}")
        resolve_tasks(self.tasks, suite="metaworld")  # a typo or an ALOHA task: one line naming it
        self.env_config()  # an unknown camera or a bad size: one line naming it

    def env_config(self) -> Any:
        return suites.env_config("metaworld", tuple(self.cameras), (self.size, self.size), self.max_steps)


def plan(cfg: ImageTextGenConfig) -> list[EpisodeSpec]:
    """Every episode of the run, in the order its samples are written."""
    specs = []
    for task in resolve_tasks(cfg.tasks, suite="metaworld"):
        for k in range(cfg.episodes_per_task):
            s = episode_seed(cfg.seed, task, k)
            specs.append(EpisodeSpec(f"{task}/{k}", task, s, instruction_for(task, s, "train")))
    return specs


def completed(res: EpisodeResult) -> bool:
    """Whether the episode reached success at any step (the runner's ``success`` is the last step's flag when it
    runs past success, and e.g. handle-press stops counting as success once the handle is pushed further)."""
    return res.error is None and res.trajectory is not None and bool(np.any(res.trajectory.get("success", False)))


def episode_samples(res: EpisodeResult, cfg: ImageTextGenConfig) -> list[tuple[dict[str, bytes], dict[str, Any]]]:
    """The samples of one rolled-out episode: ``(members without key, json meta)`` in write order."""
    traj = res.trajectory
    if traj is None or "privileged" not in traj:
        return []
    out = []
    complete = np.cumsum(np.asarray(traj["success"], dtype=bool)) > 0  # [T]: success after step t, latched
    for t in range(1, res.steps, cfg.frame_stride):
        facts = frame_facts(res.task, traj["privileged"][t], bool(complete[t - 1]))  # obs t follows action t-1
        caption = facts.caption(res.instruction)
        for cam in cfg.cameras:
            meta = {"caption": caption, "instruction": res.instruction, "task": res.task, "facts": list(facts.sentences),
                    "values": {k: round(v, 5) for k, v in facts.values.items()}, "task_complete": facts.task_complete,
                    "episode": res.episode_id, "seed": res.seed, "step": t, "camera": cam,
                    "episode_success": completed(res)}
            members = {cfg.image_format: encode_image(traj[f"images.{cam}"][t], cfg.image_format),
                       "txt": caption.encode(), "json": json.dumps(meta, sort_keys=True).encode()}
            out.append((members, meta))
    return out


class _Run:
    """One generation run: the shard sink, the manifest and the in-order episode buffer."""

    def __init__(self, cfg: ImageTextGenConfig, manifest: dict[str, Any]) -> None:
        self.cfg, self.manifest = cfg, manifest
        self.specs = plan(cfg)
        pos = manifest["position"]
        self.episode, self.skip, self.next_key = pos["episode"], pos["sample"], pos["next_key"]
        self.written = 0  # samples of the current episode written (or skipped) so far
        self.buffer: dict[int, EpisodeResult] = {}
        self.index = {s.episode_id: i for i, s in enumerate(self.specs)}
        self.sink = ShardSink(cfg.out, cfg.shard_size, start_shard=len(manifest["shards"]), on_shard=self._on_shard)

    def _on_shard(self, name: str, count: int) -> None:
        self.manifest["shards"].append({"name": name, "samples": count})
        self.manifest["position"] = {"episode": self.episode, "sample": self.written, "next_key": self.next_key}
        write_json(self.cfg.out / MANIFEST, self.manifest)

    def on_result(self, res: EpisodeResult) -> None:
        """Buffer ``res``; write every episode whose predecessors are all written, in plan order."""
        self.buffer[self.index[res.episode_id]] = res
        while self.episode in self.buffer:
            self._write(self.buffer.pop(self.episode))
            self.episode += 1
            self.written, self.skip = 0, 0

    def _write(self, res: EpisodeResult) -> None:
        counts = self.manifest["episodes"]
        if res.error is not None:
            log.warning("episode %s failed with an error and gives no samples: %s", res.episode_id,
                        res.error.splitlines()[0])
        for members, _ in episode_samples(res, self.cfg):
            self.written += 1
            if self.written <= self.skip:  # already in a complete shard before the interruption
                continue
            key = f"{self.next_key:06d}"
            self.next_key += 1  # before writing: a shard completed by this sample records the key after it
            self.sink.write(key, members)
        # counted after the episode's samples: a shard completed inside it snapshots the counts without it
        key = "errors" if res.error is not None else "successes" if completed(res) else "failures"
        counts[key] = counts.get(key, 0) + 1


def _open(cfg: ImageTextGenConfig) -> dict[str, Any]:
    """The manifest of a new or resumable ``cfg.out`` (the caller holds the folder lock)."""
    from openlbm.locking import LOCK_FILE

    path = cfg.out / MANIFEST
    if path.exists():
        manifest = read_json(path)
        changed = changed_fields(manifest.get("config", {}), cfg.identity())
        if changed:
            raise ValueError(f"{cfg.out} was generated with different settings ({'; '.join(changed)}); use another --out")
        for tmp in cfg.out.glob("*.tmp"):  # a shard interrupted mid-write; it is rewritten from its first sample
            tmp.unlink()
        return manifest
    if any(p.name != LOCK_FILE for p in cfg.out.iterdir()):
        raise ValueError(f"{cfg.out} is not empty and holds no {MANIFEST} of `lbm data image-text`; choose an empty "
                         "or new --out")
    manifest = {"config": cfg.identity(), "shards": [], "position": {"episode": 0, "sample": 0, "next_key": 0},
                "episodes": {}, "complete": False}
    write_json(path, manifest)
    return manifest


def generate_image_text(cfg: ImageTextGenConfig) -> dict[str, Any]:
    """Write (or finish writing) the shards ``cfg`` describes; returns the final manifest."""
    from openlbm.locking import lock_dir

    cfg.check()
    _lock = lock_dir(cfg.out, "`lbm data image-text`")  # held until this function returns
    manifest = _open(cfg)
    if manifest["complete"]:
        log.info("%s is already complete (%d shards)", cfg.out, len(manifest["shards"]))
        return manifest
    run = _Run(cfg, manifest)
    todo = run.specs[run.episode :]
    env_cfg = cfg.env_config()
    expert = suites.scripted_expert("metaworld", env_cfg, action_noise=cfg.action_noise, seed=cfg.seed)
    try:
        if todo:
            with RolloutRunner(env_cfg, num_workers=min(cfg.workers, len(todo)), stop_on_success=False) as runner:
                runner.run(expert, todo, progress=cfg.progress, on_result=run.on_result, record_trajectory=True)
        run.sink.close()
    except BaseException:
        run.sink.abandon()
        raise
    manifest["position"] = {"episode": len(run.specs), "sample": 0, "next_key": run.next_key}
    manifest["complete"] = True
    manifest["samples"] = sum(s["samples"] for s in manifest["shards"])
    write_json(cfg.out / MANIFEST, manifest)
    return manifest
