"""Arm vs reference: KM median ratio with bootstrap CI, log-rank p, wall-clock scaling.

Ground truth: for exponential escape at rate k the median is ln 2 / k, so the ratio of
medians arm / reference is k_ref / k_arm.
"""

import math
import time

import numpy as np
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats._contrast import (
    MedianRatio,
    _weighted_km_medians,
    logrank_p,
    median_ratio,
    scaled,
)
from escapestat.stats._incidence import bootstrap_distribution
from escapestat.stats._survival import KaplanMeierMedian
from escapestat.stats._synthetic import censored_exponential


def _two_arms(rng, n, rate, rate_ref, budget):
    t, e = censored_exponential(rate, n, budget, rng)
    t_ref, e_ref = censored_exponential(rate_ref, n, budget, rng)
    return t, e, t_ref, e_ref


def _covers(ci, truth):
    lo, hi = ci  # None: not bounded on that side
    return (lo is None or lo <= truth) and (hi is None or truth <= hi)


def test_weighted_medians_are_km_medians_of_repeated_data():
    """Every resample's median is KaplanMeierMedian on the repeated replicas, ties included."""
    rng = np.random.default_rng(3)
    t, e = censored_exponential(0.2, 40, 8.0, rng)
    t = np.ceil(t)  # a check grid: many ties, escapes and censorings at the same time
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=300)
    counts[0] = 1  # the data themselves
    got = _weighted_km_medians(t, e, counts)
    for w, m in zip(counts, got, strict=True):
        ref = KaplanMeierMedian().fit(np.repeat(t, w), np.repeat(e, w)).median_
        assert m == (math.inf if ref is None else ref)
    # S = 1/2 exactly at t = 2 (2 of 4 escaped, none censored before): the median is 2.
    assert _weighted_km_medians(np.arange(1.0, 5), np.ones(4, int), np.ones((1, 4), int))[0] == 2


def test_ratio_of_exponential_medians():
    """Rates 1 (arm) and 1/3 (reference), budget 3: 5% and 37% censored; truth 1/3."""
    rng = np.random.default_rng(0)
    t, e, t_ref, e_ref = _two_arms(rng, 200, 1.0, 1 / 3, 3.0)
    assert 0.10 < 1 - np.r_[e, e_ref].mean() < 0.30
    res = median_ratio(t, e, t_ref, e_ref)
    assert isinstance(res, MedianRatio) and res.n_bootstrap == 2000
    assert res.ratio == pytest.approx(1 / 3, rel=0.2)
    assert res.ci[0] < 1 / 3 < res.ci[1]
    assert res.ci[0] < res.ratio < res.ci[1] < 1  # the arm is shown to be faster
    assert median_ratio(t, e, t_ref, e_ref) == res  # fixed seed, same answer


def test_bootstrap_ci_coverage():
    """95% CI covers the true ratio 1/2 (rates 2 vs 1, budget 1.18: ~20% censored)."""
    rng = np.random.default_rng(2024)
    covered, censored = 0, []
    for i in range(200):
        t, e, t_ref, e_ref = _two_arms(rng, 60, 2.0, 1.0, 1.18)
        censored.append(1 - np.r_[e, e_ref].mean())
        res = median_ratio(t, e, t_ref, e_ref, n_bootstrap=400, seed=i)
        covered += _covers(res.ci, 0.5)
    assert 0.17 < np.mean(censored) < 0.23
    assert 0.90 <= covered / 200 <= 0.99, covered / 200


def test_ci_is_the_documented_order_statistics():
    """lo = r*_(⌊α/2·(B−1)⌋+1), hi = r*_(⌈(1−α/2)(B−1)⌉+1) of the B resampled ratios, with
    arm and reference resampled by scipy.stats.bootstrap from one default_rng(seed). The
    coverage test alone cannot see a 90% interval passed off as 95% (it covers 0.935 of the
    200 datasets there)."""
    rng = np.random.default_rng(4)
    t, e, t_ref, e_ref = _two_arms(rng, 50, 2.0, 1.0, 1.18)
    for level, b in [(0.95, 400), (0.8, 999)]:
        res = median_ratio(t, e, t_ref, e_ref, n_bootstrap=b, level=level, seed=9)
        r = np.sort(bootstrap_distribution(
            (t.size, t_ref.size),
            lambda w, w_ref: (_weighted_km_medians(t, e, w)
                              / _weighted_km_medians(t_ref, e_ref, w_ref)),
            b, np.random.default_rng(9)))
        alpha = 1 - level
        lo, hi = math.floor(alpha / 2 * (b - 1)), math.ceil((1 - alpha / 2) * (b - 1))
        assert res.ci == (r[lo], r[hi])


def test_logrank_null_and_power():
    rng = np.random.default_rng(7)
    p = np.array(
        [logrank_p(*_two_arms(rng, 60, 1.0, 1.0, 1.6)) for _ in range(200)]  # 20% censored
    )
    assert 0.01 <= np.mean(p < 0.05) <= 0.10
    assert 0.35 <= np.mean(p < 0.5) <= 0.65  # roughly uniform
    assert logrank_p(*_two_arms(rng, 100, 3.0, 1.0, 3.0)) < 1e-6


def test_logrank_known_value_and_no_events():
    # lifelines' documented example: p = 0.7677.
    t1, e1 = [1, 4, 10, 12, 12, 3, 5.4], [1, 0, 1, 0, 1, 1, 1]
    t2, e2 = [4, 5, 7, 11, 14, 20, 8, 8], [1] * 8
    assert logrank_p(t1, e1, t2, e2) == pytest.approx(0.7677, abs=1e-4)
    assert logrank_p(t2, e2, t1, e1) == pytest.approx(0.7677, abs=1e-4)  # two-sided
    assert logrank_p([5.0, 5.0], [0, 0], [5.0, 5.0, 5.0], [0, 0, 0]) == 1.0


def _reached(n, rng):
    t, e = censored_exponential(1.0, n, 10.0, rng)
    return t, e


def _just_unreached(n=100, escaped=48):
    """KM ends at 0.52 > 1/2: median not reached, but many resamples reach it."""
    t = np.r_[np.linspace(0.1, 1.0, escaped), np.full(n - escaped, 2.0)]
    return t, (np.arange(n) < escaped).astype(int)


def test_unreached_arm_median():
    rng = np.random.default_rng(5)
    t_ref, e_ref = _reached(100, rng)
    t, e = _just_unreached()
    res = median_ratio(t, e, t_ref, e_ref)
    assert res.ratio is None  # the arm's median is beyond the data: ∞ / finite
    assert res.ci[1] is None  # no evidence that it is shorter
    assert 0 < res.ci[0] < math.inf  # but a finite lower bound
    # Arm hopelessly unreached (KM ends at 0.8): r* = ∞ in every resample, lo = ∞ → None.
    hopeless = median_ratio(*_just_unreached(escaped=20), t_ref, e_ref)
    assert hopeless == MedianRatio(None, (None, None), 2000)


def test_unreached_reference_median():
    rng = np.random.default_rng(5)
    t, e = _reached(100, rng)
    res = median_ratio(t, e, *_just_unreached())
    assert res.ratio is None  # finite / ∞ = 0 is not a ratio estimate
    assert res.ci[0] is None  # the CI reaches 0
    assert 0 < res.ci[1] < math.inf  # an upper bound: "at most hi times the reference"


def test_both_medians_unreached():
    res = median_ratio(*_just_unreached(), *_just_unreached(escaped=45))
    assert res == MedianRatio(None, (None, None), 2000)


def test_scaled_is_the_wall_clock_ratio():
    rng = np.random.default_rng(11)
    t, e, t_ref, e_ref = _two_arms(rng, 80, 1.0, 0.5, 4.0)
    steps = median_ratio(t, e, t_ref, e_ref, n_bootstrap=500)
    s_arm, s_ref = 0.03, 0.02  # seconds per step
    wall = scaled(steps, s_arm / s_ref)
    assert wall.ratio == pytest.approx(1.5 * steps.ratio)
    assert wall.ci == pytest.approx((1.5 * steps.ci[0], 1.5 * steps.ci[1]))
    direct = median_ratio(t * s_arm, e, t_ref * s_ref, e_ref, n_bootstrap=500)
    assert wall.ratio == pytest.approx(direct.ratio, rel=1e-12)
    assert wall.ci == pytest.approx(direct.ci, rel=1e-12)
    assert scaled(MedianRatio(None, (0.5, None), 10), 2.0) == MedianRatio(None, (1.0, None), 10)
    with pytest.raises(EscapestatError, match="factor"):
        scaled(steps, 0.0)


@pytest.mark.parametrize(
    "durations, events, words",
    [
        ([1.0, -2.0], [1, 0], "durations"),
        ([1.0, np.nan], [1, 0], "durations"),
        ([1.0, 0.0], [1, 0], "durations"),
        ([1.0, np.inf], [1, 0], "durations"),
        ([1.0, 2.0], [1, 2], "events"),
        ([1.0, 2.0], [1, 0.5], "events"),
        ([1.0, 2.0], [1, np.nan], "events"),
        ([1.0, 2.0], ["1", "0"], "events"),
        ([1.0, 2.0], [1], "shape"),
        ([], [], "non-empty"),
    ],
)
def test_bad_input_is_one_error_line(durations, events, words):
    good = ([1.0, 2.0, 3.0], [1, 1, 0])
    for call in (median_ratio, logrank_p):
        with pytest.raises(EscapestatError, match=words) as info:
            call(durations, events, *good)
        assert "\n" not in str(info.value) and str(info.value).startswith("arm:")
        with pytest.raises(EscapestatError, match="reference"):
            call(*good, durations, events)


def test_bad_options():
    good = ([1.0, 2.0, 3.0], [1, 1, 0])
    with pytest.raises(EscapestatError, match="n_bootstrap"):
        median_ratio(*good, *good, n_bootstrap=0)
    with pytest.raises(EscapestatError, match="level"):
        median_ratio(*good, *good, level=1.0)


def test_bootstrap_is_vectorised():
    """2000 resamples of 2 × 256 replicas: well under a second (measured ~0.1 s)."""
    rng = np.random.default_rng(1)
    arms = _two_arms(rng, 256, 1.0, 1 / 3, 3.0)
    median_ratio(*arms, n_bootstrap=10)  # warm up imports
    start = time.perf_counter()
    median_ratio(*arms)
    assert time.perf_counter() - start < 1.0
