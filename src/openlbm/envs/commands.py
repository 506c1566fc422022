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
    suite: Literal["metaworld"] = "metaworld"
    """Simulator suite."""
    tasks: str = "quickstart"
    """Task set (mt10, mt50, ml45_train, ml45_test, quickstart) or comma-separated task names."""
    episodes_per_task: int = 50
    """Successful episodes to keep per task."""
    cameras: str = "corner2,gripperPOV"
    """Comma-separated cameras to record."""
    size: int = 128
    """Square image size in pixels."""
    max_steps: int = 200
    """Time limit per attempt."""
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
            cameras=tuple(c.strip() for c in self.cameras.split(",") if c.strip()), size=self.size,
            max_steps=self.max_steps, workers=self.workers, seed=self.seed, action_noise=self.action_noise,
            video_codec=self.video_codec, suite=self.suite, progress=self.progress,
        )
        root = generate_demos(cfg)  # bad flags / a busy --out: one-line error from openlbm.cli.main

        summary = json.loads((root / "meta" / "generation.json").read_text())
        rate = summary["expert_success_rate"]
        print(f"wrote {summary['episodes']} episodes to {root} (expert success rate {rate:.1%})" if rate is not None
              else f"wrote {summary['episodes']} episodes to {root}")
        return 0


COMMANDS: dict[str, type] = {"generate": Generate}
