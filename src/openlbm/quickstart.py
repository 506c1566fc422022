"""``lbm quickstart``: scripted demos -> multitask policy -> closed-loop evaluation -> HTML report.

Every stage is resumable: run the command again after an interruption and finished stages are skipped
(the dataset writer, trainer and evaluator each resume from their own committed state).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from openlbm.envs import METAWORLD_CAMERAS

log = logging.getLogger(__name__)
console = Console()


@dataclass(frozen=True)
class Quickstart:
    """Generate scripted demonstrations, train a language-conditioned multitask policy on all tasks at once,
    evaluate it on held-out initial states and write the HTML report (everything under ``--out``)."""

    out: Path = Path("runs/quickstart")
    """Output folder: ``data/`` (demos), ``train/`` (run dir), ``eval/`` (episodes, summary, report.html)."""
    tasks: str = "quickstart"
    """Meta-World task set (quickstart, mt10, mt50, ml45_train, ml45_test) or comma-separated task names."""
    episodes_per_task: int = 40
    """Successful scripted demonstrations kept per task."""
    eval_episodes_per_task: int = 25
    """Closed-loop evaluation episodes per task (initial states disjoint from the demos' by construction)."""
    instructions: Literal["train", "heldout"] = "train"
    """Instruction paraphrases used at evaluation: those seen in training, or held-out ones."""
    cameras: tuple[str, ...] = METAWORLD_CAMERAS
    """Cameras recorded and fed to the policy (default: the Meta-World suite's, ``corner2_lerobot`` and the wrist
    camera ``gripperPOV``)."""
    size: int = 64
    """Square camera resolution in pixels (demos, training and evaluation)."""
    preset: Literal["quickstart", "debug", "small", "base", "large"] = "quickstart"
    """Training preset (``base``/``large`` are for GPUs: the path to the full benchmark)."""
    steps: int | None = None
    """Optimizer steps (default: the preset's)."""
    batch_size: int | None = None
    """Global batch size (default: the preset's)."""
    device: str = "auto"
    """``auto`` uses CUDA when available, else the CPU; or ``cpu`` / ``cuda`` / ``cuda:N``."""
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    """Simulator worker processes for demo generation and evaluation (one per core is best)."""
    max_steps: int = 200
    """Episode time limit (demos and evaluation)."""
    seed: int = 0
    """Seeds demos, training and the evaluation's initial states."""
    eval_every: int = 0
    """Also roll out ``--eval-episodes-in-training`` episodes per task every this many training steps (0 = off);
    the success curve appears in the report."""
    eval_episodes_in_training: int = 3
    """Episodes per task at each in-training evaluation."""
    smoke: bool = False
    """A seconds-long run of every stage at toy sizes (what CI runs): proves the pipeline, not the policy."""

    def resolved(self) -> Quickstart:
        """Apply ``--smoke``: two tasks, a couple of episodes, tiny images and the debug preset."""
        if not self.smoke:
            return self
        return replace(
            self,
            tasks="button-press-topdown-v3,drawer-close-v3" if self.tasks == "quickstart" else self.tasks,
            episodes_per_task=2,
            eval_episodes_per_task=2,
            size=32,
            preset="debug",
            steps=self.steps or 6,
            batch_size=self.batch_size or 4,
            eval_every=self.eval_every or 3,
            eval_episodes_in_training=1,
            max_steps=min(self.max_steps, 150),
        )

    def run(self) -> int:
        run_quickstart(self)
        return 0


def _stage(n: int, title: str) -> float:
    console.rule(f"[bold]Stage {n}/4 · {title}")
    return time.perf_counter()


def _done(t0: float, what: str) -> None:
    console.print(f"[green]✓[/] {what} in {time.perf_counter() - t0:.0f} s")


def generate_stage(cfg: Quickstart) -> Path:
    from openlbm.envs.generate import GenerateConfig, generate_demos

    t0 = _stage(1, "scripted demonstrations")
    gen = GenerateConfig(
        out=cfg.out / "data",
        tasks=cfg.tasks,
        episodes_per_task=cfg.episodes_per_task,
        cameras=cfg.cameras,
        size=cfg.size,
        max_steps=cfg.max_steps,
        workers=cfg.workers,
        seed=cfg.seed,
    )
    root = generate_demos(gen)
    _done(t0, f"dataset at {root}")
    return root


def train_config(cfg: Quickstart, dataset: Path):  # noqa: ANN201 - TrainConfig import is deferred (torch)
    from openlbm.configs.presets import preset
    from openlbm.data.mixture import SourceConfig

    tc = preset(cfg.preset)
    run_dir = cfg.out / "train"
    tc = replace(
        tc,
        data=replace(tc.data, sources=(SourceConfig(root=dataset),)),
        run_dir=run_dir,
        steps=cfg.steps or tc.steps,
        batch_size=cfg.batch_size or tc.batch_size,
        device=cfg.device,
        seed=cfg.seed,
        resume=(run_dir / "checkpoints" / "latest").exists(),
        eval_every=cfg.eval_every,
        feature_cache=cfg.out / "features",
    )
    return tc


def train_stage(cfg: Quickstart, dataset: Path) -> Path:
    from openlbm.policies.policy_dir import read_latest
    from openlbm.train.checkpoint import step_dir_name
    from openlbm.train_command import train_with_eval

    t0 = _stage(2, f"training ({cfg.preset} preset)")
    tc = train_config(cfg, dataset)
    latest = read_latest(tc.run_dir / "checkpoints")
    if latest is not None and latest.name == step_dir_name(tc.steps):
        console.print(f"already trained: {latest}")
        return tc.run_dir
    run_dir = train_with_eval(tc, cfg.tasks, cfg.eval_episodes_in_training, eval_seed=cfg.seed + 2,
                              num_workers=cfg.workers, max_steps=cfg.max_steps)
    _done(t0, f"trained {tc.steps} steps, run dir {run_dir}")
    return run_dir


def eval_stage(cfg: Quickstart, run_dir: Path):  # noqa: ANN201 - EvalSummary import is deferred
    from openlbm.eval.runner import EvalConfig, evaluate

    t0 = _stage(3, "closed-loop evaluation")
    summary = evaluate(
        EvalConfig(
            policy=str(run_dir),
            out=cfg.out / "eval",
            tasks=cfg.tasks,
            episodes_per_task=cfg.eval_episodes_per_task,
            instructions=cfg.instructions,
            seed=cfg.seed + 1,
            num_workers=cfg.workers,
            max_steps=cfg.max_steps,
            device=cfg.device,
            report=False,
        )
    )
    _done(t0, "evaluation")
    return summary


def report_stage(cfg: Quickstart) -> Path:
    from openlbm.eval.report import write_report

    t0 = _stage(4, "report")
    path = write_report(cfg.out / "eval")
    _done(t0, f"report at {path}")
    return path


def run_quickstart(cfg: Quickstart) -> Path:
    """Run (or resume) all four stages; returns the report path."""
    from openlbm.configs.presets import preset
    from openlbm.devices import check_device
    from openlbm.envs.generate import check_size

    cfg = cfg.resolved()
    # every argument checked before anything is written or demos are generated for a run that could not start
    check_size(cfg.size)
    preset(cfg.preset).policy.vision.check_image_size((cfg.size, cfg.size))
    check_device(cfg.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dataset = generate_stage(cfg)
    run_dir = train_stage(cfg, dataset)
    summary = eval_stage(cfg, run_dir)
    report = report_stage(cfg)
    _print_results(summary, time.perf_counter() - t_start, report)
    return report


def _print_results(summary, seconds: float, report: Path) -> None:  # noqa: ANN001 - EvalSummary
    table = Table(title=f"quickstart results ({seconds / 60:.1f} min)")
    for col in ("task", "success", "95% CI (Wilson)", "episodes"):
        table.add_column(col)
    d = summary.to_dict()
    for task, t in d["tasks"].items():
        lo, hi = t["wilson"]
        table.add_row(task, f"{t['rate']:.0%}", f"[{lo:.0%}, {hi:.0%}]", str(t["n"]))
    o = d["overall"]
    table.add_row("[bold]overall", f"[bold]{o['rate']:.0%}", f"[{o['wilson'][0]:.0%}, {o['wilson'][1]:.0%}]", str(o["n"]))
    console.print(table)
    console.print(f"report: {report}")
    (report.parent / "quickstart.json").write_text(json.dumps({"minutes": seconds / 60, **d}, indent=2) + "\n")


COMMANDS: dict[str, type] = {"quickstart": Quickstart}
