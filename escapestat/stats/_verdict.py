"""Which mechanism a condition's escape times show: activated, deterministic, absorbing.

The rule, per condition (docs/statistics.md):

- ``absorbing``: no escapes at all, and the run shows the state stable (``stability``:
  its order parameter did not rise toward the threshold over the last half); the rate
  is bounded above (its exact 95% upper limit is reported), not measured;
- ``not reached``: no escapes within the budget, but the order parameter was still
  rising (the reason names the budget that would decide it), or nothing recorded shows
  whether it was (a table measured elsewhere);
- ``deterministic``: the Weibull shape's lower 95% bound is ≥ 2 — the times are narrow,
  set by a drift, not by waiting for a rare kick (a Poisson process has shape 1);
- ``activated``: the shape's CI contains 1 and the grid-aware KS test of exponentiality
  does not reject — memoryless escape, as over a barrier. The two are one test of
  "exponential" at 5% (Bonferroni: the shape's 97.5% CI, KS at 2.5%): two separate 5%
  tests called 9.5% of exponential datasets inconclusive;
- ``inconclusive``: anything else (fewer than ``MIN_N`` escapes, or replicas for
  ``absorbing``; a shape away from 1 but below 2; a KS rejection).

On the check grid the shape is fitted interval-censored on (t − grid, t] (``survival``):
fitted as exact, rounded-up times look narrower than they are and exponential escape
was called inconclusive in 90% of datasets at τ/grid = 10.

A run without noise (``noiseless``: full-batch gradient descent) cannot escape by
activation: its escapes are ``deterministic`` whatever their spread, which then comes
from each replica's own start and data. Measured: the sparse sub-sampling run with 20
inputs spreads its full-batch times with Weibull shape 1.0 — exponential-looking, and
not noise at all; the shape alone would have called it activated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeGuard

from escapestat.stats._stability import Trend

ACTIVATED, DETERMINISTIC, ABSORBING, NOT_REACHED, INCONCLUSIVE = (
    "activated", "deterministic", "absorbing", "not reached", "inconclusive")
FAMILY_LEVEL = 0.05  # chance that exponential escape is not called activated
KS_LEVEL = FAMILY_LEVEL / 2
DETERMINISTIC_SHAPE = 2.0
#: A mechanism is named from at least this many escapes (or, for ``absorbing``, replicas):
#: two runs gave "deterministic" with Weibull shape 75.6, one censored run "absorbing".
MIN_N = 8


@dataclass(frozen=True)
class Verdict:
    mechanism: str
    reason: str


def _finite(x: object) -> TypeGuard[float]:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _widened(lo: float, hi: float) -> tuple[float, float]:
    """The shape's 95% log-scale Wald CI widened to 1 − FAMILY_LEVEL/2 (97.5%)."""
    z95, z = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(1 - FAMILY_LEVEL / 4)
    centre, half = math.log(lo * hi) / 2, math.log(hi / lo) / 2 * z / z95
    return math.exp(centre - half), math.exp(centre + half)


def mechanism(n: int, events: int, weibull_shape_ci, poisson_pvalue,
              rate_upper: float | None = None, noiseless: bool = False,
              trend: Trend | None = None) -> Verdict:
    """The verdict for one condition from its summary numbers (see the module docstring);
    ``trend``: how its censored replicas' order parameter moved (``stability.trend``)."""
    if events == 0:
        bound = f"; rate ≤ {rate_upper:.3g} per unit time (95%)" if _finite(rate_upper) else ""
        head = f"no escapes in {n} replicas{bound}"
        if trend is None:
            return Verdict(NOT_REACHED, f"{head}; nothing recorded shows whether the state "
                                        f"is stable or still moving")
        if trend.moving:
            return Verdict(NOT_REACHED, f"{head}; {trend.describe()}")
        if n < MIN_N:
            return Verdict(INCONCLUSIVE, f"{head}; {trend.describe()}; absorbing needs at "
                                         f"least {MIN_N} replicas")
        return Verdict(ABSORBING, f"{head}; {trend.describe()}")
    lo, hi = weibull_shape_ci if weibull_shape_ci is not None else (None, None)
    if noiseless:
        shape = f" (Weibull shape CI [{lo:.3g}, {hi:.3g}])" if _finite(lo) and _finite(hi) else ""
        return Verdict(DETERMINISTIC, f"no noise (full batch): each replica's time is set by "
                                      f"its own start and data{shape}")
    if events < MIN_N:
        return Verdict(INCONCLUSIVE, f"{events} escapes: a mechanism needs at least {MIN_N}")
    if not (_finite(lo) and _finite(hi)):
        return Verdict(INCONCLUSIVE, f"{events} escapes: too few for a Weibull shape CI")
    if lo >= DETERMINISTIC_SHAPE:
        return Verdict(DETERMINISTIC, f"Weibull shape ≥ {lo:.3g} (95% lower bound): narrow, "
                                      f"drift-set times")
    wide_lo, wide_hi = _widened(lo, hi)
    ci = f"shape 97.5% CI [{wide_lo:.3g}, {wide_hi:.3g}]"
    if wide_lo <= 1 <= wide_hi:
        if _finite(poisson_pvalue) and poisson_pvalue < KS_LEVEL:
            return Verdict(INCONCLUSIVE, f"{ci} holds 1 but the KS test rejects exponential "
                                         f"(p {poisson_pvalue:.2g} < {KS_LEVEL:g})")
        return Verdict(ACTIVATED, f"{ci} holds 1; KS p {poisson_pvalue:.2g}"
                       if _finite(poisson_pvalue) else f"{ci} holds 1")
    side = "above" if wide_lo > 1 else "below"
    return Verdict(INCONCLUSIVE, f"{ci} lies {side} 1 but not ≥ 2")
