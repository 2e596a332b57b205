"""The incidence of escape with divergence competing, against lifelines, KM and the truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats._contrast import MedianRatio, incidence_median_ratio, median_ratio
from escapestat.stats._incidence import (
    EscapeIncidence,
    _medians,
    _weighted_cif,
    bootstrap_distribution,
    incidence_median_ci,
    weighted_medians,
)
from escapestat.stats._survival import KaplanMeierMedian, kaplan_meier, restricted_mean


def _competing(n, k1, k2, budget, seed):
    """Competing exponential escape (rate k1) and divergence (k2), censored at budget."""
    rng = np.random.default_rng(seed)
    t1, t2 = rng.exponential(1 / k1, n), rng.exponential(1 / k2, n)
    t = np.minimum(np.minimum(t1, t2), budget)
    cause = np.where(t >= budget, 0, np.where(t1 < t2, 1, 2))
    return t, cause


@pytest.mark.parametrize("event", [1, 2])
def test_it_is_lifelines_aalen_johansen(event):
    """Escape and divergence incidences equal lifelines' at every time (no ties: it would
    jitter them; the jitter warning is turned into an error to make sure it did not)."""
    from lifelines import AalenJohansenFitter

    t, c = _competing(300, 0.01, 0.005, 150, seed=1)
    t[c == 0] = 150 + np.arange((c == 0).sum()) * 1e-3  # distinct censoring times too
    ours = EscapeIncidence().fit(t, c)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Tied event times")
        aj = AalenJohansenFitter(calculate_variance=False).fit(t, c, event_of_interest=event)
    theirs = aj.cumulative_density_.iloc[1:, 0]  # lifelines starts with 0 at t = 0
    np.testing.assert_array_equal(theirs.index.to_numpy(), ours.times_)
    mine = ours.cif_ if event == 1 else ours.diverged_cif_
    np.testing.assert_allclose(mine, theirs.to_numpy(), rtol=0, atol=1e-10)


def test_ties_hand_computed():
    """Escape, divergence and censoring at the same time: events first, so the replica
    censored at t = 1 is still at risk there (n = 6, not 5)."""
    inc = EscapeIncidence().fit([1, 1, 1, 2, 2, 3], [1, 2, 0, 1, 0, 1])
    np.testing.assert_array_equal(inc.times_, [1, 2, 3])
    # t=1: 1/6 each, S = 4/6; t=2: n = 3, F += 4/6 · 1/3; t=3: n = 1, F += 8/18.
    np.testing.assert_allclose(inc.cif_, [3 / 18, 7 / 18, 15 / 18], rtol=0, atol=1e-15)
    np.testing.assert_allclose(inc.diverged_cif_, [1 / 6] * 3, rtol=0, atol=1e-15)
    assert (inc.n_, inc.escaped_, inc.diverged_, inc.censored_) == (6, 3, 1, 2)
    assert inc.fractions() == {"escaped": 0.5, "diverged": 1 / 6, "censored": 1 / 3}
    assert inc.median_ == 3.0  # F(2) = 7/18 < ½ ≤ F(3)


def test_without_divergence_it_is_one_minus_kaplan_meier():
    """On a 25-step check grid with random censoring: escapes and censorings tie."""
    rng = np.random.default_rng(2)
    escape = 25.0 * np.ceil(rng.exponential(300, 400) / 25)
    censor = np.minimum(25.0 * np.ceil(rng.uniform(0, 1500, 400) / 25), 1000.0)
    t, e = np.minimum(escape, censor), (escape <= censor).astype(int)
    times, first = np.unique(t, return_index=True)
    assert len(times) < 50  # many ties, of escapes with censorings among them
    inc = EscapeIncidence().fit(t, e)
    km_times, surv = kaplan_meier(t, e)
    np.testing.assert_array_equal(inc.times_, km_times)
    np.testing.assert_allclose(inc.cif_, 1 - surv, rtol=0, atol=1e-12)
    assert inc.restricted_mean(1000) == pytest.approx(restricted_mean(km_times, surv, 1000),
                                                      rel=1e-12)
    assert inc.median_ is not None
    assert inc.median_ == KaplanMeierMedian().fit(t, e).median_
    # 5 of 10 escaped by t = 5: F(5) rounds to 0.49999999999999994 but, like KM's S ≤ ½
    # (HALF_TOL), it counts as reaching ½.
    ten = np.arange(1.0, 11)
    assert EscapeIncidence().fit(ten, np.ones(10, int)).median_ == 5.0
    assert KaplanMeierMedian().fit(ten, np.ones(10, int)).median_ == 5.0


def test_it_recovers_competing_exponentials():
    """Truth: F(t) = k1/k (1 − e^{−kt}), k = k1 + k2. Censoring only at the budget, so
    below it F̂ is the fraction escaped by t (binomial SE ≤ 0.5/√n = 0.0079) and the
    restricted mean is the mean of min(escape time, 300) with a diverged replica at 300."""
    k1, k2, budget, n = 0.01, 0.005, 300.0, 4000
    t, c = _competing(n, k1, k2, budget, seed=3)
    inc = EscapeIncidence().fit(t, c)
    k = k1 + k2
    for at in (25.0, 50.0, 100.0, 200.0, 299.0):
        truth = k1 / k * (1 - np.exp(-k * at))
        got = inc.cif_[np.searchsorted(inc.times_, at, side="right") - 1]
        assert got == pytest.approx(truth, abs=4 * 0.5 / np.sqrt(n))
    trapped = np.where(c == 1, t, budget)
    assert inc.restricted_mean(budget) == pytest.approx(trapped.mean(), rel=1e-12)
    # ∫₀^300 (1 − F) = 300 − (k1/k)(300 − (1 − e^{−300k})/k) ≈ 144; 4 SE of the mean.
    truth = budget - k1 / k * (budget - (1 - np.exp(-k * budget)) / k)
    assert inc.restricted_mean(budget) == pytest.approx(truth, abs=4 * trapped.std() / np.sqrt(n))
    p_div = k2 / k * (1 - np.exp(-k * budget))
    assert inc.diverged_cif_[-1] == pytest.approx(p_div, abs=4 * 0.5 / np.sqrt(n))
    assert inc.fractions()["diverged"] == pytest.approx(inc.diverged_cif_[-1], rel=1e-12)
    # F = ½ at m = ln 4 / k ≈ 92.4; SE(m̂) ≈ SE(F̂) / F'(m) = 0.0079 / (k1 e^{−km}) ≈ 3.2.
    m = np.log(4) / k
    assert inc.median_ == pytest.approx(m, abs=4 * 0.5 / np.sqrt(n) / (k1 * np.exp(-k * m)))


def test_divergence_is_a_failure_not_a_censoring():
    """The issue: 8 escapes at 100 and 8 divergences at 50 scored like 16 escapes at 100
    when divergence was censored (KM RMST 100 for both); it must be worse."""
    mixed = EscapeIncidence().fit([100.0] * 8 + [50.0] * 8, [1] * 8 + [2] * 8)
    clean = EscapeIncidence().fit([100.0] * 16, [1] * 16)
    assert clean.restricted_mean(1000) == pytest.approx(100.0, rel=1e-12)
    assert mixed.restricted_mean(1000) == pytest.approx(100 + 900 * 0.5, rel=1e-12)
    assert mixed.restricted_mean(1000) > clean.restricted_mean(1000)
    km_times, surv = kaplan_meier([100.0] * 8 + [50.0] * 8, [1] * 8 + [0] * 8)
    assert restricted_mean(km_times, surv, 1000) == pytest.approx(100.0)  # what it replaces


def test_an_arm_cannot_win_by_diverging():
    """The same escape times as a clean arm, 30% of replicas diverged at step 5."""
    rng = np.random.default_rng(4)
    clean = np.ceil(rng.exponential(100, 60)) + 10
    ones = np.ones(60, int)
    m_clean = EscapeIncidence().fit(clean, ones).median_
    slowest = np.argsort(clean)[-18:]
    for how, diverged in (("random", rng.choice(60, 18, replace=False)), ("slowest", slowest)):
        t, c = clean.copy(), ones.copy()
        t[diverged], c[diverged] = 5.0, 2
        inc = EscapeIncidence().fit(t, c)
        r = incidence_median_ratio(t, c, clean, ones, n_bootstrap=500, seed=7)
        km = median_ratio(t, (c == 1).astype(int), clean, ones, n_bootstrap=500, seed=7)
        assert inc.median_ >= m_clean and r.ratio == inc.median_ / m_clean
        if how == "random":  # the 30th escape among 42 left comes after the 30th of 60
            assert inc.median_ > m_clean and r.ratio > 1
        else:  # the slowest diverged: KM (censoring them) calls the arm faster; not here
            assert km.ratio < 1 and r.ratio == 1
    # Most diverged: the median is never reached, the ratio is None with no upper bound.
    t, c = clean.copy(), ones.copy()
    t[:36], c[:36] = 5.0, 2
    r = incidence_median_ratio(t, c, clean, ones, n_bootstrap=500, seed=7)
    assert r.ratio is None and r.ci[1] is None


def test_median_not_reached_and_ci_sides():
    """3 of 7 diverged, 1 censored: F ends at 3/7 < ½, so no median, and the resamples
    that do not reach ½ leave the CI unbounded above; with 16 of 20 diverged nearly none
    reach it, so lo is ∞ too and both sides are None."""
    d, c = [10.0] * 3 + [5.0] * 3 + [100.0], [1] * 3 + [2] * 3 + [0]
    inc = EscapeIncidence().fit(d, c)
    assert inc.median_ is None and inc.cif_[-1] == pytest.approx(3 / 7)
    assert inc.diverged_cif_[-1] == pytest.approx(3 / 7)
    lo, hi = incidence_median_ci(d, c, n_bootstrap=400)
    assert lo == 10.0 and hi is None
    assert incidence_median_ci([1.0] * 16 + [10.0] * 4, [2] * 16 + [1] * 4) == (None, None)
    # Reference unreached, arm reached: finite / ∞ = 0, so the ratio is None, lo None.
    r = incidence_median_ratio([10.0] * 5, [1] * 5, d, c, n_bootstrap=400)
    assert r.ratio is None and r.ci[0] is None
    both = incidence_median_ratio(d, c, d, c, n_bootstrap=400)  # ∞/∞ widens both sides
    assert both == MedianRatio(None, (None, None), 400)


def test_ci_is_the_documented_order_statistics():
    """lo is numpy's "lower" and hi its "higher" quantile of the resampled medians (B = 10,
    50%: positions 2.25 and 6.75, between distinct medians, so interpolation would show)."""
    t, c = _competing(80, 0.01, 0.005, 300, seed=5)
    boot = np.sort(bootstrap_distribution((t.size,), lambda w: weighted_medians(t, c, w), 10,
                                          np.random.default_rng(11)))
    assert np.isfinite(boot).all() and boot[2] < boot[3] and boot[6] < boot[7]
    assert incidence_median_ci(t, c, n_bootstrap=10, level=0.5, seed=11) == (boot[2], boot[7])
    lo, hi = incidence_median_ci(t, c, n_bootstrap=999, seed=11)
    assert lo < EscapeIncidence().fit(t, c).median_ < hi


@pytest.mark.parametrize("swap", [False, True])
def test_infinity_over_infinity_widens_the_ratio_ci(swap):
    """One arm reaching ½ in ~12% of resamples, the other missing it in ~13%: ∞/∞ (~11%)
    must count as ∞ for hi and 0 for lo; ∞/finite or finite/∞ alone (~1.6% < 2.5%) would
    leave that side finite."""
    fast = np.r_[np.arange(10.0, 22), [1.0] * 8], np.r_[[1] * 12, [2] * 8]
    slow = np.r_[np.arange(10.0, 17), [1.0] * 13], np.r_[[1] * 7, [2] * 13]
    (arm_t, arm_c), (ref_t, ref_c) = (slow, fast) if swap else (fast, slow)
    which = bootstrap_distribution(  # the resamples of incidence_median_ratio(seed=0)
        (arm_t.size, ref_t.size),
        lambda w, w_ref: (np.isinf(weighted_medians(arm_t, arm_c, w))
                          + 2.0 * np.isinf(weighted_medians(ref_t, ref_c, w_ref))),
        2000, np.random.default_rng(0))
    unreached, unreached_ref = which % 2 == 1, which >= 2
    one_sided = unreached & ~unreached_ref if not swap else ~unreached & unreached_ref
    assert np.mean(unreached & unreached_ref) > 0.025 > np.mean(one_sided)
    assert np.any(~unreached & ~unreached_ref)
    r = incidence_median_ratio(arm_t, arm_c, ref_t, ref_c, seed=0)
    assert r == MedianRatio(None, (None, None), 2000)


def test_the_resampling_is_scipys():
    """bootstrap_distribution hands scipy.stats.bootstrap's resamples on as count rows: a
    weighted mean over them equals scipy's own bootstrap of the mean, resample for resample."""
    from scipy import stats

    x, y = np.random.default_rng(1).exponential(size=(2, 37))
    y = y[:23]

    def mean(v, w):
        return (w * v).sum(axis=-1) / w.sum(axis=-1)

    ours = bootstrap_distribution((37, 23), lambda w, w_y: mean(x, w) - mean(y, w_y), 300,
                                  np.random.default_rng(5))
    theirs = stats.bootstrap((x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis),
                             n_resamples=300, method="percentile",
                             rng=np.random.default_rng(5)).bootstrap_distribution
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_weighted_medians_are_incidence_medians_of_repeated_data():
    """Each bootstrap row (integer counts) is EscapeIncidence on the repeated replicas."""
    rng = np.random.default_rng(6)
    t, c = _competing(40, 0.02, 0.01, 60, seed=6)
    t = 10 * np.ceil(t / 10)  # grid: ties between all three causes
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=300)
    times, cif, _ = _weighted_cif(t, c, counts)
    for w, m in zip(counts, _medians(times, cif), strict=True):
        ref = EscapeIncidence().fit(np.repeat(t, w), np.repeat(c, w)).median_
        assert m == (np.inf if ref is None else ref)


def test_the_ratio_equals_the_km_ratio_without_divergence():
    """Both draw the same resamples from one default_rng(seed) (one resampler), and 1 − KM
    and the incidence differ by rounding (~1e-16), far inside HALF_TOL, so every resampled
    median, hence the ratio and its CI, is bit-identical."""
    rng = np.random.default_rng(4)
    a, b = np.ceil(rng.exponential(100, 60)), np.ceil(rng.exponential(200, 60))
    ea, eb = (a < 250).astype(int), (b < 250).astype(int)
    a, b = np.minimum(a, 250), np.minimum(b, 250)
    ours = incidence_median_ratio(a, ea, b, eb, n_bootstrap=500, seed=7)
    km = median_ratio(a, ea, b, eb, n_bootstrap=500, seed=7)
    assert ours == km and ours.ratio is not None and None not in ours.ci


@pytest.mark.parametrize("durations, cause, message", [
    ([], [], "non-empty 1-D"),
    ([[1.0, 2.0]], [[1, 1]], "non-empty 1-D"),
    ([1.0, 2.0], [1], "must match"),
    ([1.0, -2.0], [1, 1], "finite and > 0"),
    ([1.0, 0.0], [1, 1], "finite and > 0"),
    ([1.0, np.nan], [1, 1], "finite and > 0"),
    ([1.0, np.inf], [1, 1], "finite and > 0"),
    ([1.0, 2.0], [1, 3], r"0 \(censored\), 1 \(escaped\) or 2 \(diverged\)"),
    ([1.0, 2.0], [1, 1.5], r"0 \(censored\), 1 \(escaped\) or 2 \(diverged\)"),
    ([1.0, 2.0], ["1", "2"], r"0 \(censored\), 1 \(escaped\) or 2 \(diverged\)"),
])
def test_bad_input_is_one_clear_error(durations, cause, message):
    with pytest.raises(EscapestatError, match=message):
        EscapeIncidence().fit(durations, cause)
    with pytest.raises(EscapestatError, match=message):
        incidence_median_ci(durations, cause)
    with pytest.raises(EscapestatError, match="reference: .*" + message):
        incidence_median_ratio([1.0], [1], durations, cause)


def test_bad_options():
    for call in (lambda **kw: incidence_median_ci([1.0, 2.0], [1, 2], **kw),
                 lambda **kw: incidence_median_ratio([1.0], [1], [2.0], [1], **kw)):
        with pytest.raises(EscapestatError, match="n_bootstrap"):
            call(n_bootstrap=0)
        with pytest.raises(EscapestatError, match="level"):
            call(level=1.0)
    with pytest.raises(EscapestatError, match="horizon"):
        EscapeIncidence().fit([1.0], [1]).restricted_mean(0)
