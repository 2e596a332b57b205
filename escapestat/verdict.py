"""Which mechanism a condition's escape times show: activated, deterministic, absorbing.

Design §4's rule, per condition:

- ``absorbing``: no escapes at all — the trap held every replica to the budget; the rate
  is bounded above (its exact 95% upper limit is reported), not measured;
- ``deterministic``: the Weibull shape's lower 95% bound is ≥ 2 — the times are narrow,
  set by a drift, not by waiting for a rare kick (a Poisson process has shape 1);
- ``activated``: the shape's CI contains 1 and the grid-aware KS test of exponentiality
  does not reject at 5% — memoryless escape, as over a barrier;
- ``inconclusive``: anything else (too few escapes, a shape away from 1 but below 2,
  or a KS rejection).

A run without noise (``noiseless``: full-batch gradient descent) cannot escape by
activation: its escapes are ``deterministic`` whatever their spread, which then comes
from each replica's own start and data. Measured: the sparse sub-sampling run with 20
inputs spreads its full-batch times with Weibull shape 1.0 — exponential-looking, and
not noise at all; the shape alone would have called it activated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ACTIVATED, DETERMINISTIC, ABSORBING, INCONCLUSIVE = (
    "activated", "deterministic", "absorbing", "inconclusive")
KS_LEVEL = 0.05
DETERMINISTIC_SHAPE = 2.0


@dataclass(frozen=True)
class Verdict:
    mechanism: str
    reason: str


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def mechanism(n: int, events: int, weibull_shape_ci, poisson_pvalue,
              rate_upper: float | None = None, noiseless: bool = False) -> Verdict:
    """The verdict for one condition from its summary numbers (see the module docstring)."""
    if events == 0:
        bound = f"; rate ≤ {rate_upper:.3g} per unit time (95%)" if _finite(rate_upper) else ""
        return Verdict(ABSORBING, f"no escapes in {n} replicas{bound}")
    lo, hi = weibull_shape_ci if weibull_shape_ci is not None else (None, None)
    if noiseless:
        shape = f" (Weibull shape CI [{lo:.3g}, {hi:.3g}])" if _finite(lo) and _finite(hi) else ""
        return Verdict(DETERMINISTIC, f"no noise (full batch): each replica's time is set by "
                                      f"its own start and data{shape}")
    if not (_finite(lo) and _finite(hi)):
        return Verdict(INCONCLUSIVE, f"{events} escapes: too few for a Weibull shape CI")
    if lo >= DETERMINISTIC_SHAPE:
        return Verdict(DETERMINISTIC, f"Weibull shape ≥ {lo:.3g} (95% lower bound): narrow, "
                                      f"drift-set times")
    if lo <= 1 <= hi:
        if _finite(poisson_pvalue) and poisson_pvalue < KS_LEVEL:
            return Verdict(INCONCLUSIVE, f"shape CI [{lo:.3g}, {hi:.3g}] holds 1 but the KS "
                                         f"test rejects exponential (p {poisson_pvalue:.2g})")
        return Verdict(ACTIVATED, f"shape CI [{lo:.3g}, {hi:.3g}] holds 1; KS p "
                                  f"{poisson_pvalue:.2g}" if _finite(poisson_pvalue)
                       else f"shape CI [{lo:.3g}, {hi:.3g}] holds 1")
    side = "above" if lo > 1 else "below"
    return Verdict(INCONCLUSIVE, f"shape CI [{lo:.3g}, {hi:.3g}] lies {side} 1 but not ≥ 2")
