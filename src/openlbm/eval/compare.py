"""Compare eval dirs: fixed-sample exact tests per task, or a group-sequential replay of the paired episodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openlbm.envs.difficulty import task_groups
from openlbm.eval.records import load_records, outcomes
from openlbm.eval.sequential import SequentialSignTest, Spending, run_sequential
from openlbm.eval.stats import (
    BootstrapDifference,
    Correction,
    NonInferiority,
    Outcomes,
    RateEstimate,
    TestName,
    Verdict,
    adjust,
    barnard_pvalue,
    clustered_bootstrap_difference,
    estimate,
    fisher_pvalue,
    mcnemar_exact_pvalue,
    noninferiority_verdict,
    paired_difference_interval,
    verdict,
)


# -- comparing two evaluations ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskComparison:
    """B (candidate) vs A (baseline) on one task, or overall (``task == "overall"``)."""

    task: str
    a: RateEstimate
    b: RateEstimate
    test: str
    """The test behind ``p_value``: ``mcnemar`` (paired), ``barnard`` or ``fisher``."""
    p_value: float
    p_adjusted: float
    verdict: Verdict
    p_barnard: float
    p_fisher: float
    p_mcnemar: float | None
    """``None`` when the two evaluations share no initial states."""
    n_pairs: int
    a_only: int
    """Paired episodes where only A succeeded."""
    b_only: int
    """Paired episodes where only B succeeded."""
    prob_b_better: float
    """Posterior ``P(p_B > p_A)`` under independent Beta(1,1) priors."""
    diff_interval: tuple[float, float] | None
    """95% Newcombe interval of the paired difference ``p_B - p_A`` over the paired episodes; ``None`` without
    any. One evaluation per arm: it does not include training-run variation."""

    @property
    def diff(self) -> float:
        return self.b.rate - self.a.rate

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("a", "b", "diff_interval")}
        interval = None if self.diff_interval is None else list(self.diff_interval)
        return {**d, "a": self.a.to_dict(), "b": self.b.to_dict(), "diff": self.diff, "diff_interval": interval}

    def interval_line(self) -> str | None:
        """The paired difference and its interval as one sentence; ``None`` without paired episodes."""
        if self.diff_interval is None:
            return None
        lo, hi = self.diff_interval
        b_minus_a = (self.b_only - self.a_only) / self.n_pairs
        return (f"{self.task}: paired difference B - A {100 * b_minus_a:+.1f} pp, 95% {100 * lo:+.1f} to "
                f"{100 * hi:+.1f} (Newcombe, {self.n_pairs} paired episodes)")


@dataclass(frozen=True)
class Comparison:
    """Per-task comparisons (corrected across tasks) and an overall one."""

    tasks: list[TaskComparison]
    overall: TaskComparison
    alpha: float
    correction: Correction
    groups: list[TaskComparison] = field(default_factory=list)
    """Per difficulty group (Meta-World tasks of two or more MT50 groups), its episodes pooled; corrected across
    groups. Empty otherwise."""
    group_mean: BootstrapDifference | None = None
    """The paired difference of the mean of group means (MT50's published figure), from a bootstrap over initial
    states within tasks; ``None`` without groups or paired episodes."""
    margin: float | None = None
    """Non-inferiority margin of B against A (0.10 = 10 points), when one was asked for."""
    noninferiority: NonInferiority | None = None
    """B against A overall with that margin, by :func:`~openlbm.eval.stats.noninferiority_verdict` on the paired
    interval; ``None`` without a margin."""

    def noninferiority_line(self) -> str | None:
        """The non-inferiority verdict as one sentence, ``None`` without a margin."""
        interval, margin = self.overall.diff_interval, self.margin
        if interval is None or margin is None:
            return None
        return (f"Non-inferiority of B to A, margin {100 * margin:.1f} pp: {self.noninferiority} "
                f"(95% lower bound {100 * interval[0]:+.1f} pp against -{100 * margin:.1f})")

    def group_mean_line(self) -> str | None:
        """The mean-of-group-means difference as one sentence (console and report page), ``None`` without it."""
        m = self.group_mean
        if m is None:
            return None
        lo, hi = m.interval
        return (f"Mean of {len(self.groups)} group means, B - A: {100 * m.estimate:+.1f} pp, 95% {100 * lo:+.1f} to "
                f"{100 * hi:+.1f} (bootstrap over initial states within tasks, {m.items} paired episodes), "
                f"p = {m.p_value:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "correction": self.correction,
            "tasks": [t.to_dict() for t in self.tasks],
            "overall": self.overall.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "group_mean": None if self.group_mean is None else self.group_mean.to_dict(),
            "margin": self.margin,
            "noninferiority": self.noninferiority,
        }


def _compare_one(task: str, a: Mapping[int, bool], b: Mapping[int, bool], test: TestName) -> dict[str, Any]:
    ka, na, kb, nb = sum(a.values()), len(a), sum(b.values()), len(b)
    shared = sorted(set(a) & set(b))
    a_only = sum(1 for s in shared if a[s] and not b[s])
    b_only = sum(1 for s in shared if b[s] and not a[s])
    p_bar, p_fis = barnard_pvalue(ka, na, kb, nb), fisher_pvalue(ka, na, kb, nb)
    p_mc = mcnemar_exact_pvalue(a_only, b_only) if shared else None
    # The paired test is only valid on the paired episodes, so "auto" uses it when every episode is paired.
    fully_paired = bool(shared) and len(shared) == na == nb
    chosen = ("mcnemar" if fully_paired else "barnard") if test == "auto" else test
    if chosen == "mcnemar" and p_mc is None:
        raise ValueError(f"task {task}: the paired (McNemar) test needs episodes with shared initial-state seeds")
    p = {"mcnemar": p_mc, "barnard": p_bar, "fisher": p_fis}[chosen]
    ea, eb = estimate(ka, na), estimate(kb, nb)
    both = sum(1 for s in shared if a[s] and b[s])
    interval = (paired_difference_interval(both, a_only, b_only, len(shared) - both - a_only - b_only)
                if shared else None)
    return {
        "task": task, "a": ea, "b": eb, "test": chosen, "p_value": p, "p_barnard": p_bar, "p_fisher": p_fis,
        "p_mcnemar": p_mc, "n_pairs": len(shared), "a_only": a_only, "b_only": b_only,
        "prob_b_better": eb.posterior.prob_greater(ea.posterior), "diff_interval": interval,
    }


def compare(
    a: Outcomes, b: Outcomes, *, alpha: float = 0.05, correction: Correction = "holm", test: TestName = "auto",
    margin: float | None = None,
) -> Comparison:
    """Compare B against A on the tasks both evaluated; per-task p-values are corrected across tasks.

    The overall comparison pools all episodes (one pre-specified test, not part of the corrected family). With a
    ``margin``, B is also judged non-inferior, inferior or undetermined against A on the overall paired interval.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    tasks = [t for t in a if t in b]
    if not tasks:
        raise ValueError(f"the evaluations share no task (A: {sorted(a)}, B: {sorted(b)})")
    per_task = _corrected([_compare_one(t, a[t], b[t], test) for t in tasks], alpha, correction)

    def pooled(o: Outcomes, ts: Sequence[str]) -> dict[tuple[str, int], bool]:
        return {(t, s): v for t in ts for s, v in o[t].items()}

    [overall] = _corrected([_compare_one("overall", pooled(a, tasks), pooled(b, tasks), test)], alpha, "none")
    ni = None
    if margin is not None:
        if overall.diff_interval is None:
            raise ValueError("a non-inferiority margin needs paired episodes: evaluate both with the same --seed")
        ni = noninferiority_verdict(overall.diff_interval, margin)
    groups = task_groups(tasks)
    if len(groups) < 2:
        return Comparison(tasks=per_task, overall=overall, alpha=alpha, correction=correction, margin=margin,
                          noninferiority=ni)
    rows = [_compare_one(g, pooled(a, ts), pooled(b, ts), test) for g, ts in groups.items()]
    pairs = {(0, t, s): (a[t][s], b[t][s]) for t in tasks for s in set(a[t]) & set(b[t])}
    # every group weighs the same, spread over its paired episodes
    per_group = {g: sum(1 for _, t, _ in pairs if t in ts) for g, ts in groups.items()}
    weights = {t: 1 / per_group[g] for g, ts in groups.items() for t in ts if per_group[g]}
    return Comparison(
        tasks=per_task, overall=overall, alpha=alpha, correction=correction,
        groups=_corrected(rows, alpha, correction),
        group_mean=clustered_bootstrap_difference(pairs, weights=weights) if pairs else None, margin=margin,
        noninferiority=ni,
    )


def _corrected(rows: list[dict[str, Any]], alpha: float, correction: Correction) -> list[TaskComparison]:
    adjusted = adjust([r["p_value"] for r in rows], correction)
    return [TaskComparison(**r, p_adjusted=q, verdict=verdict(r["a"].rate, r["b"].rate, q, alpha))
            for r, q in zip(rows, adjusted, strict=True)]


def compare_dirs(
    a: Path, b: Path, *, alpha: float = 0.05, correction: Correction = "holm", test: TestName = "auto",
    margin: float | None = None,
) -> Comparison:
    """B (candidate) vs A (baseline) from their episode records."""
    return compare(outcomes(_records(a)), outcomes(_records(b)), alpha=alpha, correction=correction, test=test,
                   margin=margin)


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
