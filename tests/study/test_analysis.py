"""The study's statistics on hand-made outcomes: pairing, paired intervals and tests with Holm, seeds as the unit of
replication, and the non-inferiority rule of the data multiplier."""

from __future__ import annotations

import pytest

from openlbm.eval.stats import holm, mcnemar_exact_pvalue, paired_difference_interval
from openlbm.study.analysis import (
    control_multiplier,
    count_tests,
    data_multiplier,
    difference,
    family_holm,
    noninferiority,
    paired_vs_scratch,
    pool,
    primary_result,
    seed_spread,
)


def outcomes(successes: dict[str, list[bool]], seed: int = 0) -> dict:
    """task -> successes on initial states 100, 101, ... (the same states in every run)."""
    return pool({seed: {t: {100 + i: v for i, v in enumerate(vals)} for t, vals in successes.items()}})


def rates(k: int, n: int, seed: int = 0) -> dict:
    """k successes then n - k failures on one task."""
    return outcomes({"a": [True] * k + [False] * (n - k)}, seed)


def test_count_tests_pair_by_initial_state_and_holm_across_counts() -> None:
    ten = [True] * 10
    scratch = {1: outcomes({"a": [False] * 10}), 3: outcomes({"a": [False] * 5 + [True] * 5})}
    tuned = {1: outcomes({"a": ten}), 3: outcomes({"a": ten})}
    tests = count_tests(scratch, tuned, alpha=0.05)
    assert [t.count for t in tests] == [1, 3]
    d = tests[0].to_dict()
    assert (d["scratch_only"], d["finetuned_only"], d["pairs"]) == (0, 10, 10)
    # one training seed: the exact McNemar test over episodes, and the report says training variation is ignored
    raw = [mcnemar_exact_pvalue(0, 10), mcnemar_exact_pvalue(0, 5)]
    assert [t.diff["p_value"] for t in tests] == pytest.approx(raw)
    assert [t.p_holm for t in tests] == pytest.approx(holm(raw))
    assert "ignores training-run variation" in tests[0].diff["method"]
    assert tests[0].diff["interval"] == pytest.approx(paired_difference_interval(0, 0, 10, 0))
    assert tests[0].per_task[0]["test"] == "mcnemar" and tests[0].per_task[0]["b_only"] == 10


def test_pairs_are_per_training_seed() -> None:
    a = {**outcomes({"a": [True, False]}, seed=0), **outcomes({"a": [False, False]}, seed=1)}
    b = {**outcomes({"a": [True, False]}, seed=0), **outcomes({"a": [True, False]}, seed=1)}
    t = count_tests({2: a}, {2: b}, alpha=0.05)[0].to_dict()
    assert (t["pairs"], t["scratch_only"], t["finetuned_only"]) == (4, 0, 1)


def test_seeds_are_the_unit_of_replication() -> None:
    # Every seed has the same episode-level gap, +6 of 20, but the runs disagree: seed 1's fine-tuned run fails.
    # Pooled as independent episodes (McNemar) the gap looks solid; over seeds it is not.
    scratch, tuned = {}, {}
    for s, k in ((0, 14), (1, 2), (2, 14)):
        scratch |= rates(8, 20, s)
        tuned |= rates(k, 20, s)
    d = difference(scratch, tuned, 0.95)
    assert d["seeds"] == 3 and "bootstrap over 3 training seeds" in d["method"]
    lo, hi = d["interval"]
    assert lo < 0 < hi, "a seed that went the other way must widen the interval past 0"
    one = difference(rates(8, 20), rates(14, 20), 0.95)
    assert one["interval"][0] > 0  # the same gap on one seed alone is clear at the episode level
    assert difference(scratch, tuned, 0.95) == d  # the bootstrap is seeded: a rebuilt report prints the same
    spread = seed_spread(tuned)
    assert spread["per_seed"] == {"0": 0.7, "1": 0.1, "2": 0.7} and spread["sd"] == pytest.approx(0.34641, abs=1e-4)
    assert seed_spread(rates(3, 6))["sd"] is None


def test_six_episodes_are_undetermined_not_a_multiplier() -> None:
    # The case: fine-tuned@3 at 0/6, scratch@30 at 3/6 (one-sided McNemar p = 0.125, "not rejected").
    ref6 = rates(3, 6)
    m = data_multiplier({3: rates(1, 6), 30: ref6}, {3: rates(0, 6), 30: rates(3, 6)}, delta=0.10)
    assert m is not None and m.rows[0]["verdict"] == "undetermined"
    assert m.multiplier != pytest.approx(10.0)
    ni = noninferiority(rates(3, 6), rates(0, 6), 0.10, 0.95)
    assert ni["verdict"] == "undetermined"
    # the same rates on 60 episodes: fine-tuned@3 is decided inferior, the multiplier 1x
    m60 = data_multiplier({30: rates(30, 60)}, {3: rates(0, 60), 30: rates(30, 60)}, delta=0.10)
    assert m60 is not None and m60.rows[0]["verdict"] == "inferior" and m60.multiplier == pytest.approx(1.0)
    assert m60.status == "determined"


@pytest.mark.parametrize("k_small, k_mid", [(9, 10), (8, 10), (10, 9), (6, 10), (2, 9)])
def test_fewer_episodes_never_raise_the_multiplier(k_small: int, k_mid: int) -> None:
    """The same success rates on more and more episodes: the multiplier can only grow with the evidence."""
    previous = 0.0
    for reps in (1, 2, 3, 5, 10, 20, 40):
        def arm(k: int, n: int = 10, reps: int = reps) -> dict:
            return outcomes({"a": ([True] * k + [False] * (n - k)) * reps})

        m = data_multiplier({30: arm(10)}, {3: arm(k_small), 10: arm(k_mid), 30: arm(10)}, delta=0.10)
        assert m is not None
        value = m.multiplier or 0.0
        assert value >= previous, f"{reps * 10} episodes gave {value}x after {previous}x on fewer"
        previous = value


def test_reference_is_the_largest_count_both_arms_finished() -> None:
    ref = rates(50, 60)
    # scratch finished 3 and 10; fine-tuned finished 3, 10 and 30: the reference is 10, and the study says it is partial
    m = data_multiplier({3: rates(0, 60), 10: ref}, {3: rates(50, 60), 10: ref, 30: ref}, delta=0.10, planned_max=30)
    assert m is not None and m.reference_count == 10 and [r["count"] for r in m.rows] == [3, 10]
    assert "partial study" in m.note and m.multiplier is not None and m.multiplier >= 1.0
    # scratch ahead: finished 3, 10 and 30 while fine-tuned has only 3 and 10. The reference is still 10, not 30
    ahead = data_multiplier({3: rates(0, 60), 10: ref, 30: rates(59, 60)}, {3: rates(50, 60), 10: ref}, delta=0.10,
                            planned_max=30)
    assert ahead is not None and ahead.reference_count == 10 and "partial study" in ahead.note
    full = data_multiplier({10: ref}, {10: ref}, delta=0.10, planned_max=10)
    assert full is not None and "partial" not in full.note


def test_multiplier_walk_statuses() -> None:
    n = 40
    ref = rates(30, n)
    scratch = {3: rates(0, n), 10: rates(20, n), 30: ref}
    m = data_multiplier(scratch, {3: rates(0, n), 10: ref, 30: ref}, delta=0.10)
    assert m is not None and [r["verdict"] for r in m.rows] == ["inferior", "non-inferior", "non-inferior"]
    assert m.smallest_count == 10 and m.multiplier == pytest.approx(3.0) and m.status == "determined"
    # a gap stops the walk: non-inferior at 3 does not count when 10 is not
    holes = data_multiplier(scratch, {3: ref, 10: rates(0, n), 30: ref}, delta=0.10)
    assert holes is not None and holes.smallest_count == 30 and holes.multiplier == pytest.approx(1.0)
    # the next count down undecided: a lower bound, said so
    bound = data_multiplier(scratch, {3: rates(26, n), 10: ref, 30: ref}, delta=0.10)
    assert bound is not None and bound.rows[0]["verdict"] == "undetermined"
    assert bound.status == "lower bound" and "may be larger" in bound.note
    # inferior at the reference count: none; a reference that never succeeds: none
    worse = data_multiplier(scratch, {30: rates(0, n)}, delta=0.10)
    assert worse is not None and worse.multiplier is None and worse.status == "none"
    zero = rates(0, n)
    m4 = data_multiplier({30: zero}, {3: zero, 30: zero}, delta=0.10)
    assert m4 is not None and m4.multiplier is None and "no episode" in m4.note


def test_control_multiplier_judges_scratch_by_the_same_rule() -> None:
    n = 40
    ref = rates(30, n)
    scratch = {3: rates(0, n), 10: rates(30, n), 30: ref}
    c = control_multiplier(scratch, delta=0.10)
    assert c is not None and [r["verdict"] for r in c.rows] == ["inferior", "non-inferior", "non-inferior"]
    assert c.multiplier == pytest.approx(3.0)


def test_primary_endpoint_as_declared() -> None:
    plan = {"primary": "noninferiority", "finetuned_count": 10, "scratch_count": 30, "delta": 0.1,
            "confidence": 0.95, "alpha": 0.05}
    ref = rates(30, 40)
    assert primary_result(plan, {30: ref}, {})["status"] == "not finished"
    assert primary_result(plan, {30: ref}, {10: ref})["status"] == "non-inferior"
    sup = {**plan, "primary": "superiority", "scratch_count": 10}
    r = primary_result(sup, {10: rates(5, 40)}, {10: rates(30, 40)})
    assert r["status"] == "better" and r["difference"]["p_value"] < 0.05


def test_family_holm_corrects_every_count_of_every_split() -> None:
    tests = [{"p_value": p} for p in (0.01, 0.04, 0.03, 0.2)]
    assert family_holm(tests) == pytest.approx(holm([0.01, 0.04, 0.03, 0.2]))
    assert family_holm(tests)[0] == pytest.approx(0.04)  # four tests in the family, not two per split


def test_scale_point_is_paired_with_scratch_by_initial_state() -> None:
    scratch = outcomes({"a": [True, False, False, True], "b": [False, False]})
    point = outcomes({"a": [False, True, True, True], "b": [True, False]})
    t = paired_vs_scratch(scratch, point)
    assert t is not None and (t["pairs"], t["scratch_only"], t["finetuned_only"]) == (6, 1, 3)
    assert t["p_value"] == pytest.approx(mcnemar_exact_pvalue(1, 3))
    assert paired_vs_scratch(None, point) is None and paired_vs_scratch(scratch, {}) is None
