"""Compare eval dirs: fixed-sample exact tests per task, or a group-sequential replay of the paired episodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openlbm.eval.records import load_records, outcomes
from openlbm.eval.sequential import SequentialSignTest, Spending, run_sequential
from openlbm.eval.stats import Comparison, Correction, TestName, compare


def compare_dirs(
    a: Path, b: Path, *, alpha: float = 0.05, correction: Correction = "holm", test: TestName = "auto"
) -> Comparison:
    """B (candidate) vs A (baseline) from their episode records."""
    return compare(outcomes(_records(a)), outcomes(_records(b)), alpha=alpha, correction=correction, test=test)


def _records(d: Path) -> list[dict]:
    recs = load_records(Path(d))
    if not recs:
        raise FileNotFoundError(f"{d}: no episode records (episodes*.jsonl); is it an `lbm eval` output dir?")
    return recs


@dataclass
class SequentialResult:
    test: SequentialSignTest
    pairs_available: int
    """Paired episodes (same task and initial-state seed) in both evaluations."""


def paired_sequence(a: Sequence[dict], b: Sequence[dict]) -> tuple[list[bool], list[bool]]:
    """Outcomes of the episodes both evaluated (same task and seed), interleaving tasks: episode 0 of every task,
    then episode 1, ... so that every look covers all tasks evenly."""
    bmap = {(r["task"], int(r["seed"])): bool(r["success"]) for r in b}

    def order(r: dict) -> tuple[int, str]:
        return int(str(r["episode_id"]).rsplit("/", 1)[-1]), str(r["task"])

    xs, ys = [], []
    for r in sorted(a, key=order):
        key = (r["task"], int(r["seed"]))
        if key in bmap:
            xs.append(bool(r["success"]))
            ys.append(bmap[key])
    return xs, ys


def sequential_dirs(
    a: Path, b: Path, *, look_every: int, alpha: float = 0.05, spending: Spending = "obrien_fleming"
) -> SequentialResult:
    """Replay the paired episodes of two eval dirs through the group-sequential sign test."""
    xs, ys = paired_sequence(_records(a), _records(b))
    if not xs:
        raise ValueError(f"{a} and {b} share no initial states (evaluate both with the same --seed)")
    return SequentialResult(run_sequential(xs, ys, look_every=look_every, alpha=alpha, spending=spending), len(xs))
