import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times, restricted_mean_survival_time

from escapestat.stats._survival import (
    ExponentialRate,
    KaplanMeierMedian,
    RestrictedMean,
    _censoring_law,
    describe,
    kaplan_meier,
    poisson_check,
    poisson_rate_ci,
    restricted_mean,
    summarize,
    weibull_shape,
)
from escapestat.stats._synthetic import censored_exponential


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


# --- KM median: rules at S = 1/2 and S = 0 (see KaplanMeierMedian) -------------------------


def test_median_of_one_escape_is_never_a_zero_width_interval():
    """One escape at 7: the KM drops to 0, where the band is undefined; upper not reached."""
    fit = KaplanMeierMedian().fit([7.0], [1])
    assert fit.median_ == 7.0 and fit.median_ci_ == (7.0, None)


def test_median_all_escaped_small_samples():
    # n = 3, escapes at 1, 2, 3: upper band at t = 2 is 0.774 > 1/2 and S(3) = 0.
    assert KaplanMeierMedian().fit([1.0, 2, 3], [1, 1, 1]).median_ci_ == (1.0, None)
    for n in range(1, 41):
        times = np.arange(1.0, n + 1)
        lo, hi = KaplanMeierMedian().fit(times, np.ones(n)).median_ci_
        assert lo is not None and lo <= math.ceil(n / 2)
        assert hi is None or hi < n  # never the time at which the KM reaches 0
    assert KaplanMeierMedian().fit(np.arange(1.0, 41), np.ones(40)).median_ci_[1] is not None


@pytest.mark.parametrize("censor_rest", [False, True])
def test_median_at_exactly_one_half_is_the_first_such_time(censor_rest):
    """S = 1/2 exactly (k of 2k escaped): the median is t_(k) for every n, not t_(k+1)."""
    for n in range(2, 301):
        events = np.ones(n, dtype=int)
        if censor_rest:
            events[(n + 1) // 2 :] = 0  # censored after the k-th escape: S(t_(k)) is still 1/2
        median = KaplanMeierMedian().fit(np.arange(1.0, n + 1), events).median_
        assert median == math.ceil(n / 2), n


def test_median_and_ci_match_lifelines_on_ordinary_data():
    """Continuous times, KM never at 0 or at exactly 1/2: same median and band as lifelines."""
    rng = np.random.default_rng(8)
    compared = 0
    for _ in range(150):
        n = int(rng.integers(10, 200))
        t, c = rng.exponential(1.0, n), rng.uniform(0.2, 3.0, n)
        d, e = np.minimum(t, c), (t <= c).astype(int)
        surv = kaplan_meier(d, e)[1]
        if e[np.argmax(d)] == 1 or np.min(np.abs(surv - 0.5)) < 1e-6:
            continue
        kmf = KaplanMeierFitter().fit(d, e)
        band = median_survival_times(kmf.confidence_interval_).to_numpy().ravel()
        ref = [float(kmf.median_survival_time_), *map(float, band)]
        fit = KaplanMeierMedian().fit(d, e)
        ours = [fit.median_, *fit.median_ci_]
        assert ours == [x if math.isfinite(x) else None for x in ref]
        compared += 1
    assert compared > 100


def test_median_ci_coverage_censored_exponential():
    """1000 datasets, n = 50, 30% censored at the budget; true median ln 2 (MC SE 0.007)."""
    rng = np.random.default_rng(50)
    budget, covered = -math.log(0.3), 0
    for _ in range(1000):
        lo, hi = KaplanMeierMedian().fit(*censored_exponential(1.0, 50, budget, rng)).median_ci_
        covered += lo is not None and lo <= math.log(2) and (hi is None or math.log(2) <= hi)
    assert 0.92 <= covered / 1000 <= 0.98


# --- RMST ---------------------------------------------------------------------------------


def test_rmst_variance_reduces_to_sample_variance_without_censoring():
    x = np.array([3.0, 1, 4, 1.5, 9, 2.6, 5])
    fit = RestrictedMean().fit(x, np.ones(x.size))
    assert fit.rmst_ == pytest.approx(x.mean()) and fit.horizon_ == 9
    assert fit.se_**2 == pytest.approx(x.var(ddof=1) / x.size, rel=1e-12)
    # R survival's print.survfit gives rmean 37.86, se 10.74 (no n/(n − 1)) for this sample.
    fit = RestrictedMean().fit([10, 15, 23, 30, 35, 52, 100], [1, 1, 1, 1, 1, 1, 0], 100)
    assert fit.rmst_ == pytest.approx(37.857, abs=1e-3)
    assert fit.se_ * math.sqrt(6 / 7) == pytest.approx(10.7389, abs=1e-4)
    assert 0 < fit.rmst_ci_[0] < fit.rmst_ < fit.rmst_ci_[1] < 100


@pytest.mark.parametrize("n, band", [(10, (0.93, 0.97)), (100, (0.93, 0.97))])
def test_rmst_ci_coverage_30pct_censoring(n, band):
    """True RMST to a fixed horizon h = budget is (1 − e^{−kh})/k; 2000 datasets (SE 0.005)."""
    rng = np.random.default_rng(1000 + n)
    budget = -math.log(0.3)
    truth, covered = 1 - math.exp(-budget), 0
    for _ in range(2000):
        lo, hi = RestrictedMean().fit(*censored_exponential(1.0, n, budget, rng), budget).rmst_ci_
        covered += lo <= truth <= hi
    assert band[0] <= covered / 2000 <= band[1]


# --- KS check: equivalence, memory, grid --------------------------------------------------


def _ks_all_times(durations, events):
    """The previous rule: both sides of KM at every distinct time against exp(−k t)."""
    times, surv = kaplan_meier(durations, events)
    model = np.exp(-events.sum() / durations.sum() * times)
    before = np.concatenate(([1.0], surv[:-1]))
    return max(np.abs(surv - model).max(), np.abs(before - model).max())


def test_ks_statistic_unchanged_from_all_distinct_times():
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(3, 60))
        t, c = rng.weibull(rng.uniform(0.5, 3), n), rng.uniform(0, rng.uniform(0.2, 4), n)
        if rng.random() < 0.3:
            c[rng.random(n) < 0.5] = 10.0  # a late budget: long flat KM tail
        d, e = np.minimum(t, c), (t <= c).astype(int)
        if e.sum():
            ks = poisson_check(d, e, n_bootstrap=1)[0]
            assert ks == pytest.approx(_ks_all_times(d, e), rel=1e-12)


def test_poisson_check_memory_is_linear_in_n():
    """Bootstrap replicates one at a time: peak ≪ n_bootstrap·n (the old (B, n) arrays)."""
    n = 20_000
    t, e = censored_exponential(1.0, n, 1.5, np.random.default_rng(0))
    tracemalloc.start()
    try:
        poisson_check(t, e, n_bootstrap=199, rng=np.random.default_rng(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 8 * n  # 6.4 MB; one (199, n) float array alone is 32 MB


def test_reverse_km_censoring_law():
    """Escapes at t only show C ≥ t: at t = 2 the censoring hazard is 2/3, not 2/5."""
    support, mass = _censoring_law(np.array([1.0, 2, 2, 2, 2, 5]), np.array([1, 1, 1, 0, 0, 1]))
    # Left beyond the last censoring time: 1/3, placed at the largest time (5), not at ∞.
    assert support.tolist() == [2.0, 5.0]
    np.testing.assert_allclose(mass, [2 / 3, 1 / 3], rtol=1e-12)


def test_reverse_km_is_lifelines_without_ties():
    """Continuous times: the censoring law is lifelines' reverse KM, mass for mass (the mass
    past the last censoring sits at the largest time)."""
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(8)
    t, c = rng.exponential(1.0, 80), rng.uniform(0, 2.0, 80)
    d, e = np.minimum(t, c), (t <= c).astype(int)
    support, mass = _censoring_law(d, e)
    reverse = KaplanMeierFitter().fit(d, 1 - e).survival_function_.iloc[:, 0]
    at = reverse.loc[support[:-1]].to_numpy()
    np.testing.assert_allclose(mass[:-1], -np.diff(np.r_[1.0, at]), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(mass[-1], at[-1], rtol=1e-12)


def test_poisson_check_calibrated_under_random_censoring():
    """Uniform censoring, 200 datasets (SE at 5% is 0.015; with mass at ∞ it was 1.7%)."""
    rng = np.random.default_rng(31)
    pvalues = []
    for _ in range(200):
        t, c = rng.exponential(1.0, 60), rng.uniform(0, 2.5, 60)
        pvalues.append(poisson_check(np.minimum(t, c), (t <= c).astype(int), 49, rng)[1])
    pvalues = np.array(pvalues)
    assert 0.02 <= np.mean(pvalues <= 0.05) <= 0.09  # B = 49: nominal 2/50 = 0.04
    assert 0.43 <= pvalues.mean() <= 0.57


def _grid_pvalues(n, datasets, tau, budget, grid, rng):
    """Exponential times in check units, recorded at the next check, censored at a budget."""
    pvalues = []
    for _ in range(datasets):
        t = np.ceil(rng.exponential(tau, n))
        e = (t <= budget).astype(int)
        pvalues.append(poisson_check(np.minimum(t, budget), e, 99, rng, grid=grid)[1])
    return np.array(pvalues)


def test_poisson_check_on_the_check_grid():
    """τ = 10 checks: with the grid, p-values are uniform; without it, a rejection."""
    rng = np.random.default_rng(12)
    p = _grid_pvalues(100, 200, 10.0, 20.0, 1.0, rng)
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09  # 200 datasets: SE of 5% is 0.015
    assert 0.12 <= np.mean(p <= 0.2) <= 0.28 and 0.12 <= np.mean(p > 0.8) <= 0.28
    assert np.mean(_grid_pvalues(256, 30, 10.0, 20.0, None, rng) <= 0.05) >= 0.9


def test_poisson_check_on_a_coarse_grid():
    """τ = half a check: the null must escape with the fitted per-check probability."""
    p = _grid_pvalues(100, 100, 0.5, 5.0, 1.0, np.random.default_rng(13))
    assert 0.38 <= p.mean() <= 0.62  # drawn at k = D / Σt instead, the mean p was 0.83


def test_grid_reaches_the_summary():
    t = np.ceil(np.random.default_rng(2).exponential(10.0, 60))
    df = pd.DataFrame({"duration": np.minimum(t, 20.0), "event": (t <= 20).astype(int)})
    (s,) = summarize(df, n_bootstrap=49, grid=1.0)
    assert s.ks_grid == 1.0 and s.as_dict()["ks_grid"] == 1.0
    plain = describe(df["duration"], df["event"], n_bootstrap=49)
    assert plain.ks_grid is None and plain.ks_statistic > s.ks_statistic
    with pytest.raises(Exception, match="grid"):
        poisson_check(df["duration"], df["event"], grid=0.0)


def test_a_median_without_an_upper_limit_says_why(cli, tmp_path):
    """10 of 18 escape by 100, 8 still trapped at 200: the median (90) is reached but the
    upper band never reaches ½ — censoring, said in the summary and in fit's table."""
    t = np.r_[np.arange(1, 11) * 10.0, np.full(8, 200.0)]
    e = np.r_[np.ones(10, int), np.zeros(8, int)]
    s = describe(t, e, n_bootstrap=49)
    assert s.median == 90 and s.median_ci[1] is None
    assert s.median_upper_note.startswith("censoring: 8 replica(s) still trapped")
    assert describe(np.arange(1, 9) * 10.0, np.ones(8, int), n_bootstrap=49
                    ).median_upper_note is None
    path = tmp_path / "t.csv"
    pd.DataFrame({"duration": t, "event": e}).to_csv(path, index=False)
    code, out, err = cli("fit", path)
    assert code == 0, err
    assert "no upper CI" in out and "censoring" in out


def test_no_falsely_certain_intervals():
    """RMST with no escape before the horizon h: μ ≤ h is sure, its lower limit is not
    estimable (never the point [h, h]); n tied escapes: the median's CI is the tied time,
    the order-statistic CI, not (t, ∞), while one escape alone has no upper limit."""
    from escapestat.stats._kaplan_meier import KaplanMeierMedian, RestrictedMean

    rm = RestrictedMean().fit(np.array([5.0]), np.array([0]))
    assert rm.rmst_ == 5.0 and rm.rmst_ci_ == (None, 5.0)
    late = RestrictedMean().fit(np.array([3.0, 4.0, 9.0, 9.0]), np.array([0, 0, 0, 1]))
    assert late.rmst_ == 9.0 and late.rmst_ci_ == (None, 9.0)  # the escape is at h itself
    tied = RestrictedMean().fit(np.full(6, 50.0), np.ones(6, dtype=int))
    assert tied.rmst_ci_ == (None, 50.0)
    assert KaplanMeierMedian().fit(np.full(6, 50.0), np.ones(6)).median_ci_ == (50.0, 50.0)
    assert KaplanMeierMedian().fit(np.array([7.0]), np.array([1])).median_ci_ == (7.0, None)
    # the binomial bound: with 2 tied escapes the step's survival may still be ≥ 0.84
    assert KaplanMeierMedian().fit(np.full(2, 50.0), np.ones(2)).median_ci_ == (50.0, None)


def test_km_median_ci_matches_r_on_lung_with_either_transform():
    """R's survfit(Surv(time, status) ~ 1, data = lung) gives median 310, 95% CI [285, 363]
    with its default conf.type = "log" (figures from an independent review run in R); the
    log(−log) band (escapestat's default, lifelines', R's conf.type = "log-log") gives
    [284, 361]."""
    from lifelines.datasets import load_lung

    from escapestat.stats._kaplan_meier import KaplanMeierMedian

    lung = load_lung()
    t, e = lung["time"].to_numpy(float), lung["status"].to_numpy(int)
    assert KaplanMeierMedian().fit(t, e, transform="log").median_ci_ == (285.0, 363.0)
    default = KaplanMeierMedian().fit(t, e)
    assert default.median_ == 310.0 and default.median_ci_ == (284.0, 361.0)
    with pytest.raises(ValueError, match="transform must be one of"):
        KaplanMeierMedian().fit(t, e, transform="plain")
