"""The one censored Poisson GLM (``fit_poisson_glm``): truth recovered, the quasi-Poisson
scale applied as statsmodels' own ``scale="X2"``, and ``arrhenius`` and ``regress`` both
fitted by it."""

from __future__ import annotations

import numpy as np
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats import QUASI_POISSON, fit_arrhenius, fit_poisson_glm, quasi_poisson_scale
from escapestat.stats._regress import RateRegression
from escapestat.table._records import Columns


def _cells(seed=0, n=8, a=-5.0, b=2.0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    exposure = np.full(n, 2e4)
    events = rng.poisson(exposure * np.exp(a + b * x)).astype(float)
    return events, exposure, np.column_stack([np.ones(n), x])


def test_truth_inside_the_intervals_and_ci_is_quantile_times_se():
    events, exposure, design = _cells()
    glm = fit_poisson_glm(events, exposure, design, intercept=0)
    for j, truth in enumerate((-5.0, 2.0)):
        lo, hi = glm.ci(j)
        assert lo < truth < hi
        assert hi - lo == pytest.approx(2 * glm.quantile * glm.se[j])
    scale, q, nu = quasi_poisson_scale(glm.dispersion * (len(events) - 2), len(events) - 2)
    assert (glm.scale, glm.quantile, glm.quantile_df) == pytest.approx((scale, q, nu))
    assert glm.method == QUASI_POISSON


def test_no_residual_df_is_plain_poisson():
    events, exposure, design = _cells(n=2)
    glm = fit_poisson_glm(events, exposure, design)
    assert glm.method == "poisson" and glm.dispersion is None and glm.scale == 1.0


def test_not_identified_is_an_error():
    events, exposure, design = _cells()
    events[:] = 0
    events[-1] = 5
    with pytest.raises(EscapestatError, match="did not converge"):
        fit_poisson_glm(events, exposure, design)


def test_arrhenius_and_regress_are_the_same_glm(ladder_csv, monkeypatch):
    import pandas as pd

    import escapestat.stats._arrhenius as arrhenius
    import escapestat.stats._regress as regress

    df = pd.read_csv(ladder_csv)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[2].shape)
        return fit_poisson_glm(*args, **kwargs)

    monkeypatch.setattr(arrhenius, "fit_poisson_glm", spy)
    monkeypatch.setattr(regress, "fit_poisson_glm", spy)
    a = fit_arrhenius(df, Columns(temperature="temperature"), crosscheck=False)
    r = RateRegression(crosscheck=False).fit(df, "I(-1/temperature)")
    assert len(calls) == 2 and calls[0] == calls[1]
    (term,) = r.terms_
    assert term.rate_coef == a.barrier
    assert term.rate_coef_ci == tuple(a.barrier_ci)


def test_covariance_and_intervals_are_statsmodels_quasi_poisson():
    """statsmodels' ``fit(scale="X2")`` with t on the residual df is R's quasipoisson."""
    import statsmodels.api as sm

    events, exposure, design = _cells(seed=3)
    glm = fit_poisson_glm(events, exposure, design, intercept=0)
    quasi = sm.GLM(events, design, family=sm.families.Poisson(),
                   offset=np.log(exposure)).fit(scale="X2")
    assert glm.scale != pytest.approx(1.0, abs=1e-3)
    assert glm.params == pytest.approx(np.asarray(quasi.params), rel=1e-6)
    assert glm.covariance == pytest.approx(np.asarray(quasi.cov_params()), rel=1e-5)
    quasi_t = sm.GLM(events, design, family=sm.families.Poisson(), offset=np.log(exposure)
                     ).fit(scale="X2", use_t=True)
    for j in range(2):
        assert glm.ci(j) == pytest.approx(tuple(quasi_t.conf_int()[j]), rel=1e-5)
