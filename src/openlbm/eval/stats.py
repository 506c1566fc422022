"""Statistics for success rates: intervals, Beta posteriors, exact two-sample tests, corrections, verdicts.

Everything here works on counts (``successes`` out of ``n`` episodes) or on per-episode outcomes keyed by the
episode's initial-state seed, so that two policies evaluated on the same starts can be compared *paired*.
See ``docs/evaluation.md`` for the reasoning and a worked example.

Paired differences: Newcombe's interval for two arms on the same starts, and a bootstrap over training runs crossed
with starts for when the runs themselves vary (:func:`clustered_bootstrap_difference`, NumPy).

Wilson intervals, Beta posteriors with integer parameters, Holm and Benjamini-Hochberg need only the standard
library; Clopper-Pearson, Barnard's, Fisher's and the exact McNemar test use SciPy (``pip install 'openlbm[stats]'``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

Verdict = Literal["better", "worse", "no significant difference"]
Correction = Literal["holm", "bh", "none"]
TestName = Literal["auto", "mcnemar", "barnard", "fisher"]
NonInferiority = Literal["non-inferior", "inferior", "undetermined"]

BARNARD_MAX_CELLS = 600 * 600
"""Above ``n_a * n_b`` cells Barnard's test (O(n_a n_b) tables per nuisance value) falls back to Fisher's."""


def _scipy_stats() -> Any:
    try:
        import scipy.stats
    except ImportError as e:  # pragma: no cover - scipy is in the dev/stats extras
        raise ImportError(
            "openlbm.eval.stats needs SciPy for exact tests and Clopper-Pearson intervals: "
            "pip install 'openlbm[stats]' (or `pip install scipy`)"
        ) from e
    return scipy.stats


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


# -- intervals -------------------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval; ``(0, 1)`` when ``n == 0``. Good coverage even at rates near 0 or 1."""
    _check_counts(successes, n)
    return _wilson(successes / n if n else 0.0, n, confidence)


def _wilson(p: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson score interval of rate ``p`` at sample size ``n`` (a real number: an effective size may be used)."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp round-off only: at p = 0 (or 1) the lower (upper) bound is exactly 0 (1).
    lo = 0.0 if p <= 0 else max(0.0, center - half)
    hi = 1.0 if p >= 1 else min(1.0, center + half)
    return lo, hi


def clopper_pearson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (conservative) Clopper-Pearson interval from Beta quantiles; ``(0, 1)`` when ``n == 0``."""
    _check_counts(successes, n)
    if n == 0:
        return 0.0, 1.0
    beta = _scipy_stats().beta
    a = 1 - confidence
    lo = 0.0 if successes == 0 else float(beta.ppf(a / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - a / 2, successes + 1, n - successes))
    return lo, hi


# -- Beta posteriors -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BetaPosterior:
    """Posterior ``Beta(alpha, beta)`` of a success rate after a ``Beta(1, 1)`` (uniform) prior by default."""

    alpha: float
    """Prior alpha + successes."""
    beta: float
    """Prior beta + failures."""

    @classmethod
    def from_counts(cls, successes: int, n: int, prior: tuple[float, float] = (1.0, 1.0)) -> BetaPosterior:
        _check_counts(successes, n)
        return cls(prior[0] + successes, prior[1] + n - successes)

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def credible_interval(self, mass: float = 0.95) -> tuple[float, float]:
        """Equal-tailed credible interval."""
        dist = _scipy_stats().beta(self.alpha, self.beta)
        return float(dist.ppf((1 - mass) / 2)), float(dist.ppf((1 + mass) / 2))

    def pdf(self, x: Sequence[float]) -> list[float]:
        return [float(v) for v in _scipy_stats().beta.pdf(list(x), self.alpha, self.beta)]

    def prob_greater(self, other: BetaPosterior) -> float:
        """``P(p_self > p_other)`` for independent posteriors.

        Integer parameters use the exact finite sum (Evan Miller's formula, in log space); otherwise the integral
        ``int f_self(x) F_other(x) dx`` is computed by adaptive quadrature.
        """
        if all(float(v).is_integer() for v in (self.alpha, self.beta, other.alpha, other.beta)):
            return _prob_greater_exact(int(self.alpha), int(self.beta), int(other.alpha), int(other.beta))
        return prob_greater_quad(self, other)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _prob_greater_exact(a1: int, b1: int, a2: int, b2: int) -> float:
    """``P(X > Y)``, ``X ~ Beta(a1, b1)``, ``Y ~ Beta(a2, b2)``: ``P(Y > X) = sum_i B(a1+i, b1+b2) / ...``."""
    total = 0.0
    for i in range(a2):
        total += math.exp(
            _log_beta(a1 + i, b1 + b2) - math.log(b2 + i) - _log_beta(1 + i, b2) - _log_beta(a1, b1)
        )
    return min(1.0, max(0.0, 1.0 - total))


def prob_greater_quad(x: BetaPosterior, y: BetaPosterior) -> float:
    """``P(X > Y) = int_0^1 f_X(t) F_Y(t) dt`` by ``scipy.integrate.quad`` (any real parameters)."""
    from scipy import integrate

    beta = _scipy_stats().beta
    val, _ = integrate.quad(lambda t: beta.pdf(t, x.alpha, x.beta) * beta.cdf(t, y.alpha, y.beta), 0, 1, limit=200)
    return min(1.0, max(0.0, float(val)))


# -- a rate, summarized ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RateEstimate:
    """A success rate with its 95% intervals and Beta(1,1) posterior summary (what ``summary.json`` stores)."""

    successes: int
    n: int
    rate: float
    wilson: tuple[float, float]
    clopper_pearson: tuple[float, float]
    posterior_mean: float
    credible: tuple[float, float]

    @property
    def posterior(self) -> BetaPosterior:
        return BetaPosterior.from_counts(self.successes, self.n)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RateEstimate:
        return estimate(int(d["successes"]), int(d["n"]))


def estimate(successes: int, n: int, confidence: float = 0.95) -> RateEstimate:
    """Summarize ``successes`` out of ``n``; the rate of ``n == 0`` is reported as NaN."""
    post = BetaPosterior.from_counts(successes, n)
    return RateEstimate(
        successes=int(successes),
        n=int(n),
        rate=successes / n if n else float("nan"),
        wilson=wilson_interval(successes, n, confidence),
        clopper_pearson=clopper_pearson_interval(successes, n, confidence),
        posterior_mean=post.mean,
        credible=post.credible_interval(confidence),
    )


@dataclass(frozen=True)
class MeanOfRates:
    """The unweighted mean of several groups' success rates (every group counts the same, whatever its number of
    episodes: how Meta-World MT50 results are averaged over difficulty groups), with a Wilson interval at Kish's
    effective sample size. The mean is a weighted proportion whose episodes in group ``g`` weigh ``1 / (G n_g)``,
    so ``n_eff = 1 / sum(w^2) = G^2 / sum_g(1 / n_g)``: equal to the episode count when groups are equal."""

    rate: float
    n_eff: float
    groups: int
    wilson: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "n_eff": self.n_eff, "groups": self.groups, "wilson": list(self.wilson)}


def mean_of_rates(rates: Sequence[RateEstimate], confidence: float = 0.95) -> MeanOfRates:
    """:class:`MeanOfRates` of the groups with at least one episode (NaN rate when none has)."""
    used = [r for r in rates if r.n > 0]
    if not used:
        return MeanOfRates(float("nan"), 0.0, 0, (0.0, 1.0))
    rate = sum(r.rate for r in used) / len(used)
    n_eff = len(used) ** 2 / sum(1 / r.n for r in used)
    return MeanOfRates(rate, n_eff, len(used), _wilson(rate, n_eff, confidence))


# -- exact tests -----------------------------------------------------------------------------------------------------
def barnard_pvalue(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Barnard's exact (unconditional) test of ``p_a == p_b``; Fisher's beyond ``BARNARD_MAX_CELLS``."""
    _check_counts(k_a, n_a)
    _check_counts(k_b, n_b)
    if n_a == 0 or n_b == 0:
        return 1.0
    if (n_a + 1) * (n_b + 1) > BARNARD_MAX_CELLS:
        return fisher_pvalue(k_a, n_a, k_b, n_b)
    # Rows: success/failure, columns: policy A/B (scipy conditions on column totals).
    # scipy's optimiser (shgo) logs its bounds on the root logger at INFO on every call: keep it out of our output
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        res = _scipy_stats().barnard_exact([[k_a, k_b], [n_a - k_a, n_b - k_b]], alternative="two-sided")
    finally:
        root.setLevel(level)
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else min(1.0, p)


def fisher_pvalue(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Fisher's exact (conditional) test of ``p_a == p_b``."""
    _check_counts(k_a, n_a)
    _check_counts(k_b, n_b)
    if n_a == 0 or n_b == 0:
        return 1.0
    res = _scipy_stats().fisher_exact([[k_a, k_b], [n_a - k_a, n_b - k_b]], alternative="two-sided")
    return min(1.0, float(res.pvalue))


def mcnemar_exact_pvalue(a_only: int, b_only: int) -> float:
    """Exact McNemar (sign) test on discordant pairs: ``a_only`` pairs where only A succeeded, ``b_only`` only B.

    Under "no difference" each discordant pair goes either way with probability 1/2 (concordant pairs carry no
    information about the difference), so the p-value is a two-sided binomial test of ``b_only`` of
    ``a_only + b_only`` at 1/2.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only}, {b_only}")
    if a_only + b_only == 0:
        return 1.0
    return min(1.0, float(_scipy_stats().binomtest(b_only, a_only + b_only, 0.5).pvalue))


# -- paired differences ----------------------------------------------------------------------------------------------
def paired_difference_interval(
    both: int, a_only: int, b_only: int, neither: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for ``p_B - p_A`` from paired outcomes: Newcombe's (1998) method 10, square-and-add of the two
    Wilson intervals with the pairs' correlation (its ``phi`` corrected as in the paper: positive values shrunk by
    ``n/2``). ``(-1, 1)`` when there are no pairs. Unlike a test that fails to reject, its width shows how little a
    few episodes say, which is what a non-inferiority decision needs."""
    cells = (both, a_only, b_only, neither)
    if min(cells) < 0:
        raise ValueError(f"paired counts must be >= 0, got {cells}")
    n = sum(cells)
    if n == 0:
        return -1.0, 1.0
    pa, pb = (both + a_only) / n, (both + b_only) / n
    la, ua = wilson_interval(both + a_only, n, confidence)
    lb, ub = wilson_interval(both + b_only, n, confidence)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - a_only * b_only
        phi = (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(margins)
    diff = pb - pa
    lo = diff - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    hi = diff + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return max(-1.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class BootstrapDifference:
    """A paired success difference ``B - A`` with a percentile interval from a two-level bootstrap."""

    estimate: float
    interval: tuple[float, float]
    p_value: float
    """Two-sided bootstrap p-value of "no difference": twice the smaller tail share of replicates at or beyond 0."""
    clusters: int
    items: int
    replicates: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": list(self.interval)}


def clustered_bootstrap_difference(
    pairs: Mapping[tuple[Any, Any, Any], tuple[bool, bool]],
    confidence: float = 0.95,
    replicates: int = 4000,
    seed: int = 0,
    weights: Mapping[Any, float] | None = None,
) -> BootstrapDifference:
    """Difference ``mean(B) - mean(A)`` over ``pairs`` keyed ``(cluster, stratum, item)`` -> ``(A ok, B ok)``,
    with a percentile interval from a bootstrap over both sources of variation.

    Clusters are the units of replication (training seeds: each is one training run per arm); items (initial
    states) are crossed with them, the same items in every cluster. Each replicate draws clusters with
    replacement and, independently, items with replacement within each stratum (task), so both the run-to-run
    spread and the choice of initial states widen the interval; strata keep their sizes. The result is a pure
    function of ``pairs`` and ``seed`` (a report rebuilt from the same records prints the same numbers).
    ``weights`` (stratum -> weight of each of its items) makes it a weighted mean, e.g. MT50's mean of difficulty-group
    means; every item weighs the same without it."""
    import numpy as np

    if not pairs:
        raise ValueError("clustered_bootstrap_difference needs at least one pair")
    clusters = sorted({k[0] for k in pairs})
    strata: dict[Any, list[Any]] = {}
    for stratum, item in sorted({k[1:] for k in pairs}):
        strata.setdefault(stratum, []).append(item)
    columns = [(s, i) for s, items in strata.items() for i in items]
    col = {c: j for j, c in enumerate(columns)}
    diff = np.full((len(clusters), len(columns)), np.nan)
    for (c, s, i), (a, b) in pairs.items():
        diff[clusters.index(c), col[(s, i)]] = float(b) - float(a)
    rng = np.random.default_rng(seed)
    cl = rng.integers(0, len(clusters), size=(replicates, len(clusters)))
    cols = []
    start = 0
    for items in strata.values():
        cols.append(start + rng.integers(0, len(items), size=(replicates, len(items))))
        start += len(items)
    it = np.concatenate(cols, axis=1)
    w_col = np.array([1.0 if weights is None else float(weights[st]) for st, _ in columns])
    picked = diff[cl[:, :, None], it[:, None, :]]  # [R, clusters, items]
    w = np.where(np.isnan(picked), 0.0, w_col[it][:, None, :])  # [R, clusters, items]: the resampled items' weights
    with np.errstate(invalid="ignore"):
        # [R, clusters, items] -> [R, clusters * items] -> [R]: the weighted mean of each replicate
        reps = np.nansum((picked * w).reshape(replicates, -1), axis=1) / w.reshape(replicates, -1).sum(axis=1)
        full = np.where(np.isnan(diff), 0.0, w_col[None, :])  # [clusters, items]
        est = float(np.nansum(diff * full) / full.sum())
    reps = reps[np.isfinite(reps)]
    tail = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.quantile(reps, [tail, 1 - tail]))
    below, above = (np.sum(reps <= 0) + 1) / (len(reps) + 1), (np.sum(reps >= 0) + 1) / (len(reps) + 1)
    return BootstrapDifference(
        estimate=est, interval=(lo, hi), p_value=float(min(1.0, 2 * min(below, above))),
        clusters=len(clusters), items=len(columns), replicates=int(len(reps)),
    )


# -- multiple comparisons --------------------------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (controls the family-wise error rate)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values (controls the false discovery rate)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for pos, i in enumerate(order):
        rank = m - pos  # 1-based rank in ascending order
        running = min(running, pvalues[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def adjust(pvalues: Sequence[float], correction: Correction) -> list[float]:
    if correction == "holm":
        return holm(pvalues)
    if correction == "bh":
        return benjamini_hochberg(pvalues)
    if correction == "none":
        return [float(p) for p in pvalues]
    raise ValueError(f"correction must be 'holm', 'bh' or 'none', got {correction!r}")


def verdict(rate_a: float, rate_b: float, p_value: float, alpha: float) -> Verdict:
    """B relative to A: ``better``/``worse`` when significant at ``alpha``, else ``no significant difference``."""
    if p_value < alpha and rate_b != rate_a:
        return "better" if rate_b > rate_a else "worse"
    return "no significant difference"


def noninferiority_verdict(interval: tuple[float, float], margin: float) -> NonInferiority:
    """B against A given an interval of ``p_B - p_A`` and a margin (0.10 = 10 points): ``non-inferior`` when the
    lower bound is above ``-margin``, ``inferior`` when the upper bound is below it, ``undetermined`` otherwise
    (too few episodes or seeds to decide either way). A test that fails to reject is never read as "not worse"."""
    if not 0 < margin < 1:
        raise ValueError(f"the non-inferiority margin is a success-rate difference in (0, 1), got {margin}")
    lo, hi = interval
    return "non-inferior" if lo > -margin else "inferior" if hi < -margin else "undetermined"


# -- outcomes of one evaluation, as compared -------------------------------------------------------------------
Outcomes = Mapping[str, Mapping[int, bool]]
"""task -> {initial-state seed -> success}."""
