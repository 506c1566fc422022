"""The study's statistics, as pure functions of episode outcomes (no files, no plotting).

Pairing. Every run is evaluated on the same initial states, and each fine-tuned run has a scratch twin with the same
training seed, so an episode is identified by ``(training seed, task, initial-state seed)``: the same key in both
arms is one pair. Pools over tasks and seeds keep these keys.

The unit of replication is the training run. With one training seed per arm there is nothing to say how much a
retrained run would move, so the paired difference gets Newcombe's interval over episodes and the exact McNemar
test, both labelled as ignoring training variation. With two or more seeds, intervals and p-values come from a
two-level bootstrap over training seeds and initial states (:func:`openlbm.eval.stats.clustered_bootstrap_difference`),
and the between-seed spread of each arm is reported beside them. The episode-level McNemar test is kept as a
secondary column.

Tests. At each demo count, fine-tuned minus scratch (paired); the per-count p-values are Holm-corrected across
counts (and across splits when the report is given a family of studies). Per task, the exact McNemar test with Holm
across tasks (within a count), via :func:`openlbm.eval.compare.compare`.

Data multiplier (the rule, stated once). Reference ``N``: the largest count finished by *both* arms. Fine-tuned at
count ``n <= N`` is *non-inferior* to scratch at ``N`` when the lower bound of the 95% interval of the paired
difference (fine-tuned@n minus scratch@N) is above ``-delta``; *inferior* when its upper bound is below ``-delta``;
*undetermined* otherwise (too few episodes or seeds to decide either way). ``n*`` is the smallest count such that
fine-tuned is non-inferior at ``n*`` and at every count between ``n*`` and ``N``, decided in that fixed order from
``N`` down (a fixed-sequence procedure: no multiplicity correction is needed, and a gap stops the walk). The
multiplier is ``N / n*``; it is *undetermined* when fine-tuned@N itself is undetermined, and *none* when it is
inferior. When the count just below ``n*`` is undetermined, the multiplier is a lower bound and says so. Fewer
episodes only widen the interval, so they can turn a decision into "undetermined" but never raise the multiplier.

Control. The same rule applied to scratch itself (scratch@n against scratch@N). Only a fine-tuned multiplier above
this control is evidence of what pretraining buys; the report shows both.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openlbm.eval.compare import compare
from openlbm.eval.stats import (
    RateEstimate,
    clustered_bootstrap_difference,
    estimate,
    holm,
    mcnemar_exact_pvalue,
    noninferiority_verdict,
    paired_difference_interval,
)

Key = tuple[int, str, int]
"""(training seed, task, initial-state seed)."""

Pooled = dict[Key, bool]

BOOTSTRAP_SEED = 0
"""Seed of every bootstrap in a report: rebuilt from the same records, the report prints the same numbers."""


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


def seed_spread(outcomes: Pooled) -> dict[str, Any]:
    """Per training seed, the success rate; and their standard deviation (``None`` with one seed)."""
    by_seed: dict[int, list[bool]] = {}
    for (s, _, _), v in outcomes.items():
        by_seed.setdefault(s, []).append(v)
    rates = {s: sum(v) / len(v) for s, v in sorted(by_seed.items())}
    sd = statistics.stdev(rates.values()) if len(rates) > 1 else None
    return {"per_seed": {str(s): r for s, r in rates.items()}, "sd": sd}


def difference(a: Pooled, b: Pooled, confidence: float) -> dict[str, Any]:
    """Paired ``B - A`` over the keys both have: estimate, interval, two-sided p, and how they were computed (see
    the module docstring: seeds are the unit when there are several)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("no paired episodes: the two arms share no (seed, task, initial state)")
    both = sum(a[k] and b[k] for k in shared)
    a_only = sum(a[k] and not b[k] for k in shared)
    b_only = sum(b[k] and not a[k] for k in shared)
    neither = len(shared) - both - a_only - b_only
    seeds = sorted({k[0] for k in shared})
    p_mcnemar = mcnemar_exact_pvalue(a_only, b_only)
    out = {"pairs": len(shared), "a_only": a_only, "b_only": b_only, "estimate": (b_only - a_only) / len(shared),
           "seeds": len(seeds), "p_mcnemar": p_mcnemar}
    if len(seeds) == 1:
        out |= {"interval": list(paired_difference_interval(both, a_only, b_only, neither, confidence)),
                "p_value": p_mcnemar,
                "method": "one training seed: Newcombe paired interval and exact McNemar over episodes (ignores "
                          "training-run variation)"}
        return out
    boot = clustered_bootstrap_difference({k: (a[k], b[k]) for k in shared}, confidence, seed=BOOTSTRAP_SEED)
    out |= {"interval": list(boot.interval), "p_value": boot.p_value,
            "method": f"bootstrap over {len(seeds)} training seeds and initial states ({boot.replicates} replicates)"}
    return out


def noninferiority(reference: Pooled, candidate: Pooled, delta: float, confidence: float) -> dict[str, Any]:
    """Candidate vs reference with margin ``delta``: the paired difference and its verdict (module docstring)."""
    d = difference(reference, candidate, confidence)
    return {**d, "verdict": noninferiority_verdict(tuple(d["interval"]), delta)}


@dataclass(frozen=True)
class CountTest:
    """Fine-tuned vs scratch at one demo count."""

    count: int
    scratch: RateEstimate
    finetuned: RateEstimate
    diff: dict[str, Any]
    """:func:`difference` of fine-tuned minus scratch."""
    p_holm: float
    spread: dict[str, Any]
    """Between-seed spread per arm: ``{"scratch": seed_spread, "finetuned": seed_spread}``."""
    per_task: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "scratch": self.scratch.to_dict(), "finetuned": self.finetuned.to_dict(),
                "pairs": self.diff["pairs"], "scratch_only": self.diff["a_only"],
                "finetuned_only": self.diff["b_only"], "difference": self.diff, "p_value": self.diff["p_value"],
                "p_holm": self.p_holm, "spread": self.spread, "per_task": self.per_task}


def count_tests(scratch: Mapping[int, Pooled], finetuned: Mapping[int, Pooled], alpha: float,
                confidence: float = 0.95) -> list[CountTest]:
    """One paired comparison per count both arms have (Holm across counts; per task, Holm across tasks)."""
    counts = sorted(set(scratch) & set(finetuned))
    diffs = [difference(scratch[n], finetuned[n], confidence) for n in counts]
    adjusted = holm([d["p_value"] for d in diffs]) if diffs else []
    return [
        CountTest(n, rate(scratch[n]), rate(finetuned[n]), d, q,
                  {"scratch": seed_spread(scratch[n]), "finetuned": seed_spread(finetuned[n])},
                  _per_task(scratch[n], finetuned[n], alpha))
        for n, d, q in zip(counts, diffs, adjusted, strict=True)
    ]


def paired_vs_scratch(scratch: Pooled | None, other: Pooled | None, confidence: float = 0.95) -> dict[str, Any] | None:
    """A scale point against scratch at the same count (not corrected: the scale curve is read as a whole, and each
    point is its own question). ``None`` until both ran."""
    if not scratch or not other:
        return None
    d = difference(scratch, other, confidence)
    return {"pairs": d["pairs"], "scratch_only": d["a_only"], "finetuned_only": d["b_only"], "difference": d,
            "p_value": d["p_value"]}


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
    """Per count ``<= reference_count``: the candidate's rate and :func:`noninferiority` against the reference."""
    smallest_count: int | None
    multiplier: float | None
    status: str
    """``determined``, ``lower bound`` (the next smaller count is undetermined), ``undetermined`` (the reference
    count itself is) or ``none`` (inferior at the reference count, or a reference that never succeeds)."""
    rule: str
    note: str = ""
    """Why there is no multiplier, why it is a bound, or that the study is partial."""

    def to_dict(self) -> dict[str, Any]:
        return {"reference_count": self.reference_count, "reference": self.reference.to_dict(), "rows": self.rows,
                "smallest_count": self.smallest_count, "multiplier": self.multiplier, "status": self.status,
                "rule": self.rule, "note": self.note}


RULE = ("smallest demo count n such that fine-tuned@n, and fine-tuned at every count from n up to N, is non-inferior "
        "to scratch@N: the lower bound of the {confidence:.0%} interval of the paired success difference (fine-tuned "
        "minus scratch@N, paired by training seed, task and initial state) is above -{delta:.3g}; N = the largest count "
        "both arms finished; multiplier = N / n; 'undetermined' when the interval straddles -{delta:.3g}")


def data_multiplier(scratch: Mapping[int, Pooled], finetuned: Mapping[int, Pooled], delta: float,
                    confidence: float = 0.95, planned_max: int | None = None) -> Multiplier | None:
    """``None`` until some count is finished by both arms. ``planned_max``: the study's largest count (a partial
    study's reference is smaller, and the note says so)."""
    shared = set(scratch) & set(finetuned)
    if not shared:
        return None
    top = max(shared)
    ref = scratch[top]
    rows = []
    for n in sorted(c for c in finetuned if c <= top):
        ni = noninferiority(ref, finetuned[n], delta, confidence)
        rows.append({"count": n, "finetuned": rate(finetuned[n]).to_dict(), **ni})
    rule = RULE.format(delta=delta, confidence=confidence)
    partial = (f"partial study: the reference is {top} demos/task, the largest count both arms finished "
               f"(planned {planned_max}). " if planned_max is not None and top < planned_max else "")
    if not any(ref.values()):
        note = f"scratch with {top} demos/task succeeded on no episode: there is nothing to match"
        return Multiplier(top, rate(ref), rows, None, None, "none", rule, partial + note)
    smallest, below = None, None
    for row in reversed(rows):  # walk down from the reference count while non-inferiority holds
        if row["verdict"] != "non-inferior":
            below = row
            break
        smallest = row["count"]
    if smallest is None:
        verdict = rows[-1]["verdict"]
        status = "undetermined" if verdict == "undetermined" else "none"
        why = (f"fine-tuned@{top} vs scratch@{top}: the interval is too wide to decide (more episodes or seeds)"
               if status == "undetermined" else f"fine-tuned@{top} is inferior to scratch@{top} by more than {delta:.3g}")
        return Multiplier(top, rate(ref), rows, None, None, status, rule, partial + why)
    status, note = "determined", ""
    if below is not None and below["verdict"] == "undetermined":
        status = "lower bound"
        note = f"fine-tuned@{below['count']} is undetermined: the multiplier may be larger"
    return Multiplier(top, rate(ref), rows, smallest, top / smallest, status, rule, partial + note)


def control_multiplier(scratch: Mapping[int, Pooled], delta: float, confidence: float = 0.95,
                       planned_max: int | None = None) -> Multiplier | None:
    """The rule applied to scratch@n against scratch@N (see the module docstring's "Control")."""
    return data_multiplier(scratch, scratch, delta, confidence, planned_max)


def primary_result(plan: Mapping[str, Any], scratch: Mapping[int, Pooled], finetuned: Mapping[int, Pooled],
                   ) -> dict[str, Any]:
    """The declared primary endpoint (``plan`` as in ``study.json``'s ``analysis``), or why it is not there yet."""
    cand, ref = int(plan["finetuned_count"]), int(plan["scratch_count"])
    out: dict[str, Any] = {"endpoint": plan["primary"], "finetuned_count": cand, "scratch_count": ref}
    if cand not in finetuned or ref not in scratch:
        return {**out, "status": "not finished"}
    if plan["primary"] == "noninferiority":
        ni = noninferiority(scratch[ref], finetuned[cand], float(plan["delta"]), float(plan["confidence"]))
        return {**out, "status": ni["verdict"], "difference": ni}
    d = difference(scratch[ref], finetuned[cand], float(plan["confidence"]))
    better = d["p_value"] < float(plan["alpha"])
    status = ("better" if d["estimate"] > 0 else "worse") if better else "no significant difference"
    return {**out, "status": status, "difference": d}


def family_holm(tests: Sequence[Mapping[str, Any]]) -> list[float]:
    """Holm over a family of per-count tests (every count of every split reported), in the given order."""
    return holm([float(t["p_value"]) for t in tests]) if tests else []


def curve(runs: Mapping[int, Pooled], tasks: Sequence[str]) -> dict[int, dict[str, Any]]:
    """count -> {"overall": rate, task: rate} (rates as dicts with Wilson intervals)."""
    return {n: {"overall": rate(o).to_dict(), **{t: rate(o, t).to_dict() for t in tasks}} for n, o in sorted(runs.items())}
