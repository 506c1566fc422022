"""CLI commands of this package: each a frozen dataclass (docstring per field) with ``run() -> int``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from openlbm.eval.sequential import Spending
from openlbm.eval.stats import Correction, TestName


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "–"


@dataclass(frozen=True)
class Eval:
    """Roll out a policy on fixed initial states; write per-episode records, summary.json and report.html."""

    policy: str = "expert"
    """Run dir, checkpoint dir or policy dir, or `expert` (Meta-World's scripted expert)."""
    out: Path | None = None
    """Output dir (default: `<policy>/eval/<tasks>-<instructions>-s<seed>`, or `evals/expert-...`)."""
    suite: Literal["metaworld"] = "metaworld"
    """Simulation suite."""
    tasks: str = "quickstart"
    """Task set (mt10, mt50, quickstart, ...) or comma-separated task names."""
    episodes_per_task: int = 50
    """Episodes per task."""
    instructions: Literal["train", "heldout"] = "train"
    """Instruction paraphrases: `heldout` ones were never used in training."""
    seed: int = 0
    """Base seed of the initial states (same seed = same starts = paired comparison)."""
    num_workers: int = 2
    """Env processes (about one per CPU core)."""
    max_steps: int | None = None
    """Time limit per episode (default: the suite's)."""
    record_video: bool = True
    """Save a success and a failure clip per task for the report."""
    cameras: tuple[str, ...] | None = None
    """Cameras to render (default: the policy's)."""
    image_size: tuple[int, int] | None = None
    """Image (height, width) (default: the policy's)."""
    device: str = "auto"
    """Torch device for the policy (auto = CUDA when available)."""
    server: str | None = None
    """Evaluate a policy served by `lbm serve` at this ws:// URL instead of loading --policy."""
    sequential_baseline: Path | None = None
    """Eval dir of a baseline (same --seed): stop as soon as a group-sequential paired test decides."""
    look_every: int = 0
    """Paired episodes between sequential looks (0 = 5 per task)."""
    alpha: float = 0.05
    """Two-sided error rate of the sequential test."""
    noise_seed: int | None = 0
    """Seed of a loaded policy's sampling noise (same as `lbm serve`'s default); None = torch's global RNG."""

    def run(self) -> int:
        from rich.console import Console

        from openlbm.eval.runner import EXPERT, EvalConfig, evaluate

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        out = self.out
        if out is None:
            name = f"{self.tasks.replace(',', '+')}-{self.instructions}-s{self.seed}"
            out = Path("evals") / f"expert-{name}" if self.policy == EXPERT or self.server else Path(self.policy) / "eval" / name
        cfg = EvalConfig(
            policy=self.policy, out=out, suite=self.suite, tasks=self.tasks, episodes_per_task=self.episodes_per_task,
            instructions=self.instructions, seed=self.seed, num_workers=self.num_workers, max_steps=self.max_steps,
            record_video=self.record_video, cameras=self.cameras, image_size=self.image_size, device=self.device,
            server=self.server, sequential_baseline=self.sequential_baseline, look_every=self.look_every,
            alpha=self.alpha, noise_seed=self.noise_seed,
        )
        summary = evaluate(cfg)
        console = Console()
        from rich.table import Table

        table = Table(title=f"{cfg.policy} on {cfg.suite} ({cfg.instructions} instructions)")
        for col in ("task", "success", "rate", "Wilson 95%", "errors"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for t, e in [*summary.tasks.items(), ("overall", summary.overall)]:
            err = summary.errors.get(t, sum(summary.errors.values()))
            table.add_row(t, f"{e.successes}/{e.n}", _pct(e.rate), f"{_pct(e.wilson[0])}–{_pct(e.wilson[1])}", str(err))
        console.print(table)
        seq = out / "sequential.json"
        if self.sequential_baseline is not None and seq.is_file():
            state = json.loads(seq.read_text())
            console.print(f"sequential vs {self.sequential_baseline}: {state['verdict']} after "
                          f"{state['looks'][-1]['pairs'] if state['looks'] else 0} of {state['planned_pairs']} pairs")
        console.print(f"records, summary and report in {out}")
        return 0


@dataclass(frozen=True)
class Compare:
    """Compare eval dirs pairwise against the first: exact tests per task with a correction, and verdicts."""

    dirs: Annotated[tuple[Path, ...], tyro.conf.Positional]
    """Eval dirs: the first is the baseline A; each other is compared to it as B."""
    alpha: float = 0.05
    """Significance level (family-wise with holm, false discovery rate with bh)."""
    correction: Correction = "holm"
    """Multiple-comparison correction across tasks."""
    test: TestName = "auto"
    """Per-task test: auto = exact McNemar when all episodes are paired (same seeds), else Barnard."""
    sequential: bool = False
    """Also replay the paired episodes through the group-sequential sign test and report where it stops."""
    look_every: int = 0
    """Paired episodes between sequential looks (0 = 5 per task)."""
    spending: Spending = "obrien_fleming"
    """Alpha-spending function of the sequential test."""
    report: Path | None = None
    """Also write an HTML report comparing the runs here."""
    json_out: Path | None = None
    """Also write the comparisons as JSON here."""

    def run(self) -> int:
        from rich.console import Console
        from rich.table import Table

        from openlbm.eval.compare import compare_dirs, sequential_dirs

        if len(self.dirs) < 2:
            raise ValueError(f"compare needs at least two eval dirs (baseline first), got {len(self.dirs)}")
        console = Console()
        base = self.dirs[0]
        results = {}
        for other in self.dirs[1:]:
            c = compare_dirs(base, other, alpha=self.alpha, correction=self.correction, test=self.test)
            table = Table(title=f"B = {other}  vs  A = {base}   (alpha {self.alpha}, {self.correction})")
            for col in ("task", "A", "B", "Δ pp", "only A/only B", "test", "p", "p adj.", "P(B>A)", "verdict"):
                table.add_column(col, justify="left" if col in ("task", "verdict") else "right")
            for t in [*c.tasks, c.overall]:
                style = {"better": "green", "worse": "red"}.get(t.verdict, "")
                table.add_row(
                    t.task, _pct(t.a.rate), _pct(t.b.rate), f"{100 * t.diff:+.1f}", f"{t.a_only}/{t.b_only}", t.test,
                    f"{t.p_value:.3g}", f"{t.p_adjusted:.3g}", f"{t.prob_b_better:.3f}", f"[{style}]{t.verdict}[/]"
                    if style else t.verdict,
                )
            console.print(table)
            results[str(other)] = c.to_dict()
            if self.sequential:
                n_tasks = len(c.tasks)
                seq = sequential_dirs(base, other, look_every=self.look_every or 5 * n_tasks, alpha=self.alpha,
                                      spending=self.spending)
                last = seq.test.looks[-1]
                console.print(
                    f"sequential ({self.spending}, alpha {self.alpha}): {seq.test.verdict} after {last.pairs} of "
                    f"{seq.pairs_available} paired episodes ({last.discordant} discordant, B won {last.b_wins}; "
                    f"boundary {last.boundary})"
                )
                results[str(other)]["sequential"] = {
                    "verdict": seq.test.verdict, "stopped_at_pairs": last.pairs, "pairs_available": seq.pairs_available,
                    "looks": [vars(lk) for lk in seq.test.looks],
                }
        if self.json_out is not None:
            self.json_out.write_text(json.dumps(results, indent=2) + "\n")
        if self.report is not None:
            from openlbm.eval.report import write_report

            path = write_report(base, others=self.dirs[1:], out=self.report, title="openlbm comparison")
            console.print(f"report: {path}")
        return 0


@dataclass(frozen=True)
class Report:
    """Write a self-contained report.html for a training run dir or an eval dir."""

    path: Annotated[Path, tyro.conf.Positional]
    """Run dir (metrics.jsonl, evals below it) or eval dir (eval_config.json)."""
    out: Path | None = None
    """Output file (default: <path>/report.html)."""
    compare: tuple[Path, ...] = ()
    """More eval dirs to compare against the first eval found."""

    def run(self) -> int:
        from openlbm.eval.report import write_report

        print(write_report(self.path, others=self.compare, out=self.out))
        return 0


COMMANDS: dict[str, type] = {"eval": Eval, "compare": Compare, "report": Report}
