"""The group-sequential sign test: stops early on big effects, not on none, and keeps its alpha."""

from __future__ import annotations

import numpy as np
import pytest

from openlbm.eval.sequential import SequentialSignTest, run_sequential, spent_alpha


def test_spending_functions() -> None:
    assert spent_alpha(1.0, 0.05, "obrien_fleming") == pytest.approx(0.05)
    assert spent_alpha(1.0, 0.05, "pocock") == pytest.approx(0.05)
    assert spent_alpha(0.0, 0.05, "pocock") == 0.0
    # O'Brien-Fleming spends almost nothing early: 2 - 2 Phi(1.96 / sqrt(0.25)) = 2 - 2 Phi(3.92) ~ 8.9e-5.
    assert spent_alpha(0.25, 0.05, "obrien_fleming") == pytest.approx(8.86e-5, rel=1e-2)
    with pytest.raises(ValueError, match="spending"):
        spent_alpha(0.5, 0.05, "linear")  # type: ignore[arg-type]


def test_stops_early_on_lopsided_case() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.3
    b = rng.random(400) < 0.9
    t = run_sequential(a, b, look_every=20)
    assert t.decided and t.verdict == "better"
    assert t.looks[-1].pairs < 400  # decided before using all planned pairs
    rev = run_sequential(b, a, look_every=20)
    assert rev.verdict == "worse" and rev.looks[-1].pairs == t.looks[-1].pairs


def test_does_not_stop_on_balanced_case() -> None:
    a = [True, False] * 100
    b = [False, True] * 100  # every pair discordant, wins split exactly evenly
    t = run_sequential(a, b, look_every=20)
    assert not t.decided and t.verdict == "no significant difference"
    assert t.looks[-1].pairs == 200 and len(t.looks) == 10


def test_hand_checked_single_look() -> None:
    # One look at t = 1 is the plain two-sided sign test on 10 discordant pairs: rejecting at |2S - 10| >= 8
    # (S <= 1 or S >= 9) has null mass 2 * 11 / 1024 = 0.021 <= 0.05, while >= 6 would have 2 * 56 / 1024 = 0.109.
    t = SequentialSignTest(planned_pairs=10)
    look = t.update([False] * 9 + [True], [True] * 9 + [False])
    assert look.rejected and look.boundary == 8 and look.b_wins == 9
    assert look.alpha_spent == pytest.approx(22 / 1024)


def test_type_one_error_is_controlled() -> None:
    rng = np.random.default_rng(7)
    rejections, reps = 0, 1500
    for _ in range(reps):
        p = rng.uniform(0.2, 0.9)
        t = run_sequential(rng.random(200) < p, rng.random(200) < p, look_every=25, spending="pocock")
        assert t.looks[-1].alpha_spent <= 0.05 + 1e-12  # exact, by construction
        rejections += t.decided
    # Binomial(1500, <=0.05): mean <= 75, sd ~ 8.4; allow 3 sd.
    assert rejections <= 100


def test_finished_test_refuses_more_data() -> None:
    t = run_sequential([False] * 30, [True] * 30, look_every=10, spending="pocock")
    assert t.decided
    with pytest.raises(RuntimeError, match="finished"):
        t.update([True], [False])
