"""Per-episode JSONL records and the summary computed from them.

An eval dir holds ``eval_config.json`` (what was evaluated, and how), ``episodes.jsonl`` (or
``episodes.rank<r>.jsonl`` per torchrun rank), ``summary.json``, ``videos/`` and ``report.html``. Records are the
source of truth: the summary is always recomputed from them, so a resumed or merged evaluation cannot disagree with
its episodes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openlbm.envs.difficulty import task_groups
from openlbm.eval.stats import MeanOfRates, Outcomes, RateEstimate, estimate, mean_of_rates

log = logging.getLogger(__name__)

CONFIG_FILE = "eval_config.json"
SUMMARY_FILE = "summary.json"
RECORD_FIELDS = ("episode_id", "task", "seed", "instruction", "success", "steps", "seconds", "error")


def records_path(out: Path, rank: int, world_size: int) -> Path:
    """``episodes.jsonl`` for a single process, ``episodes.rank<r>.jsonl`` per rank otherwise."""
    return out / ("episodes.jsonl" if world_size == 1 else f"episodes.rank{rank}.jsonl")


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        # A process killed mid-write leaves at most one torn last line: the episode simply reruns on resume.
        log.warning("%s:%d: skipping a truncated record", path, lineno)
        return None
    missing = [f for f in RECORD_FIELDS if f not in rec]
    if missing:
        raise ValueError(f"{path}:{lineno}: episode record lacks field(s) {missing}; expected {list(RECORD_FIELDS)}")
    return rec


def load_records(out: Path) -> list[dict[str, Any]]:
    """All episode records under ``out`` (every rank's file), first record per ``episode_id``."""
    out = Path(out)
    seen: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("episodes*.jsonl")):
        with path.open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rec = _parse_line(path, lineno, line)
                if rec is not None:
                    seen.setdefault(str(rec["episode_id"]), rec)
    return list(seen.values())


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash mid-write) so the next record starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a torn last line (%d bytes) before appending", path, len(data) - keep)
    with path.open("r+b") as f:
        f.truncate(keep)


class RecordWriter:
    """Append-only JSONL writer: one line per finished episode, flushed and fsynced so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _drop_torn_tail(path)
        self._f = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def outcomes(records: Iterable[dict[str, Any]]) -> Outcomes:
    """task -> {initial-state seed -> success}, for :func:`openlbm.eval.compare.compare`."""
    out: dict[str, dict[int, bool]] = defaultdict(dict)
    for r in records:
        out[str(r["task"])][int(r["seed"])] = bool(r["success"])
    return dict(out)


@dataclass
class EvalSummary:
    """Per-task and overall success (with intervals and posteriors) of one evaluation."""

    out_dir: Path
    policy: str
    tasks: dict[str, RateEstimate]
    overall: RateEstimate
    errors: dict[str, int]
    """Episodes per task that ended in an error (counted as failures)."""
    mean_steps: dict[str, float]
    planned: int
    """Episodes planned (all ranks); ``complete`` when every one has a record."""
    num_episodes: int
    groups: dict[str, RateEstimate] = field(default_factory=dict)
    """Difficulty group -> its episodes' success (Meta-World tasks: :data:`openlbm.envs.difficulty.METAWORLD_DIFFICULTY`);
    empty when the tasks have no groups."""
    group_mean: MeanOfRates | None = None
    """The mean of the group rates (each group weighs the same), as MT50 results are published."""

    @property
    def success_rate(self) -> float:
        return self.overall.rate

    def group_rows(self) -> list[tuple[str, str, float, tuple[float, float]]]:
        """The difficulty-group table, one row per group, then the mean of the group means and the
        episode-weighted mean: ``(label, episodes, rate, Wilson 95%)``. Empty when the tasks have no groups."""
        if not self.groups or self.group_mean is None:
            return []
        m, o = self.group_mean, self.overall
        return [
            *((f"{g} ({len(ts)} tasks)", f"{e.successes}/{e.n}", e.rate, e.wilson)
              for (g, e), ts in zip(self.groups.items(), task_groups(list(self.tasks)).values(), strict=True)),
            (f"mean of {m.groups} group means", f"n_eff {m.n_eff:.0f}", m.rate, m.wilson),
            ("all episodes", f"{o.successes}/{o.n}", o.rate, o.wilson),
        ]

    @property
    def complete(self) -> bool:
        return self.num_episodes >= self.planned

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "planned": self.planned,
            "num_episodes": self.num_episodes,
            "complete": self.complete,
            "overall": self.overall.to_dict(),
            "tasks": {
                t: {**e.to_dict(), "errors": self.errors[t], "mean_steps": self.mean_steps[t]} for t, e in self.tasks.items()
            },
            **({"groups": {g: e.to_dict() for g, e in self.groups.items()}} if self.groups else {}),
            **({"group_mean": self.group_mean.to_dict()} if self.group_mean is not None else {}),
        }

    def save(self) -> Path:
        path = self.out_dir / SUMMARY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(self.to_dict()), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, out_dir: Path) -> EvalSummary:
        """Recompute the summary of an eval dir from its records (``summary.json`` is only a cache)."""
        out_dir = Path(out_dir)
        cfg_path = out_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{out_dir} is not an eval dir: {CONFIG_FILE} is missing (run `lbm eval` first)")
        meta = json.loads(cfg_path.read_text())
        return summarize(out_dir, load_records(out_dir), meta["tasks"], int(meta["planned"]), str(meta["policy"]))


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write ``null`` instead (e.g. the rate of a task without episodes yet)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def summarize(
    out_dir: Path, records: list[dict[str, Any]], tasks: list[str], planned: int, policy: str
) -> EvalSummary:
    by_task: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    for r in records:
        by_task.setdefault(str(r["task"]), []).append(r)
    est = {t: estimate(sum(bool(r["success"]) for r in rs), len(rs)) for t, rs in by_task.items()}
    k = sum(e.successes for e in est.values())
    n = sum(e.n for e in est.values())
    groups = {g: estimate(sum(est[t].successes for t in ts), sum(est[t].n for t in ts))
              for g, ts in task_groups(list(est)).items()}
    return EvalSummary(
        groups=groups,
        group_mean=mean_of_rates(list(groups.values())) if groups else None,
        out_dir=Path(out_dir),
        policy=policy,
        tasks=est,
        overall=estimate(k, n),
        errors={t: sum(r["error"] is not None for r in rs) for t, rs in by_task.items()},
        mean_steps={t: (sum(int(r["steps"]) for r in rs) / len(rs) if rs else float("nan")) for t, rs in by_task.items()},
        planned=planned,
        num_episodes=n,
    )
