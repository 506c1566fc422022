"""The study's statistics, as pure functions of episode outcomes (no files, no plotting).

Pairing. Every run is evaluated on the same initial states, and each fine-tuned run has a scratch twin with the same
training seed, so an episode is identified by ``(training seed, task, initial-state seed)``: the same key in both
arms is one pair. Pools over tasks and seeds keep these keys.

Tests. At each demo count, fine-tuned vs scratch: the exact McNemar test (two-sided, ``openlbm.eval.stats``) on the
pairs pooled over tasks and seeds; the per-count p-values are Holm-corrected across counts. Per task, the same test
with Holm correction across tasks (within a count), via :func:`openlbm.eval.stats.compare`.

Data multiplier (the rule, stated once). Reference: scratch at the largest count ``N``. Fine-tuned at count ``n`` is
*not worse* when the one-sided exact McNemar test of "fine-tuned@n succeeds less often than scratch@N" (paired by
``(seed, task, initial state)``) does not reject at ``alpha``. ``n*`` is the smallest count such that fine-tuned is
not worse at ``n*`` and at every larger count; the multiplier is ``N / n*`` (``None`` when even ``N`` fails, or when
scratch@N succeeds on no episode: "not worse than 0%" says nothing). A test
that does not reject is weak evidence when episodes are few: the report shows the discordant-pair counts and the
rates with their intervals beside it, so a multiplier from too few episodes is visible as such.

Control. The same rule applied to scratch itself (scratch@n in place of fine-tuned@n) gives scratch's own
"multiplier": with few episodes "not worse" is easy to pass, so scratch with fewer demos often passes too. Only a
fine-tuned multiplier above this control is evidence of what pretraining buys; the report shows both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openlbm.eval.stats import RateEstimate, compare, estimate, holm, mcnemar_exact_pvalue

Key = tuple[int, str, int]
"""(training seed, task, initial-state seed)."""

Pooled = dict[Key, bool]


def pool(per_seed: Mapping[int, Mapping[str, Mapping[int, bool]]]) -> Pooled:
    """``{train_seed: {task: {init_seed: success}}}`` -> ``{(train_seed, task, init_seed): success}``."""
    return {(s, t, i): v for s, tasks in per_seed.items() for t, eps in tasks.items() for i, v in eps.items()}


def rate(outcomes: Pooled, task: str | None = None) -> RateEstimate:
    vals = [v for (_, t, _), v in outcomes.items() if task is None or t == task]
    return estimate(sum(vals), len(vals))


def discordant(a: Pooled, b: Pooled) -> tuple[int, int, int]:
    """(pairs, only A succeeded, only B succeeded) over the keys both have."""
    shared = set(a) & set(b)
    return len(shared), sum(a[k] and not b[k] for k in shared), sum(b[k] and not a[k] for k in shared)


def one_sided_mcnemar(a_only: int, b_only: int) -> float:
    """Exact one-sided p-value of "B succeeds less often than A": ``P(X >= a_only)``, ``X ~ Bin(a_only + b_only, 1/2)``."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(a_only, n + 1)) / 2**n)


@dataclass(frozen=True)
class CountTest:
    """Fine-tuned vs scratch at one demo count."""

    count: int
    scratch: RateEstimate
    finetuned: RateEstimate
    pairs: int
    scratch_only: int
    finetuned_only: int
    p_value: float
    p_holm: float
    per_task: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "scratch": self.scratch.to_dict(), "finetuned": self.finetuned.to_dict(),
                "pairs": self.pairs, "scratch_only": self.scratch_only, "finetuned_only": self.finetuned_only,
                "p_value": self.p_value, "p_holm": self.p_holm, "per_task": self.per_task}


def count_tests(scratch: Mapping[int, Pooled], finetuned: Mapping[int, Pooled], alpha: float) -> list[CountTest]:
    """One paired test per count both arms have (Holm across counts; per task, Holm across tasks)."""
    counts = sorted(set(scratch) & set(finetuned))
    raw = []
    for n in counts:
        pairs, s_only, f_only = discordant(scratch[n], finetuned[n])
        raw.append((n, pairs, s_only, f_only, mcnemar_exact_pvalue(s_only, f_only)))
    adjusted = holm([r[4] for r in raw]) if raw else []
    out = []
    for (n, pairs, s_only, f_only, p), q in zip(raw, adjusted, strict=True):
        per_task = _per_task(scratch[n], finetuned[n], alpha)
        out.append(CountTest(n, rate(scratch[n]), rate(finetuned[n]), pairs, s_only, f_only, p, q, per_task))
    return out


def paired_vs_scratch(scratch: Pooled | None, other: Pooled | None) -> dict[str, Any] | None:
    """A scale point against scratch at the same count: discordant pairs and the two-sided exact McNemar p (not
    corrected: the scale curve is read as a whole, and each point is its own question). ``None`` until both ran."""
    if not scratch or not other:
        return None
    pairs, s_only, o_only = discordant(scratch, other)
    return {"pairs": pairs, "scratch_only": s_only, "finetuned_only": o_only,
            "p_value": mcnemar_exact_pvalue(s_only, o_only)}


def _per_task(a: Pooled, b: Pooled, alpha: float) -> list[dict[str, Any]]:
    def by_task(x: Pooled) -> dict[str, dict[int, bool]]:
        out: dict[str, dict[int, bool]] = {}
        for (seed, task, init), v in x.items():
            out.setdefault(task, {})[seed * 2**32 + init] = v  # unique per (seed, initial state); 31-bit seeds
        return out

    ta, tb = by_task(a), by_task(b)
    if not set(ta) & set(tb):
        return []
    c = compare(ta, tb, alpha=alpha, correction="holm", test="auto")
    return [t.to_dict() for t in c.tasks]


@dataclass(frozen=True)
class Multiplier:
    """The data multiplier and the evidence behind it (see the module docstring for the rule)."""

    reference_count: int
    reference: RateEstimate
    rows: list[dict[str, Any]]
    """Per count: fine-tuned rate, discordant pairs vs the reference, one-sided p, ``not_worse``."""
    smallest_count: int | None
    multiplier: float | None
    rule: str
    note: str = ""
    """Why there is no multiplier, when there is none."""

    def to_dict(self) -> dict[str, Any]:
        return {"reference_count": self.reference_count, "reference": self.reference.to_dict(), "rows": self.rows,
                "smallest_count": self.smallest_count, "multiplier": self.multiplier, "rule": self.rule,
                "note": self.note}


RULE = ("smallest demo count n such that, at n and every larger count, the one-sided exact McNemar test of "
        "'fine-tuned@n succeeds less often than scratch@max count' (episodes paired by training seed, task and "
        "initial state) does not reject at alpha={alpha}; multiplier = max count / n")


def data_multiplier(scratch: Mapping[int, Pooled], finetuned: Mapping[int, Pooled], alpha: float) -> Multiplier | None:
    """``None`` when scratch has no run at the largest fine-tuned count (nothing to compare against yet)."""
    if not scratch or not finetuned:
        return None
    top = max(scratch)
    ref = scratch[top]
    rows = []
    for n in sorted(finetuned):
        pairs, s_only, f_only = discordant(ref, finetuned[n])
        p = one_sided_mcnemar(s_only, f_only)
        rows.append({"count": n, "finetuned": rate(finetuned[n]).to_dict(), "pairs": pairs, "scratch_only": s_only,
                     "finetuned_only": f_only, "p_one_sided": p, "not_worse": bool(pairs > 0 and p >= alpha)})
    rule = RULE.format(alpha=alpha)
    if not any(ref.values()):
        # "not worse than 0%" holds for anything: no multiplier can be read off a reference that never succeeds
        note = f"scratch with {top} demos/task succeeded on no episode: there is nothing to match"
        return Multiplier(top, rate(ref), rows, None, None, rule, note)
    smallest = None
    for row in reversed(rows):  # walk down from the largest count while "not worse" holds
        if not row["not_worse"]:
            break
        smallest = row["count"]
    mult = top / smallest if smallest is not None else None
    note = "" if smallest is not None else f"fine-tuned is worse than scratch with {top} demos/task at every count"
    return Multiplier(top, rate(ref), rows, smallest, mult, rule, note)


def control_multiplier(scratch: Mapping[int, Pooled], alpha: float) -> Multiplier | None:
    """The rule applied to scratch@n against scratch@max (see the module docstring's "Control")."""
    return data_multiplier(scratch, scratch, alpha)


def curve(runs: Mapping[int, Pooled], tasks: Sequence[str]) -> dict[int, dict[str, Any]]:
    """count -> {"overall": rate, task: rate} (rates as dicts with Wilson intervals)."""
    return {n: {"overall": rate(o).to_dict(), **{t: rate(o, t).to_dict() for t in tasks}} for n, o in sorted(runs.items())}
