"""The mechanism verdict on simulated data with known mechanisms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from escapestat.stats._stability import Q_END, Q_MID, Q_MID_STEP, trend
from escapestat.stats._survival import describe
from escapestat.stats._verdict import MIN_N, mechanism


def test_exponential_escapes_are_activated():
    rng = np.random.default_rng(1)
    t = rng.exponential(200.0, 300)
    budget = 600.0  # ~5% censored
    s = describe(np.minimum(t, budget), (t < budget).astype(int), seed=1)
    assert s.verdict == "activated", s.verdict_reason


def test_narrow_weibull_times_are_deterministic():
    rng = np.random.default_rng(2)
    t = 1000.0 * rng.weibull(6.0, 200)
    s = describe(t, np.ones_like(t, dtype=int), seed=2)
    assert s.verdict == "deterministic" and s.weibull_shape_ci[0] >= 2


def _trapped(rng, n: int, rise: float, q0: float = 0.05) -> pd.DataFrame:
    """n replicas censored at 4000 whose order parameter went q0 → q0 + rise (± noise)
    between the check at 2000 and the budget."""
    mid = q0 + rng.normal(0, 0.01, n)
    return pd.DataFrame({"duration": 4000.0, "event": 0, Q_MID: mid, Q_MID_STEP: 2000.0,
                         Q_END: mid + rise + rng.normal(0, 0.01, n)})


def test_no_escapes_and_a_flat_order_parameter_is_absorbing_with_the_rate_bound():
    rows = _trapped(np.random.default_rng(0), 40, rise=0.0)
    s = describe(rows["duration"], rows["event"], trend=trend(rows, 0.5))
    assert s.verdict == "absorbing", s.verdict_reason
    assert "no escapes in 40 replicas" in s.verdict_reason
    assert "the order parameter went" in s.verdict_reason
    assert f"{s.rate_ci[1]:.3g}" in s.verdict_reason


def test_no_escapes_while_the_order_parameter_climbs_is_not_reached_with_a_budget():
    """0.05 → 0.30 over the last 2000 steps: 0.5 is 2000 steps further on, so the run
    says so and suggests 1.5 × 6000 = 9000 steps."""
    rows = _trapped(np.random.default_rng(1), 8, rise=0.25)
    t = trend(rows, 0.5)
    assert t.moving and t.reach == pytest.approx(6000, rel=0.1)
    s = describe(rows["duration"], rows["event"], trend=t)
    assert s.verdict == "not reached", s.verdict_reason
    assert "still rising" in s.verdict_reason
    assert f"--max-steps {t.suggested_budget():,}" in s.verdict_reason
    assert t.suggested_budget() == pytest.approx(9000, rel=0.12)


def test_a_drift_too_slow_to_matter_within_ten_budgets_is_still_absorbing():
    rows = _trapped(np.random.default_rng(2), 40, rise=0.01)  # 0.45 to go at 0.01 per 2000
    t = trend(rows, 0.5)
    assert t.pvalue < 0.05 and not t.moving and t.reach > 10 * 4000
    assert describe(rows["duration"], rows["event"], trend=t).verdict == "absorbing"


def test_no_escapes_without_a_record_of_the_order_parameter_is_only_not_reached():
    s = describe(np.full(40, 5000.0), np.zeros(40, dtype=int))
    assert s.verdict == "not reached"
    assert "nothing recorded shows whether the state is stable" in s.verdict_reason


def test_absorbing_and_shape_verdicts_need_a_minimum_n():
    rows = _trapped(np.random.default_rng(3), 3, rise=0.0)
    s = describe(rows["duration"], rows["event"], trend=trend(rows, 0.5))
    assert s.verdict == "inconclusive" and f"at least {MIN_N} replicas" in s.verdict_reason
    t = np.array([1000.0, 1001.0, 1002.0, 999.0])  # two Lightning runs gave shape 75.6
    s = describe(t, np.ones(4, dtype=int))
    assert s.verdict == "inconclusive" and f"needs at least {MIN_N}" in s.verdict_reason


def test_grid_data_from_an_exponential_are_not_called_deterministic():
    """Escape times rounded up to a check grid (as the engine records them)."""
    rng = np.random.default_rng(3)
    t = np.ceil(rng.exponential(100.0, 300) / 10) * 10
    s = describe(t, np.ones_like(t, dtype=int), seed=3, grid=10)
    assert s.verdict in ("activated", "inconclusive") and s.verdict != "deterministic"


@pytest.mark.parametrize("args, kind, words", [
    ((50, 30, (0.8, 1.3), 0.2), "activated", "holds 1"),
    ((50, 30, (0.8, 1.3), 0.01), "inconclusive", "KS test rejects"),
    # One 5% test of "exponential" in two halves (Bonferroni), not two 5% tests:
    ((50, 30, (0.8, 1.3), 0.03), "activated", "KS p 0.03"),
    ((50, 30, (1.03, 1.6), 0.3), "activated", "97.5% CI [0.998"),
    ((50, 30, (1.2, 1.9), 0.3), "inconclusive", "above 1 but not ≥ 2"),
    ((50, 30, (0.4, 0.8), 0.3), "inconclusive", "below 1"),
    ((50, 30, (2.0, 3.5), 0.0), "deterministic", "drift-set"),
    ((50, 1, (float("nan"), float("nan")), float("nan")), "inconclusive", "needs at least"),
    ((50, 10, (float("nan"), float("nan")), float("nan")), "inconclusive", "too few"),
    ((50, 0, (float("nan"), float("nan")), float("nan")), "not reached", "no escapes"),
])
def test_the_rule_branch_by_branch(args, kind, words):
    v = mechanism(*args)
    assert v.mechanism == kind and words in v.reason


def test_verdict_is_in_fit_json(cli, ladder_csv):
    import json
    code, out, err = cli("fit", ladder_csv, "--group-col", "temperature", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert all(g["verdict"] in ("activated", "inconclusive") for g in groups)
    assert all(g["verdict_reason"] for g in groups)


@pytest.mark.slow
def test_on_the_check_grid_exponential_is_activated_and_weibull6_deterministic():
    """Times rounded up to the grid, as the engine records them, at τ/grid = 3, 10, 30
    (n 256): the shape is fitted interval-censored, so exponential escape is activated
    (fitted as exact, 0.6 called 100% / 76% / 18% of them inconclusive:
    ``benchmarks/verdict_grid.py``) and a Weibull-6 delay deterministic."""
    rng = np.random.default_rng(20261203)
    activated = {}
    for ratio in (3, 10, 30):
        kinds = []
        for i in range(50):
            t = np.ceil(rng.exponential(ratio * 100.0, 256) / 100) * 100
            kinds.append(describe(t, np.ones(256, dtype=int), grid=100, n_bootstrap=199,
                                  seed=i).verdict)
        activated[ratio] = kinds.count("activated") / len(kinds)
        for i in range(5):
            t = np.ceil(ratio * 100.0 * rng.weibull(6.0, 256) / 100) * 100
            s = describe(t, np.ones(256, dtype=int), grid=100, n_bootstrap=199, seed=i)
            assert s.verdict == "deterministic", (ratio, s.verdict_reason)
    assert np.mean(list(activated.values())) >= 0.9, activated
    assert min(activated.values()) >= 0.85, activated
