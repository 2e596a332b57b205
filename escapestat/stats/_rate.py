"""The escape rate of one condition: the censored exponential MLE k = D / Σ t_i with its exact
Poisson (Garwood) interval, and ``LEVEL``, the survival estimators' confidence level."""

from __future__ import annotations

import math

import numpy as np

from escapestat.errors import EscapestatError

LEVEL = 0.95


def poisson_rate_ci(events: int, exposure: float, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Garwood) CI for a Poisson rate: χ²(α/2, 2D)/2E and χ²(1−α/2, 2D+2)/2E
    (statsmodels' ``confint_poisson(method="exact-c")``).

    The lower bound is 0 when D = 0, so the interval stays valid with no escapes.
    """
    from statsmodels.stats.rates import confint_poisson

    if exposure <= 0:
        raise EscapestatError("exposure must be positive")
    lo, hi = confint_poisson(int(events), float(exposure), method="exact-c", alpha=1 - level)
    return float(lo), float(hi)


class ExponentialRate:
    r"""Censored exponential MLE of the escape rate with an exact Garwood CI.

    .. math:: S(t) = e^{-k t}, \qquad \hat k = D / \textstyle\sum_i t_i

    Unlike lifelines' ``ExponentialFitter`` (whose ``lambda_`` is the mean time and whose
    Wald interval can go negative with few events), ``rate_`` is a rate per unit of
    duration and ``rate_ci_`` is exact for any number of events, including zero.

    Attributes
    ----------
    n_, events_, exposure_ : replicas, escapes D and Σ t_i.
    rate_, rate_ci_ : k̂ and its Garwood interval.
    tau_, tau_ci_ : 1/k̂ and the inverted interval (∞ where the rate bound is 0).
    """

    def fit(self, durations, events, level: float = LEVEL) -> ExponentialRate:
        durations = np.asarray(durations, dtype=float)
        events = np.asarray(events, dtype=int)
        self.n_ = int(durations.size)
        self.events_ = int(events.sum())
        self.exposure_ = float(durations.sum())
        self.rate_ = self.events_ / self.exposure_
        self.rate_ci_ = poisson_rate_ci(self.events_, self.exposure_, level)
        self.tau_ = math.inf if self.rate_ == 0 else 1.0 / self.rate_
        lo, hi = self.rate_ci_
        self.tau_ci_ = (1.0 / hi, math.inf if lo == 0 else 1.0 / lo)
        return self
