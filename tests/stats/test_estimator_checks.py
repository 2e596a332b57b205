"""One check suite run over every estimator (as scikit-learn's and lifelines' are): ``fit``
returns the estimator, fitted values end in ``_``, degenerate data (all censored, one
row, one event) give defined answers, and the confidence level is honoured."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from escapestat.stats import EscapeIncidence, ExponentialRate, KaplanMeierMedian, RestrictedMean


@dataclass(frozen=True)
class Spec:
    make: Any  # () -> estimator
    fit: Any  # (estimator, durations, events, level) -> estimator
    estimate: str  # the fitted value
    ci: str | None  # its interval (None: a point estimator)


ESTIMATORS = {
    "ExponentialRate": Spec(ExponentialRate, lambda m, d, e, lv: m.fit(d, e, level=lv),
                            "rate_", "rate_ci_"),
    "KaplanMeierMedian": Spec(KaplanMeierMedian, lambda m, d, e, lv: m.fit(d, e, level=lv),
                              "median_", "median_ci_"),
    "RestrictedMean": Spec(RestrictedMean,
                           lambda m, d, e, lv: m.fit(d, e, horizon=1000.0, level=lv),
                           "rmst_", "rmst_ci_"),
    "EscapeIncidence": Spec(EscapeIncidence, lambda m, d, e, lv: m.fit(d, e), "median_", None),
}


def _data(n=60, seed=0, budget=800.0):
    t = np.random.default_rng(seed).exponential(300.0, n)
    return np.minimum(t, budget), (t < budget).astype(int)


@pytest.fixture(params=sorted(ESTIMATORS))
def spec(request):
    return ESTIMATORS[request.param]


def test_fit_returns_self_and_fitted_values_end_in_underscore(spec):
    model = spec.make()
    before = set(vars(model))
    d, e = _data()
    assert spec.fit(model, d, e, 0.95) is model
    fitted = set(vars(model)) - before
    assert fitted and all(name.endswith("_") for name in fitted), fitted
    assert spec.estimate in fitted and (spec.ci is None or spec.ci in fitted)


def test_all_censored_is_defined(spec):
    d = np.full(10, 800.0)
    model = spec.fit(spec.make(), d, np.zeros(10, dtype=int), 0.95)
    value = getattr(model, spec.estimate)
    # KM median and incidence median not reached; rate 0; RMST = its horizon (no escape
    # before it: the documented rule, as lifelines carries S = 1 forward)
    assert value is None or value == 0 or value == pytest.approx(1000.0)
    if spec.ci is not None:
        lo, hi = getattr(model, spec.ci)
        assert lo is None or math.isfinite(lo) or lo == math.inf


@pytest.mark.parametrize("d, e", [([7.0], [1]), ([7.0], [0]),
                                  ([5.0, 9.0, 9.0, 9.0], [1, 0, 0, 0])],
                         ids=["one escape", "one censored", "one event"])
def test_tiny_data_give_answers_not_errors(spec, d, e):
    model = spec.fit(spec.make(), np.array(d), np.array(e), 0.95)
    value = getattr(model, spec.estimate)
    assert value is None or math.isfinite(value)
    if spec.ci is not None and value is not None:
        lo, hi = getattr(model, spec.ci)
        assert (lo is None or lo <= value + 1e-12) and (hi is None or value <= hi + 1e-12)


def test_the_confidence_level_is_honoured(spec):
    """A 50% interval lies inside the 95% one, and is narrower."""
    if spec.ci is None:
        pytest.skip("a point estimator")
    d, e = _data(seed=3)
    wide = getattr(spec.fit(spec.make(), d, e, 0.95), spec.ci)
    narrow = getattr(spec.fit(spec.make(), d, e, 0.5), spec.ci)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
