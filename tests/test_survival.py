import math

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import restricted_mean_survival_time

from escapestat.survival import (
    ExponentialRate,
    describe,
    kaplan_meier,
    poisson_check,
    poisson_rate_ci,
    restricted_mean,
    weibull_shape,
)
from escapestat.synthetic import censored_exponential


def test_garwood_matches_known_values():
    # D = 0: upper bound is -ln(0.025) = 3.689 events; D = 10: [4.795, 18.39] (Garwood tables).
    assert poisson_rate_ci(0, 1.0) == (0.0, pytest.approx(3.6889, abs=1e-3))
    lo, hi = poisson_rate_ci(10, 2.0)
    assert lo == pytest.approx(4.7954 / 2, abs=1e-3) and hi == pytest.approx(18.390 / 2, abs=1e-3)


@pytest.mark.parametrize("budget_factor", [np.inf, 2.0, 0.5, 0.1])
def test_rate_recovery_under_censoring(budget_factor):
    """k = D / Σt recovers the true rate at 0%, ~14%, ~61% and ~90% censoring (±3 SE)."""
    rate, n = 2e-3, 4000
    rng = np.random.default_rng(11)
    t, e = censored_exponential(rate, n, budget_factor / rate, rng)
    fit = ExponentialRate().fit(t, e)
    se = rate / math.sqrt(max(e.sum(), 1))
    assert abs(fit.rate_ - rate) < 3 * se
    assert fit.rate_ci_[0] < rate < fit.rate_ci_[1]
    assert fit.tau_ == pytest.approx(1 / fit.rate_)


def test_zero_events_gives_upper_bound_only():
    fit = ExponentialRate().fit(np.full(50, 1000.0), np.zeros(50))
    assert fit.rate_ == 0 and fit.rate_ci_[0] == 0
    assert fit.rate_ci_[1] == pytest.approx(3.6889 / 50_000, rel=1e-3)
    assert fit.tau_ == math.inf and fit.tau_ci_[1] == math.inf


def test_kaplan_meier_and_rmst_match_lifelines():
    rng = np.random.default_rng(5)
    t, e = censored_exponential(1e-2, 300, 150.0, rng)
    t = np.round(t)  # ties
    t[t == 0] = 1
    times, surv = kaplan_meier(t, e)
    kmf = KaplanMeierFitter().fit(t, e)
    ref = kmf.survival_function_.iloc[1:, 0].to_numpy()
    np.testing.assert_allclose(surv, ref, rtol=1e-12)
    assert restricted_mean(times, surv, 150.0) == pytest.approx(
        restricted_mean_survival_time(kmf, t=150.0), rel=1e-9
    )


def test_describe_exponential_is_poisson_like():
    rng = np.random.default_rng(7)
    t, e = censored_exponential(1e-3, 400, 1500.0, rng)
    s = describe(t, e, n_bootstrap=199, seed=1)
    assert s.n == 400 and s.events + s.censored == 400
    assert s.weibull_shape_ci[0] < 1 < s.weibull_shape_ci[1]
    assert s.poisson_pvalue > 0.05
    assert s.median == pytest.approx(math.log(2) / 1e-3, rel=0.15)
    assert s.median_ci[0] < s.median < s.median_ci[1]
    assert s.rmst_ci[0] < s.rmst < s.rmst_ci[1]
    # True RMST to the budget: (1 − exp(−k h)) / k.
    assert s.rmst == pytest.approx((1 - math.exp(-1.5)) / 1e-3, rel=0.05)


def test_deterministic_delay_is_flagged():
    """Narrow, drift-set escape times (Weibull shape ~ 10) must fail the Poisson check."""
    rng = np.random.default_rng(3)
    t = 3000 * rng.weibull(10.0, 200)
    e = np.ones(200, dtype=int)
    shape, (lo, hi) = weibull_shape(t, e)
    assert lo > 5 and shape == pytest.approx(10, rel=0.2)
    ks, p = poisson_check(t, e, n_bootstrap=199, rng=np.random.default_rng(0))
    assert p < 0.01 and ks > 0.2


def test_poisson_check_calibrated_under_administrative_censoring():
    """Under the null the bootstrap p-value is roughly uniform: ~5% below 0.05."""
    rng = np.random.default_rng(21)
    pvalues = []
    for _ in range(60):
        t, e = censored_exponential(1.0, 80, 1.0, rng)
        pvalues.append(poisson_check(t, e, n_bootstrap=99, rng=rng)[1])
    frac = np.mean(np.array(pvalues) < 0.05)
    assert frac <= 0.15  # 60 draws: 5% expected, binomial 99.9% bound ~ 0.15
    assert np.mean(pvalues) == pytest.approx(0.5, abs=0.12)


def test_median_not_reached():
    s = describe(np.full(20, 100.0), np.r_[np.ones(3), np.zeros(17)].astype(int), n_bootstrap=99)
    assert s.median is None and not s.median_reached
    assert s.rate_ci[0] > 0
