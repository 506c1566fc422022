"""CLI commands of this package: each a frozen dataclass (docstring per field) with ``run() -> int``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Generate:
    """Generate scripted-expert demonstrations in simulation (resumes an interrupted run with the same flags)."""

    out: Path
    """Output dataset directory."""
    suite: Literal["metaworld", "aloha"] = "metaworld"
    """Simulator suite: metaworld (Sawyer arm) or aloha (bimanual ALOHA)."""
    tasks: str | None = None
    """Task set (mt10, mt50, ml45_train, ml45_test, quickstart, aloha) or comma-separated task names of the suite
    (default: quickstart for metaworld, aloha for aloha)."""
    episodes_per_task: int = 50
    """Successful episodes to keep per task."""
    cameras: str | None = None
    """Comma-separated cameras to record (default: corner2_lerobot,gripperPOV for metaworld; top,left_wrist,right_wrist for
    aloha)."""
    size: int = 128
    """Image width in pixels (and height, unless --height is given)."""
    height: int | None = None
    """Image height in pixels (default: --size, square). For aloha, --size 128 --height 64 frames the table band
    with both arms; every aspect keeps gym-aloha's horizontal view."""
    max_steps: int | None = None
    """Time limit per attempt (default: 200 for metaworld, 400 for aloha)."""
    workers: int = max(1, os.cpu_count() or 1)
    """Env worker processes (default: one per core)."""
    seed: int = 0
    """Base seed (with task and attempt number it fixes every initial state and noise draw)."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions."""
    video_codec: str = "h264"
    """Video codec for camera streams."""
    progress: bool = True
    """Show a progress bar."""

    def run(self) -> int:
        from openlbm.envs.generate import GenerateConfig, generate_demos

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cfg = GenerateConfig(
            out=self.out, tasks=self.tasks, episodes_per_task=self.episodes_per_task,
            cameras=None if self.cameras is None else tuple(c.strip() for c in self.cameras.split(",") if c.strip()),
            size=self.size, height=self.height,
            max_steps=self.max_steps, workers=self.workers, seed=self.seed, action_noise=self.action_noise,
            video_codec=self.video_codec, suite=self.suite, progress=self.progress,
        )
        root = generate_demos(cfg)  # bad flags / a busy --out: one-line error from openlbm.cli.main

        summary = json.loads((root / "meta" / "generation.json").read_text())
        rate = summary["expert_success_rate"]
        print(f"wrote {summary['episodes']} episodes to {root} (expert success rate {rate:.1%})" if rate is not None
              else f"wrote {summary['episodes']} episodes to {root}")
        return 0


@dataclass(frozen=True)
class ImageText:
    """Write image-text WebDataset shards: Meta-World renders captioned with facts read from the simulator state
    (resumes an interrupted run with the same flags)."""

    out: Path
    """Output folder for the shards (``shard-NNNNNN.tar``) and their manifest ``imagetext.json``."""
    tasks: str = "quickstart"
    """Meta-World task set (mt10, mt50, ml45_train, ml45_test, quickstart, ...) or comma-separated task names."""
    episodes_per_task: int = 5
    """Scripted episodes per task (all kept, successful or not: the captions say which)."""
    size: int = 128
    """Square image size in pixels."""
    cameras: str = "corner2_lerobot"
    """Comma-separated cameras; each kept step gives one sample per camera."""
    shard_size: int = 1000
    """Samples per shard."""
    frame_stride: int = 10
    """Caption every N-th step of an episode (from step 1)."""
    max_steps: int = 150
    """Steps per episode (episodes run to this limit, past success)."""
    workers: int = max(1, os.cpu_count() or 1)
    """Env worker processes (default: one per core)."""
    seed: int = 0
    """Base seed (with task and attempt number it fixes every initial state and noise draw)."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions."""
    image_format: Literal["jpg", "png", "webp"] = "jpg"
    """Image encoding inside the shards."""
    progress: bool = True
    """Show a progress bar."""

    def run(self) -> int:
        from openlbm.envs.imagetext import ImageTextGenConfig, generate_image_text

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cfg = ImageTextGenConfig(
            out=self.out, tasks=self.tasks, episodes_per_task=self.episodes_per_task, size=self.size,
            cameras=tuple(c.strip() for c in self.cameras.split(",") if c.strip()), shard_size=self.shard_size,
            frame_stride=self.frame_stride, max_steps=self.max_steps, workers=self.workers, seed=self.seed,
            action_noise=self.action_noise, image_format=self.image_format, progress=self.progress,
        )
        manifest = generate_image_text(cfg)  # bad flags / a busy or foreign --out: one-line error from openlbm.cli
        ep = manifest["episodes"]
        print(f"wrote {manifest['samples']} samples in {len(manifest['shards'])} shards to {self.out} "
              f"(episodes: {ep.get('successes', 0)} successful, {ep.get('failures', 0)} failed, "
              f"{ep.get('errors', 0)} errors)")
        return 0


COMMANDS: dict[str, type] = {"generate": Generate, "image-text": ImageText}
