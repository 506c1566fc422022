"""CLI commands of this package: each a frozen dataclass (docstring per field) with ``run() -> int``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console

from openlbm.eval.compare import Comparison
from openlbm.eval.records import EvalSummary
from openlbm.eval.runner import EvalConfig
from openlbm.eval.sequential import Spending
from openlbm.eval.stats import Correction, TestName


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "–"


def _print_groups(console: Console, summary: EvalSummary) -> None:
    """The difficulty-group table (Meta-World MT50's protocol), when the evaluated tasks have groups."""
    from rich.table import Table

    if not summary.group_rows():
        return
    groups = Table(title="difficulty groups")
    for col in ("group", "episodes", "rate", "Wilson 95%"):
        groups.add_column(col, justify="left" if col == "group" else "right")
    for label, count, rate, (lo, hi) in summary.group_rows():
        groups.add_row(label, count, _pct(rate), f"{_pct(lo)}–{_pct(hi)}")
    console.print(groups)


@dataclass(frozen=True)
class Eval:
    """Roll out a policy on fixed initial states; write per-episode records, summary.json and report.html."""

    config: Annotated[EvalConfig, tyro.conf.arg(name="")]
    """What to evaluate, where, and how (every field of ``openlbm.eval.runner.EvalConfig`` is a flag)."""

    def run(self) -> int:
        from rich.console import Console

        from openlbm.eval.runner import evaluate

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        cfg = self.config
        from openlbm.devices import check_device

        check_device(cfg.device)  # before the output folder exists
        out = cfg.out_dir()
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
        _print_groups(console, summary)
        from openlbm.eval.action_error import ERROR_FILE, ActionError

        error_file = out / ERROR_FILE
        if cfg.demo_starts is not None and error_file.is_file():
            console.print("\n".join(ActionError(**{k: v for k, v in json.loads(error_file.read_text()).items()
                                                   if k != "overall"}).lines()), highlight=False)
        seq = out / "sequential.json"
        if cfg.sequential_baseline is not None and seq.is_file():
            state = json.loads(seq.read_text())
            console.print(f"sequential vs {cfg.sequential_baseline}: {state['verdict']} after "
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
    margin: float | None = None
    """Non-inferiority margin as a success-rate difference (0.10 = 10 points): B is non-inferior to A when the lower
    bound of the 95% interval of the overall paired difference B - A is above -margin, inferior when its upper
    bound is below it, undetermined otherwise. Needs paired episodes (both evaluated with the same ``--seed``)."""
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
            c = compare_dirs(base, other, alpha=self.alpha, correction=self.correction, test=self.test,
                             margin=self.margin)
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
            for line in (c.overall.interval_line(), c.noninferiority_line()):
                if line is not None:
                    console.print(line)
            if c.groups:
                _print_group_comparison(console, c)
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


def _print_group_comparison(console: Console, c: Comparison) -> None:
    from rich.table import Table

    table = Table(title=f"difficulty groups (episodes pooled per group; {c.correction} across groups)")
    for col in ("group", "A", "B", "Δ pp", "only A/only B", "test", "p", "p adj.", "verdict"):
        table.add_column(col, justify="left" if col in ("group", "verdict") else "right")
    for g in c.groups:
        table.add_row(g.task, _pct(g.a.rate), _pct(g.b.rate), f"{100 * g.diff:+.1f}", f"{g.a_only}/{g.b_only}", g.test,
                      f"{g.p_value:.3g}", f"{g.p_adjusted:.3g}", g.verdict)
    console.print(table)
    line = c.group_mean_line()
    if line is not None:
        console.print(line)


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
        from rich.console import Console

        from openlbm.eval.records import CONFIG_FILE, EvalSummary
        from openlbm.eval.report import write_report

        if (self.path / CONFIG_FILE).is_file():  # an eval dir: its tables, recomputed from the records
            summary = EvalSummary.load(self.path)
            summary.save()
            _print_groups(Console(), summary)
        print(write_report(self.path, others=self.compare, out=self.out))
        return 0


COMMANDS: dict[str, type] = {"eval": Eval, "compare": Compare, "report": Report}
