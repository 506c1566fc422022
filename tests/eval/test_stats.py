"""Statistics against published values, SciPy, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from openlbm.eval import compare as C
from openlbm.eval import stats as S


@pytest.mark.parametrize(
    ("k", "n", "wilson", "cp"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I (methods 3 and 5).
        (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
        (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
        (0, 20, (0.0000, 0.1611), (0.0000, 0.1684)),
        (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
    ],
)
def test_intervals_match_newcombe(k: int, n: int, wilson: tuple, cp: tuple) -> None:
    assert S.wilson_interval(k, n) == pytest.approx(wilson, abs=6e-5)
    assert S.clopper_pearson_interval(k, n) == pytest.approx(cp, abs=6e-5)


def test_interval_edges_and_bad_input() -> None:
    assert S.wilson_interval(10, 10)[1] == 1.0
    assert S.wilson_interval(0, 0) == (0.0, 1.0)
    # 0 of n: Clopper-Pearson upper bound is 1 - (alpha/2)^(1/n) exactly.
    assert S.clopper_pearson_interval(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    with pytest.raises(ValueError, match="successes"):
        S.wilson_interval(5, 4)


def test_mean_of_group_rates_weighs_groups_equally_with_an_effective_sample_size() -> None:
    # equal groups: the mean is the pooled rate and n_eff the episode count, so the interval is the pooled Wilson's
    m = S.mean_of_rates([S.estimate(5, 10), S.estimate(3, 10)])
    assert (m.rate, m.n_eff, m.groups) == (0.4, 20.0, 2) and m.wilson == S.wilson_interval(8, 20)
    # unequal groups (MT50 at 10 episodes per task: 280 easy and 50 very hard episodes): each group weighs 1/2
    m = S.mean_of_rates([S.estimate(252, 280), S.estimate(0, 50)])
    assert m.rate == pytest.approx(0.45) and m.n_eff == pytest.approx(4 / (1 / 280 + 1 / 50))
    assert m.wilson[0] < 0.45 < m.wilson[1] and m.wilson[1] - m.wilson[0] > S.wilson_interval(126, 280)[1] - \
        S.wilson_interval(126, 280)[0]  # wider than the pooled interval would be: fewer effective episodes
    # groups without episodes are left out; none at all is undefined
    assert S.mean_of_rates([S.estimate(2, 4), S.estimate(0, 0)]).rate == 0.5
    assert math.isnan(S.mean_of_rates([S.estimate(0, 0)]).rate)


def test_posterior_summary() -> None:
    post = S.BetaPosterior.from_counts(7, 10)  # Beta(8, 4)
    assert (post.alpha, post.beta) == (8, 4)
    assert post.mean == pytest.approx(8 / 12)
    lo, hi = post.credible_interval()
    assert (lo, hi) == pytest.approx(scipy.stats.beta(8, 4).ppf([0.025, 0.975]))


@pytest.mark.parametrize(("a", "b"), [((40, 50), (30, 50)), ((3, 5), (4, 5)), ((0, 10), (0, 10)), ((50, 50), (1, 50))])
def test_prob_greater_exact_matches_quadrature_and_sampling(a: tuple, b: tuple) -> None:
    pa, pb = S.BetaPosterior.from_counts(*a), S.BetaPosterior.from_counts(*b)
    exact = pa.prob_greater(pb)
    assert exact == pytest.approx(S.prob_greater_quad(pa, pb), abs=1e-7)
    rng = np.random.default_rng(0)
    mc = np.mean(rng.beta(pa.alpha, pa.beta, 200_000) > rng.beta(pb.alpha, pb.beta, 200_000))
    assert exact == pytest.approx(mc, abs=5e-3)
    assert exact + pb.prob_greater(pa) == pytest.approx(1.0, abs=1e-9)  # continuous: ties have probability 0


def test_prob_greater_symmetric_case_is_half() -> None:
    p = S.BetaPosterior.from_counts(12, 20)
    assert p.prob_greater(p) == pytest.approx(0.5, abs=1e-12)


def test_fisher_matches_hand_computed_hypergeometric() -> None:
    # A: 6/8 vs B: 1/5; column totals 8, 5; 7 successes in all. P(table) = C(8,k) C(5,7-k) / C(13,7).
    probs = {k: math.comb(8, k) * math.comb(5, 7 - k) / math.comb(13, 7) for k in range(2, 8)}
    p_obs = probs[6]
    hand = sum(p for p in probs.values() if p <= p_obs * (1 + 1e-9))
    assert S.fisher_pvalue(6, 8, 1, 5) == pytest.approx(hand, rel=1e-12)
    assert S.fisher_pvalue(6, 8, 1, 5) == pytest.approx(0.10256410256410256, rel=1e-12)  # SciPy docs' example


def test_barnard_matches_scipy_and_is_more_powerful_than_fisher() -> None:
    res = scipy.stats.barnard_exact([[7, 12], [8, 3]], alternative="two-sided")
    assert S.barnard_pvalue(7, 15, 12, 15) == pytest.approx(res.pvalue, rel=1e-9)
    assert S.barnard_pvalue(7, 15, 12, 15) < S.fisher_pvalue(7, 15, 12, 15)
    assert S.barnard_pvalue(20, 20, 20, 20) == 1.0


def test_mcnemar_exact_hand_computed() -> None:
    # 1 vs 9 discordant: two-sided sign test = 2 * (C(10,0) + C(10,1)) / 2^10.
    assert S.mcnemar_exact_pvalue(1, 9) == pytest.approx(2 * 11 / 1024, rel=1e-12)
    assert S.mcnemar_exact_pvalue(0, 0) == 1.0
    assert S.mcnemar_exact_pvalue(5, 5) == 1.0


def test_holm_and_bh() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm by hand: sorted .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06.
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.benjamini_hochberg(p) == pytest.approx(scipy.stats.false_discovery_control(p, method="bh"))
    rng = np.random.default_rng(1)
    q = rng.random(17).tolist()
    assert S.benjamini_hochberg(q) == pytest.approx(scipy.stats.false_discovery_control(q, method="bh"))
    with pytest.raises(ValueError, match="correction"):
        S.adjust(p, "bonferonni")  # type: ignore[arg-type]


def _outcomes(rates: dict[str, tuple[float, float]], n: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for task, (ra, rb) in rates.items():
        a[task] = {s: bool(x) for s, x in enumerate(rng.random(n) < ra)}
        b[task] = {s: bool(x) for s, x in enumerate(rng.random(n) < rb)}
    return a, b


def test_compare_verdicts_paired() -> None:
    a, b = _outcomes({"t1": (0.2, 0.95), "t2": (0.95, 0.2), "t3": (0.6, 0.6)}, n=50)
    c = C.compare(a, b)
    verdicts = {t.task: t.verdict for t in c.tasks}
    assert verdicts == {"t1": "better", "t2": "worse", "t3": "no significant difference"}
    assert all(t.test == "mcnemar" for t in c.tasks)
    t1 = c.tasks[0]
    assert t1.p_value == pytest.approx(S.mcnemar_exact_pvalue(t1.a_only, t1.b_only))
    assert t1.p_adjusted >= t1.p_value
    assert t1.prob_b_better > 0.99
    assert c.overall.n_pairs == 150 and c.overall.task == "overall"


def test_compare_unpaired_falls_back_to_barnard_and_correction_matters() -> None:
    a = {"t1": {s: s < 30 for s in range(50)}, "t2": {s: s < 30 for s in range(50)}}
    b = {"t1": {100 + s: s < 40 for s in range(50)}, "t2": {100 + s: s < 30 for s in range(50)}}
    raw = C.compare(a, b, correction="none")
    assert raw.tasks[0].test == "barnard" and raw.tasks[0].p_mcnemar is None
    p1 = raw.tasks[0].p_value
    assert p1 == pytest.approx(S.barnard_pvalue(30, 50, 40, 50))
    assert 0.025 < p1 < 0.05  # significant alone ...
    assert raw.tasks[0].verdict == "better"
    holm = C.compare(a, b, correction="holm")
    assert holm.tasks[0].p_adjusted == pytest.approx(min(1.0, 2 * p1))  # ... but not after Holm over 2 tasks
    assert holm.tasks[0].verdict == "no significant difference"


def test_compare_rejects_disjoint_tasks() -> None:
    with pytest.raises(ValueError, match="share no task"):
        C.compare({"x": {0: True}}, {"y": {0: True}})


def _paired(cells: tuple[int, int, int, int]) -> tuple[dict, dict]:
    """One task whose paired episodes fall into (both, only A, only B, neither) in that order."""
    pairs = [(True, True)] * cells[0] + [(True, False)] * cells[1] + [(False, True)] * cells[2] + \
        [(False, False)] * cells[3]
    return ({"t": {s: x for s, (x, _) in enumerate(pairs)}}, {"t": {s: y for s, (_, y) in enumerate(pairs)}})


def test_compare_reports_the_paired_interval_and_a_noninferiority_verdict() -> None:
    a, b = _paired((59, 6, 16, 80))
    c = C.compare(a, b, margin=0.10)
    assert c.overall.diff_interval == pytest.approx(S.paired_difference_interval(59, 6, 16, 80))
    assert c.noninferiority == "non-inferior" and c.to_dict()["noninferiority"] == "non-inferior"
    assert "+6.2 pp" in (c.overall.interval_line() or "") and "non-inferior" in (c.noninferiority_line() or "")
    # B a little worse on many pairs is still within 10 points; on 6 pairs the same rates decide nothing; far worse
    # on many pairs is inferior
    assert C.compare(*_paired((150, 12, 4, 34)), margin=0.10).noninferiority == "non-inferior"
    assert C.compare(*_paired((3, 3, 0, 0)), margin=0.10).noninferiority == "undetermined"
    assert C.compare(*_paired((50, 80, 5, 65)), margin=0.10).noninferiority == "inferior"
    assert C.compare(a, b).noninferiority is None and C.compare(a, b).noninferiority_line() is None


def test_noninferiority_needs_pairs_and_a_margin_in_range() -> None:
    a = {"t": {s: s < 30 for s in range(50)}}
    b = {"t": {100 + s: s < 30 for s in range(50)}}
    assert C.compare(a, b).overall.diff_interval is None
    with pytest.raises(ValueError, match="same --seed"):
        C.compare(a, b, margin=0.1)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        C.compare(a, a, margin=10)


def test_paired_difference_interval_matches_newcombe_method_10() -> None:
    # Cavo et al. (2012) as worked by Fagerland, Lydersen & Laake (2017), Newcombe square-and-add:
    # -0.0621 (-0.1186 to -0.0046) for row minus column; here B - A with A = rows.
    lo, hi = S.paired_difference_interval(59, 6, 16, 80)
    assert (lo, hi) == pytest.approx((0.0046, 0.1186), abs=5e-5)
    lo, hi = S.paired_difference_interval(59, 16, 6, 80)  # swapping the arms mirrors the interval
    assert (lo, hi) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    assert S.paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        S.paired_difference_interval(1, -1, 0, 0)


def test_paired_difference_interval_narrows_with_episodes_at_fixed_rates() -> None:
    widths = []
    for reps in (1, 2, 5, 10, 50):
        lo, hi = S.paired_difference_interval(0, 3 * reps, 0, 3 * reps)  # A 3/6, B 0/6, repeated
        assert lo <= -0.5 <= hi
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)


def test_clustered_bootstrap_difference() -> None:
    # Three training seeds crossed with 30 initial states on 2 tasks; B gains 10 of 30 states on every seed.
    pairs = {(s, t, i): (i < 10, i < 20) for s in range(3) for t in ("x", "y") for i in range(30)}
    b = S.clustered_bootstrap_difference(pairs, replicates=2000, seed=3)
    assert b.estimate == pytest.approx(1 / 3) and (b.clusters, b.items) == (3, 60)
    assert b.interval[0] > 0 and b.p_value < 0.01
    assert S.clustered_bootstrap_difference(pairs, replicates=2000, seed=3) == b  # seeded: reproducible
    # A seed that disagrees widens the interval beyond what the episodes alone would give.
    split = {k: (a, bb if k[0] != 1 else a and not bb) for k, (a, bb) in pairs.items()}
    w = S.clustered_bootstrap_difference(split, replicates=2000, seed=3)
    assert w.interval[1] - w.interval[0] > 2 * (b.interval[1] - b.interval[0])
    assert w.interval[0] < 0 < w.interval[1] and w.p_value > 0.05
    # with identical arms nothing differs
    same = S.clustered_bootstrap_difference({k: (a, a) for k, (a, _) in pairs.items()}, replicates=500)
    assert same.interval == (0.0, 0.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="at least one pair"):
        S.clustered_bootstrap_difference({})


def test_compare_difficulty_groups_and_their_mean() -> None:
    """MT50 tasks of two groups: a pooled paired test per group and the paired difference of the mean of group means,
    where each group weighs the same whatever its number of tasks."""
    easy, hard = ("reach-v3", "door-open-v3", "button-press-v3"), ("assembly-v3",)
    a = {t: dict.fromkeys(range(10), False) for t in (*easy, *hard)}
    b = {t: {s: t in hard for s in range(10)} for t in (*easy, *hard)}  # B gains all 10 on hard, nothing on easy
    c = C.compare(a, b)
    assert [g.task for g in c.groups] == ["easy", "hard"]
    assert [(g.a_only, g.b_only, g.n_pairs) for g in c.groups] == [(0, 0, 30), (0, 10, 10)]
    assert c.groups[1].p_value == pytest.approx(S.mcnemar_exact_pvalue(0, 10))
    assert c.groups[1].p_adjusted == pytest.approx(min(1.0, 2 * c.groups[1].p_value))  # holm over the 2 groups
    assert c.overall.diff == pytest.approx(10 / 40)  # episode-weighted
    m = c.group_mean
    assert m is not None and m.estimate == pytest.approx(0.5) and m.items == 40  # (0 + 1) / 2: groups weigh the same
    assert m.interval == (0.5, 0.5) and m.p_value < 0.01  # every resample of this one-sided gain says the same
    assert c.group_mean_line().startswith("Mean of 2 group means, B - A: +50.0 pp, 95% +50.0 to +50.0")
    # one group only, or another suite: no group rows
    assert C.compare({"reach-v3": a["reach-v3"]}, {"reach-v3": b["reach-v3"]}).groups == []
    assert C.compare({"x": {0: True}}, {"x": {0: False}}).group_mean_line() is None


def test_weighted_bootstrap_is_the_weighted_mean() -> None:
    pairs = {(0, t, i): (False, t == "y" and i < 5) for t in ("x", "y") for i in range(10)}
    assert S.clustered_bootstrap_difference(pairs, replicates=200).estimate == pytest.approx(0.25)
    w = S.clustered_bootstrap_difference(pairs, replicates=200, weights={"x": 1.0, "y": 3.0})
    assert w.estimate == pytest.approx(0.375)  # (0 * 10 * 1 + 0.5 * 10 * 3) / (10 + 30)
