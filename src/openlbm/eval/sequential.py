"""Group-sequential paired comparison: stop evaluating as soon as the difference is decided.

The data are paired episodes (same initial state for A and B). Only *discordant* pairs (one policy succeeds, the
other fails) carry information about the difference; under H0 "no difference" each discordant pair is a fair coin
(B wins with probability 1/2), independently of which pairs happen to be discordant. So, conditional on the
discordance pattern, ``S_j`` = number of B-wins among the ``d_j`` discordant pairs seen at look ``j`` is a fair
binomial random walk, and its exact null distribution is computable.

At each look ``j`` (information fraction ``t_j`` = paired episodes so far / planned), the test rejects H0 when
``|2 S_j - d_j| >= c_j``. The boundary ``c_j`` is the smallest one whose *cumulative* exact null probability of
having crossed at any look so far stays within the spending function ``alpha(t_j)``:

- ``obrien_fleming`` (Lan-DeMets): ``alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))`` spends almost nothing early,
  so the final look keeps nearly the full ``alpha`` (default).
- ``pocock`` (Lan-DeMets): ``alpha(t) = alpha * ln(1 + (e - 1) t)`` spends evenly, stopping earlier on big effects.

Boundaries depend only on past discordance counts, which are ancillary under H0, so the two-sided type I error is
at most ``alpha`` whatever the looks, and the test stops only to declare a difference (no futility stop): when the
planned pairs run out undecided the verdict is "no significant difference".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np

from openlbm.eval.stats import Verdict

Spending = Literal["obrien_fleming", "pocock"]


def spent_alpha(t: float, alpha: float, spending: Spending) -> float:
    """Cumulative type I error allowed at information fraction ``t`` in [0, 1]."""
    t = min(1.0, max(0.0, t))
    if t == 0.0:
        return 0.0
    if spending == "obrien_fleming":
        z = NormalDist().inv_cdf(1 - alpha / 2)
        return min(alpha, 2 - 2 * NormalDist().cdf(z / math.sqrt(t)))
    if spending == "pocock":
        return min(alpha, alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending must be 'obrien_fleming' or 'pocock', got {spending!r}")


def _binom_half_pmf(n: int) -> np.ndarray:
    """pmf of Binomial(n, 1/2) over 0..n (log-space, stable for large n)."""
    k = np.arange(n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    return np.exp(logc - n * math.log(2))


@dataclass
class Look:
    """One interim analysis."""

    pairs: int
    """Paired episodes seen so far."""
    discordant: int
    b_wins: int
    """Discordant pairs where only B succeeded."""
    boundary: int | None
    """Reject when ``|2 b_wins - discordant| >= boundary`` (``None``: no rejection possible yet)."""
    alpha_spent: float
    """Exact cumulative null probability of having stopped by this look."""
    rejected: bool


@dataclass
class SequentialSignTest:
    """Two-sided group-sequential exact sign test of B vs A on paired outcomes; feed looks with :meth:`update`."""

    planned_pairs: int
    """Paired episodes at the last look (information fraction 1)."""
    alpha: float = 0.05
    """Two-sided type I error of the whole procedure."""
    spending: Spending = "obrien_fleming"
    """Alpha-spending function (see module docstring)."""
    looks: list[Look] = field(default_factory=list)
    _pairs: int = 0
    _disc: int = 0
    _wins: int = 0
    # Null sub-distribution of S (B-wins) over paths that have not stopped yet, indexed 0..discordant.
    _alive: np.ndarray = field(default_factory=lambda: np.ones(1))
    _spent: float = 0.0

    def __post_init__(self) -> None:
        if self.planned_pairs < 1:
            raise ValueError(f"planned_pairs must be >= 1, got {self.planned_pairs}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        spent_alpha(0.5, self.alpha, self.spending)  # validates the name

    @property
    def decided(self) -> bool:
        return bool(self.looks and self.looks[-1].rejected)

    @property
    def finished(self) -> bool:
        return self.decided or self._pairs >= self.planned_pairs

    @property
    def verdict(self) -> Verdict:
        if not self.decided:
            return "no significant difference"
        return "better" if 2 * self._wins > self._disc else "worse"

    def update(self, a_success: Sequence[bool], b_success: Sequence[bool]) -> Look:
        """Add a batch of new paired outcomes (same initial states, same order) and analyse."""
        if self.finished:
            raise RuntimeError("the sequential test already finished; start a new one")
        if len(a_success) != len(b_success):
            raise ValueError(f"paired outcomes differ in length: {len(a_success)} vs {len(b_success)}")
        new_disc = [bool(x) != bool(y) for x, y in zip(a_success, b_success, strict=True)]
        new_wins = sum(1 for x, y in zip(a_success, b_success, strict=True) if bool(y) and not bool(x))
        self._pairs += len(a_success)
        step = sum(new_disc)
        self._disc += step
        self._wins += new_wins
        # Convolve the surviving null mass with the new fair coin flips: S_j = S_{j-1} + Binomial(step, 1/2).
        self._alive = np.convolve(self._alive, _binom_half_pmf(step))
        allowed = spent_alpha(self._pairs / self.planned_pairs, self.alpha, self.spending)
        boundary, cross_mass = self._boundary(allowed - self._spent)
        rejected = boundary is not None and abs(2 * self._wins - self._disc) >= boundary
        if boundary is not None:
            s = np.arange(self._disc + 1)
            self._alive = np.where(np.abs(2 * s - self._disc) >= boundary, 0.0, self._alive)
            self._spent += cross_mass
        look = Look(self._pairs, self._disc, self._wins, boundary, self._spent, rejected)
        self.looks.append(look)
        return look

    def _boundary(self, budget: float) -> tuple[int | None, float]:
        """Smallest ``c`` with null mass of ``{|2S - d| >= c}`` (among surviving paths) <= ``budget``."""
        d = self._disc
        s = np.arange(d + 1)
        dist = np.abs(2 * s - d)  # [d + 1]
        best: tuple[int | None, float] = (None, 0.0)
        # Walk c down from the most extreme value; the crossing mass only grows as c shrinks.
        for c in range(d, 0, -1):
            if (d - c) % 2:
                continue  # |2S - d| has the parity of d
            mass = float(self._alive[dist >= c].sum())
            if mass > budget + 1e-12:
                break
            best = (c, mass)
        return best


def run_sequential(
    a_success: Sequence[bool],
    b_success: Sequence[bool],
    *,
    look_every: int,
    planned_pairs: int | None = None,
    alpha: float = 0.05,
    spending: Spending = "obrien_fleming",
) -> SequentialSignTest:
    """Replay paired outcomes in order, analysing every ``look_every`` pairs; stops at the first rejection."""
    if look_every < 1:
        raise ValueError(f"look_every must be >= 1, got {look_every}")
    n = len(a_success)
    test = SequentialSignTest(planned_pairs or n, alpha=alpha, spending=spending)
    for start in range(0, n, look_every):
        if test.finished:
            break
        test.update(a_success[start : start + look_every], b_success[start : start + look_every])
    return test
