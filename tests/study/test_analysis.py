"""The study's statistics on hand-made outcomes: pairing, paired tests with Holm, and the data-multiplier rule."""

from __future__ import annotations

import pytest

from openlbm.eval.stats import holm, mcnemar_exact_pvalue
from openlbm.study.analysis import (
    control_multiplier,
    count_tests,
    data_multiplier,
    one_sided_mcnemar,
    paired_vs_scratch,
    pool,
)


def outcomes(successes: dict[str, list[bool]], seed: int = 0) -> dict:
    """task -> successes on initial states 100, 101, ... (the same states in every run)."""
    return pool({seed: {t: {100 + i: v for i, v in enumerate(vals)} for t, vals in successes.items()}})


def test_one_sided_mcnemar_is_the_binomial_tail() -> None:
    assert one_sided_mcnemar(0, 0) == 1.0
    assert one_sided_mcnemar(5, 0) == pytest.approx(1 / 32)  # all 5 discordant pairs favour scratch
    assert one_sided_mcnemar(0, 5) == 1.0  # evidence the other way never rejects "not worse"
    assert one_sided_mcnemar(3, 2) == pytest.approx(sum([10, 5, 1]) / 32)


def test_count_tests_pair_by_initial_state_and_holm_across_counts() -> None:
    ten = [True] * 10
    scratch = {1: outcomes({"a": [False] * 10}), 3: outcomes({"a": [False] * 5 + [True] * 5})}
    tuned = {1: outcomes({"a": ten}), 3: outcomes({"a": ten})}
    tests = count_tests(scratch, tuned, alpha=0.05)
    assert [t.count for t in tests] == [1, 3]
    assert (tests[0].scratch_only, tests[0].finetuned_only, tests[0].pairs) == (0, 10, 10)
    raw = [mcnemar_exact_pvalue(0, 10), mcnemar_exact_pvalue(0, 5)]
    assert [t.p_value for t in tests] == pytest.approx(raw)
    assert [t.p_holm for t in tests] == pytest.approx(holm(raw))
    assert tests[0].per_task[0]["test"] == "mcnemar" and tests[0].per_task[0]["b_only"] == 10


def test_pairs_are_per_training_seed() -> None:
    a = {**outcomes({"a": [True, False]}, seed=0), **outcomes({"a": [False, False]}, seed=1)}
    b = {**outcomes({"a": [True, False]}, seed=0), **outcomes({"a": [True, False]}, seed=1)}
    t = count_tests({2: a}, {2: b}, alpha=0.05)[0]
    assert (t.pairs, t.scratch_only, t.finetuned_only) == (4, 0, 1)


def test_data_multiplier_rule() -> None:
    n = 12
    ref = outcomes({"a": [True] * 10 + [False] * 2})  # scratch@30: 10/12
    scratch = {3: outcomes({"a": [False] * n}), 30: ref}
    # fine-tuned@3 is clearly worse (0/12: 10 discordant pairs all favour scratch), @10 is as good, @30 too
    tuned = {3: outcomes({"a": [False] * n}), 10: outcomes({"a": [True] * 10 + [False] * 2}), 30: ref}
    m = data_multiplier(scratch, tuned, alpha=0.05)
    assert m is not None and m.reference_count == 30
    assert [r["not_worse"] for r in m.rows] == [False, True, True]
    assert m.smallest_count == 10 and m.multiplier == pytest.approx(3.0)
    # "not worse" must hold at every larger count too: a lucky small count does not count
    holes = {3: ref, 10: outcomes({"a": [False] * n}), 30: ref}
    m2 = data_multiplier(scratch, holes, alpha=0.05)
    assert m2 is not None and m2.smallest_count == 30 and m2.multiplier == pytest.approx(1.0)
    # worse everywhere: no multiplier
    m3 = data_multiplier(scratch, {30: outcomes({"a": [False] * n})}, alpha=0.05)
    assert m3 is not None and m3.smallest_count is None and m3.multiplier is None
    # a reference that never succeeds cannot be matched: "not worse than 0%" is no multiplier
    zero = outcomes({"a": [False] * n})
    m4 = data_multiplier({30: zero}, {3: zero, 30: zero}, alpha=0.05)
    assert m4 is not None and m4.multiplier is None and "no episode" in m4.note


def test_control_multiplier_judges_scratch_by_the_same_rule() -> None:
    n = 12
    ref = outcomes({"a": [True] * 10 + [False] * 2})
    # scratch@10 matches scratch@30, scratch@3 fails it: scratch alone earns 3x, so a fine-tuned 3x buys nothing
    scratch = {3: outcomes({"a": [False] * n}), 10: outcomes({"a": [True] * 9 + [False] * 3}), 30: ref}
    c = control_multiplier(scratch, alpha=0.05)
    assert c is not None and [r["not_worse"] for r in c.rows] == [False, True, True]
    assert c.smallest_count == 10 and c.multiplier == pytest.approx(3.0)
    # scratch that needs all its demos: the control is 1x
    c2 = control_multiplier({3: scratch[3], 10: outcomes({"a": [False] * n}), 30: ref}, alpha=0.05)
    assert c2 is not None and c2.multiplier == pytest.approx(1.0)


def test_scale_point_is_paired_with_scratch_by_initial_state() -> None:
    scratch = outcomes({"a": [True, False, False, True], "b": [False, False]})
    point = outcomes({"a": [False, True, True, True], "b": [True, False]})
    t = paired_vs_scratch(scratch, point)
    assert t is not None and (t["pairs"], t["scratch_only"], t["finetuned_only"]) == (6, 1, 3)
    assert t["p_value"] == pytest.approx(mcnemar_exact_pvalue(1, 3))
    assert paired_vs_scratch(None, point) is None and paired_vs_scratch(scratch, {}) is None
