"""Two arms of censored escape times compared: median ratio with a bootstrap CI, log-rank p.

An arm is a training schedule re-run on fresh seeds; the reference is the schedule it is
compared with. Each arm is ``durations`` (> 0, steps or seconds) and ``events`` (1 escaped,
0 right-censored, e.g. at the step budget). ``median_ratio`` answers "does the arm shorten
the median time to generalise?" (ratio < 1, CI below 1) and ``logrank_p`` tests whether
the two escape-time laws differ at all. ``scaled`` turns a step ratio into a wall-clock one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from escapestat.errors import EscapestatError
from escapestat.stats._incidence import (
    EscapeIncidence,
    bootstrap_distribution,
    bounded,
    check_bootstrap,
    check_causes,
    weighted_medians,
)
from escapestat.stats._survival import HALF_TOL, LEVEL, KaplanMeierMedian


@dataclass(frozen=True)
class MedianRatio:
    """Ratio of Kaplan–Meier medians, arm / reference, with its percentile-bootstrap CI.

    Attributes
    ----------
    ratio : float or None
        m̂_arm / m̂_ref; None when either median is not reached (see ``median_ratio``).
    ci : (float or None, float or None)
        Bootstrap interval (lo, hi); a side is None when it is not bounded by a finite
        positive number (lo at 0 or ∞, hi at ∞).
    n_bootstrap : int
        Number of bootstrap resamples.
    """

    ratio: float | None
    ci: tuple[float | None, float | None]
    n_bootstrap: int


def _arm(durations, events, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated float durations (finite, > 0) and int events (0/1) of one arm."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(events)
    if d.ndim != 1 or d.size == 0:
        raise EscapestatError(f"{name}: durations must be a non-empty 1-D array")
    if e.shape != d.shape:
        raise EscapestatError(
            f"{name}: events has shape {e.shape}, durations {d.shape}; they must match"
        )
    if not np.all(np.isfinite(d) & (d > 0)):
        raise EscapestatError(f"{name}: durations must be finite and > 0 (NaN, inf, ≤ 0 found)")
    if e.dtype.kind not in "biuf" or not np.all((e == 0) | (e == 1)):
        raise EscapestatError(f"{name}: events must be 0 (censored) or 1 (escaped)")
    return d, e.astype(int)


def _weighted_km_medians(durations: np.ndarray, events: np.ndarray, counts: np.ndarray):
    """KM medians of one arm under each row of integer ``counts`` (b, n), +inf if not reached.

    Row w is the resample holding replica i w_i times, so its KM is the weighted one on the
    arm's distinct sorted times t_j: d_j = Σ w_i over escapes at t_j, n_j = Σ w_i over
    t_i ≥ t_j, S = cumprod(1 − d_j / n_j), median the first t_j with S ≤ 1/2 + HALF_TOL.
    That is ``KaplanMeierMedian`` on the repeated data, bit for bit (the same integer d_j
    and n_j, the same product order; steps with d_j = 0 multiply by exactly 1).
    """
    order = np.argsort(durations, kind="stable")
    t, e, w = durations[order], events[order], counts[:, order]
    times, first = np.unique(t, return_index=True)
    total = np.add.reduceat(w, first, axis=1)
    deaths = np.add.reduceat(w * e, first, axis=1).astype(float)
    at_risk = (w.sum(axis=1, keepdims=True) - np.cumsum(total, axis=1) + total).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, deaths / at_risk, 0.0)
    hit = np.cumprod(1.0 - hazard, axis=1) <= 0.5 + HALF_TOL
    return np.where(hit.any(axis=1), times[hit.argmax(axis=1)], np.inf)


def median_ratio(
    durations,
    events,
    ref_durations,
    ref_events,
    n_bootstrap: int = 2000,
    level: float = LEVEL,
    seed: int = 0,
) -> MedianRatio:
    r"""Ratio of KM median escape times, arm / reference, with a percentile-bootstrap CI.

    .. math::
        \hat m = \min\{t_j : \hat S(t_j) \le \tfrac12\}, \qquad
        \hat r = \hat m_{\rm arm} / \hat m_{\rm ref}, \qquad
        \mathrm{CI} = \bigl[r^*_{(\alpha/2)},\; r^*_{(1-\alpha/2)}\bigr]

    with the median of ``KaplanMeierMedian``. Each resample redraws the replicas of each arm
    with replacement, the two arms independently (they are independent seeds), and
    r* = m*_arm / m*_ref. The bounds are order statistics of the B values of r* (numpy's
    "lower" quantile for lo, "higher" for hi: no interpolation, and each side is at least
    as wide as the interpolated one). For exponential escape, r = k_ref / k_arm.

    Unreached medians. A median not reached (KM above 1/2 to the end) is +∞. The point
    ratio is None whenever either median is not reached: it is ∞ (arm), 0 (reference) or
    undefined (both), and no finite ratio is estimated. In the bootstrap m* = +∞ where a
    resample does not reach 1/2, r* lives in [0, ∞] (finite/∞ = 0, ∞/finite = ∞), and
    ∞/∞, which is undefined, counts as 0 for lo and ∞ for hi (it widens both sides).
    A bound at 0 or ∞ is reported as None, "not bounded": lo is None when the CI reaches 0
    and hi when it reaches ∞. Thus an unreached arm median gives hi None (no evidence it is
    shorter), an unreached reference median gives lo None, while the other side may still
    be finite. lo is also None when it is ∞ (the arm reaches 1/2 in fewer than α/2 of the
    resamples): the arm is then clearly slower, but no finite ratio bounds it.

    Parameters
    ----------
    durations, events : the arm's escape times (> 0) and flags (1 escaped, 0 censored).
    ref_durations, ref_events : the same for the reference arm.
    n_bootstrap : resamples B (≥ 1).
    level : two-sided coverage 1 − α of the CI.
    seed : seed of ``numpy.random.default_rng``; the result is a function of it.

    Returns
    -------
    MedianRatio
    """
    d, e = _arm(durations, events, "arm")
    d_ref, e_ref = _arm(ref_durations, ref_events, "reference")
    check_bootstrap(n_bootstrap, level)
    n_bootstrap = int(n_bootstrap)
    m = KaplanMeierMedian().fit(d, e).median_
    m_ref = KaplanMeierMedian().fit(d_ref, e_ref).median_
    ratio = None if m is None or m_ref is None else m / m_ref

    ratios = bootstrap_distribution(
        (d.size, d_ref.size),
        lambda w, w_ref: (_weighted_km_medians(d, e, w)
                          / _weighted_km_medians(d_ref, e_ref, w_ref)),  # ∞/∞ → NaN
        n_bootstrap, np.random.default_rng(seed))
    return MedianRatio(ratio, _ratio_ci(ratios, level), n_bootstrap)


def incidence_median_ratio(
    durations,
    cause,
    ref_durations,
    ref_cause,
    n_bootstrap: int = 2000,
    level: float = LEVEL,
    seed: int = 0,
) -> MedianRatio:
    r"""Ratio of the medians of the incidence of escape, arm / reference, bootstrap CI.

    ``median_ratio`` with a diverged replica as a competing event (cause 2) instead of a
    censored one: the median is where the Aalen–Johansen incidence of escape reaches ½
    (``EscapeIncidence``), so an arm cannot look faster by diverging. Causes are 0
    censored, 1 escaped, 2 diverged; resampling, unreached medians, ∞/∞ and bounds
    reported as None follow ``median_ratio``. With no divergence the incidence is
    1 − KM, and the result equals ``median_ratio``'s for the same seed.
    """
    d, c = check_causes(durations, cause, "arm")
    d_ref, c_ref = check_causes(ref_durations, ref_cause, "reference")
    check_bootstrap(n_bootstrap, level)
    m = EscapeIncidence().fit(d, c).median_
    m_ref = EscapeIncidence().fit(d_ref, c_ref).median_
    ratio = None if m is None or m_ref is None else m / m_ref
    ratios = bootstrap_distribution(
        (d.size, d_ref.size),
        lambda w, w_ref: weighted_medians(d, c, w) / weighted_medians(d_ref, c_ref, w_ref),
        int(n_bootstrap), np.random.default_rng(seed))
    return MedianRatio(ratio, _ratio_ci(ratios, level), int(n_bootstrap))


def _ratio_ci(r: np.ndarray, level: float):
    """Percentile CI of bootstrap ratios r*: ∞/∞ (NaN) widens both sides, unbounded sides
    are None."""
    alpha = 1.0 - level
    lo = np.quantile(np.where(np.isnan(r), 0.0, r), alpha / 2, method="lower")
    hi = np.quantile(np.where(np.isnan(r), np.inf, r), 1 - alpha / 2, method="higher")
    return (bounded(lo), bounded(hi))


def scaled(ratio: MedianRatio, factor: float) -> MedianRatio:
    """The ratio and both CI bounds multiplied by ``factor`` > 0; None stays None.

    With factor = (arm seconds per step) / (reference seconds per step) this is the
    wall-clock median ratio: KM medians and the bootstrap commute with a positive scale,
    so it equals ``median_ratio(d * s_arm, e, d_ref * s_ref, e_ref)`` for the same seed
    (to rounding), the CI included, treating the seconds per step as known constants.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise EscapestatError(f"factor must be finite and > 0, got {factor}")

    def mul(x: float | None) -> float | None:
        return None if x is None else x * factor

    return replace(ratio, ratio=mul(ratio.ratio), ci=(mul(ratio.ci[0]), mul(ratio.ci[1])))


@dataclass(frozen=True)
class TimeRatio:
    """How much longer the arm's escape times are than the reference's, from the whole
    curve: the acceleration factor exp(β) of a Weibull AFT model with the arm as its
    covariate, with a Wald CI. ``detectable``: the smallest factor (either way) that this
    many escapes would show with 80% power at the 5% level, exp(2.80 · SE).

    A ratio of medians moves in whole checks, so two arms a few checks apart give a coarse
    ratio (zero-width CIs where the medians differ by 4%); the time ratio uses every escape
    and, on the grid, fits each escape as the interval (t − grid, t]."""

    ratio: float | None
    ci: tuple[float | None, float | None]
    detectable: float | None


_POWER_Z = 1.959964 + 0.841621  # two-sided 5% test, 80% power
#: A fitted Weibull shape above this means each arm's escapes sit within a check or two:
#: the grid, not the model, sets their spread, and no time ratio is estimated (a tiny
#: search printed "time 1.38 [4.18e-17, 4.57e+16]" and "detectable ×1.84e+32" there).
MAX_SHAPE = 50.0


def time_ratio(durations, events, ref_durations, ref_events, grid: float | None = None,
               level: float = LEVEL) -> TimeRatio:
    """``TimeRatio`` of an arm against its reference (both right-censored, e.g. at the
    budget; a diverged replica is at risk to the budget: it never escapes). None where the
    model cannot be fitted (an arm without escapes)."""
    from lifelines import WeibullAFTFitter
    from scipy import stats

    d, e = _arm(durations, events, "arm")
    rd, re_ = _arm(ref_durations, ref_events, "reference")
    none = TimeRatio(None, (None, None), None)
    if e.sum() == 0 or re_.sum() == 0:
        return none
    t = np.concatenate([d, rd])
    ev = np.concatenate([e, re_]).astype(int)
    arm = np.concatenate([np.ones(d.size), np.zeros(rd.size)])
    scale = float(np.median(t[ev == 1]))  # O(1) times for the optimiser
    frame = {"arm": arm}
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if grid is None:
                df = pd.DataFrame({**frame, "t": t / scale, "e": ev})
                aft = WeibullAFTFitter(alpha=1 - level).fit(df, "t", "e")
            else:
                lower = np.where(ev == 1, np.maximum(t - grid, 0.0), t) / scale
                upper = np.where(ev == 1, t, np.inf) / scale
                df = pd.DataFrame({**frame, "lo": lower, "hi": upper})
                aft = WeibullAFTFitter(alpha=1 - level).fit_interval_censoring(df, "lo", "hi")
        beta = float(aft.params_[("lambda_", "arm")])
        se = float(aft.standard_errors_[("lambda_", "arm")])
        shape = math.exp(min(float(aft.params_[("rho_", "Intercept")]), 700.0))
    except Exception:  # lifelines raises several types when a fit cannot converge
        return none
    if not (math.isfinite(beta) and math.isfinite(se)) or se > 50 or shape > MAX_SHAPE:
        return none
    z = float(stats.norm.ppf(0.5 + level / 2))
    return TimeRatio(math.exp(beta), (math.exp(beta - z * se), math.exp(beta + z * se)),
                     math.exp(_POWER_Z * se))


def logrank_p(durations, events, ref_durations, ref_events) -> float:
    r"""Two-sided log-rank p-value for equal escape-time laws in the arm and the reference.

    .. math::
        U = \frac{\bigl(\sum_j (d_{1j} - d_j n_{1j}/n_j)\bigr)^2}
                 {\sum_j d_j \frac{n_{1j}}{n_j}\bigl(1-\frac{n_{1j}}{n_j}\bigr)
                  \frac{n_j - d_j}{n_j - 1}} \sim \chi^2_1

    over the pooled escape times t_j (d_j escapes among n_j at risk, d_{1j} and n_{1j} in
    the arm), via ``lifelines.statistics.logrank_test``. Most powerful against
    proportional hazards (e.g. two exponential arms); crossing curves lose power.
    With no escape in either arm there is nothing to compare and the p-value is 1.0
    (lifelines also gives 1.0 there, U = 0; it is fixed here, not left to its pinv).
    """
    from lifelines.statistics import logrank_test

    d, e = _arm(durations, events, "arm")
    d_ref, e_ref = _arm(ref_durations, ref_events, "reference")
    if e.sum() + e_ref.sum() == 0:
        return 1.0
    result = logrank_test(d, d_ref, event_observed_A=e, event_observed_B=e_ref)
    return float(result.p_value)
