"""The incidence of escape with divergence competing, against lifelines, KM and the truth."""

from __future__ import annotations

import numpy as np
import pytest

from escapestat.arm_contrast import incidence_median_ratio, median_ratio
from escapestat.errors import EscapestatError
from escapestat.incidence import EscapeIncidence, incidence_median_ci
from escapestat.survival import KaplanMeierMedian, kaplan_meier, restricted_mean


def _competing(n, k1, k2, budget, seed):
    """Competing exponential escape (rate k1) and divergence (k2), censored at budget."""
    rng = np.random.default_rng(seed)
    t1, t2 = rng.exponential(1 / k1, n), rng.exponential(1 / k2, n)
    t = np.minimum(np.minimum(t1, t2), budget)
    cause = np.where(t >= budget, 0, np.where(t1 < t2, 1, 2))
    return t, cause


def test_it_is_lifelines_aalen_johansen():
    from lifelines import AalenJohansenFitter
    t, c = _competing(300, 0.01, 0.005, 150, seed=1)  # continuous times: no ties
    t[c == 0] = 150 + np.arange((c == 0).sum()) * 1e-3  # distinct censoring times too
    ours = EscapeIncidence().fit(t, c)
    aj = AalenJohansenFitter(calculate_variance=False).fit(t, c, event_of_interest=1)
    theirs = aj.cumulative_density_.iloc[:, 0]
    at = theirs.index.to_numpy()[1:]  # lifelines starts at t = 0
    np.testing.assert_allclose(np.interp(at, ours.times_, ours.cif_), theirs.to_numpy()[1:],
                               atol=1e-12)


def test_without_divergence_it_is_one_minus_kaplan_meier():
    rng = np.random.default_rng(2)
    t = 25.0 * np.ceil(rng.exponential(300, 200) / 25)  # on a check grid: many ties
    e = (t < 1000).astype(int)
    t = np.minimum(t, 1000.0)
    inc = EscapeIncidence().fit(t, e)
    times, surv = kaplan_meier(t, e)
    np.testing.assert_allclose(inc.cif_, 1 - surv, atol=1e-12)
    assert inc.restricted_mean(1000) == pytest.approx(restricted_mean(times, surv, 1000))
    assert inc.median_ == KaplanMeierMedian().fit(t, e).median_
    # k of 2k escaped exactly: the median is the k-th time, as KM's is.
    assert EscapeIncidence().fit([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1]).median_ == 2.0


def test_it_recovers_competing_exponentials():
    k1, k2, budget, n = 0.01, 0.005, 300.0, 4000
    t, c = _competing(n, k1, k2, budget, seed=3)
    inc = EscapeIncidence().fit(t, c)
    k = k1 + k2
    for at in (50.0, 100.0, 200.0, 299.0):
        truth = k1 / k * (1 - np.exp(-k * at))
        got = inc.cif_[np.searchsorted(inc.times_, at, side="right") - 1]
        # Binomial standard error of a proportion ≤ 0.5/sqrt(n) = 0.008: within 4 of them.
        assert got == pytest.approx(truth, abs=0.032)
    # ∫₀^300 (1 − F) = 300 − (k1/k)(300 − (1 − e^{−300k})/k)
    truth = budget - k1 / k * (budget - (1 - np.exp(-k * budget)) / k)
    assert inc.restricted_mean(budget) == pytest.approx(truth, rel=0.02)
    assert inc.fractions()["diverged"] == pytest.approx(k2 / k * (1 - np.exp(-k * budget)),
                                                         abs=0.03)
    # F(300) = 2/3 · (1 − e^{−4.5}) ≈ 0.66: the median is reached, at −ln(1 − ¾)/k ≈ 92.
    assert inc.median_ == pytest.approx(-np.log(1 - 0.75) / k, rel=0.1)


def test_when_half_diverge_the_median_is_not_reached():
    inc = EscapeIncidence().fit([10.0] * 3 + [5.0] * 3 + [100.0], [1] * 3 + [2] * 3 + [0])
    assert inc.median_ is None and inc.cif_[-1] == pytest.approx(3 / 7)
    assert inc.diverged_cif_[-1] == pytest.approx(3 / 7)
    lo, hi = incidence_median_ci([10.0] * 3 + [5.0] * 3 + [100.0], [1] * 3 + [2] * 3 + [0],
                                 n_bootstrap=400)
    assert hi is None  # resamples that do not reach ½: not bounded above


def test_the_ratio_equals_the_km_ratio_without_divergence_and_penalises_it_with():
    rng = np.random.default_rng(4)
    a, b = np.ceil(rng.exponential(100, 60)), np.ceil(rng.exponential(200, 60))
    ea, eb = np.ones(60, int), np.ones(60, int)
    ours = incidence_median_ratio(a, ea, b, eb, n_bootstrap=500, seed=7)
    km = median_ratio(a, ea, b, eb, n_bootstrap=500, seed=7)
    assert ours.ratio == km.ratio and ours.ci == km.ci
    # A third of the arm diverged at its start: never faster than the same arm clean.
    ca = ea.copy()
    ca[:20] = 2
    a2 = a.copy()
    a2[:20] = 1.0
    worse = incidence_median_ratio(a2, ca, a, ea, n_bootstrap=500, seed=7)
    assert worse.ratio is None or worse.ratio > 1
    km_view = median_ratio(a2, (ca == 1).astype(int), a, ea, n_bootstrap=500, seed=7)
    assert km_view.ratio is not None and worse.ratio != km_view.ratio


@pytest.mark.parametrize("durations, cause, message", [
    ([], [], "non-empty"),
    ([1.0, 2.0], [1], "must match"),
    ([1.0, -2.0], [1, 1], "finite and > 0"),
    ([1.0, np.nan], [1, 1], "finite and > 0"),
    ([1.0, 2.0], [1, 3], "0 \\(censored\\), 1 \\(escaped\\) or 2 \\(diverged\\)"),
])
def test_bad_input_is_one_clear_error(durations, cause, message):
    with pytest.raises(EscapestatError, match=message):
        EscapeIncidence().fit(durations, cause)
