"""Kaplan–Meier on lifelines' event table: the survival curve, the median with its
log(−log) Greenwood interval and the restricted mean (RMST) with a Greenwood-type CI."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.stats._rate import LEVEL

HALF_TOL = 1e-9  # S(t) ≤ 1/2 + HALF_TOL counts as reaching 1/2: float rounding, not sampling


def _event_table(durations, events) -> pd.DataFrame:
    """lifelines' event table at the distinct observed times: ``observed`` d_j, ``censored``
    c_j and ``at_risk`` n_j (those censored at t_j are at risk at t_j). Read-only: the
    last few are kept, since one group's median, RMST and KS test ask for the same one."""
    d = np.ascontiguousarray(durations, dtype=float)
    e = np.ascontiguousarray(events, dtype=int)
    return _cached_event_table(d.tobytes(), e.tobytes())


@functools.lru_cache(maxsize=8)
def _cached_event_table(durations: bytes, events: bytes) -> pd.DataFrame:
    from lifelines.utils import survival_table_from_events

    table = survival_table_from_events(np.frombuffer(durations, dtype=float),
                                       np.frombuffer(events, dtype=int))
    return table[table["removed"] > 0]


def _km_table(durations, events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct times t_j with escapes d_j and number at risk n_j (censored at t_j included)."""
    table = _event_table(durations, events)
    return (table.index.to_numpy(dtype=float), table["observed"].to_numpy(dtype=float),
            table["at_risk"].to_numpy(dtype=float))


def kaplan_meier(durations: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival S(t) at the distinct observed times, Π (1 − d_j / n_j), on
    lifelines' event table (equal to its ``KaplanMeierFitter`` to rounding)."""
    times, deaths, at_risk = _km_table(durations, events)
    return times, np.cumprod(1.0 - deaths / at_risk)


def restricted_mean(times: np.ndarray, surv: np.ndarray, horizon: float) -> float:
    """RMST: the area under the KM step function from 0 to ``horizon``."""
    keep = times < horizon
    knots = np.concatenate(([0.0], times[keep], [horizon]))
    heights = np.concatenate(([1.0], surv[keep]))
    return float(np.sum(np.diff(knots) * heights))


def _km_at_escapes(durations, events):
    """KM at the escape times only: t_j, d_j, n_j, S(t_j) and the Greenwood sum Σ d/(n(n−d))."""
    times, deaths, at_risk = _km_table(durations, events)
    hit = deaths > 0
    t, d, r = times[hit], deaths[hit], at_risk[hit]
    with np.errstate(divide="ignore"):
        greenwood = np.cumsum(d / (r * (r - d)))  # ∞ from the step where S reaches 0
    return t, d, r, np.cumprod(1.0 - d / r), greenwood


#: Scales of the KM band: lifelines' log(−log) (escapestat's default) and R's log.
CI_TRANSFORMS = ("log-log", "log")


class KaplanMeierMedian:
    r"""Kaplan–Meier median escape time with the log(−log) Greenwood (Brookmeyer–Crowley) CI.

    .. math::
        \hat S(t) = \prod_{t_j \le t} \Bigl(1 - \frac{d_j}{n_j}\Bigr), \qquad
        \hat m = \min\{t_j : \hat S(t_j) \le \tfrac12\}, \qquad
        \sigma^2(t) = \sum_{t_j \le t} \frac{d_j}{n_j (n_j - d_j)}

    The pointwise band is :math:`\hat S^{\exp(\pm z \sigma / \log \hat S)}` (lifelines'
    "exponential Greenwood"; R's ``survfit`` defaults to the log band
    :math:`\hat S e^{\pm z\sigma}`, ``transform="log"``); the CI for m is the set of
    times where it contains 1/2, so its lower limit is the first t_j at which the lower
    band is ≤ 1/2 and its upper limit the first at which the upper band is.

    Rules. "≤ 1/2" means ≤ 1/2 + 1e-9, so S = 1/2 exactly (k of 2k escaped, none censored
    before) gives t_(k) whatever the rounding of the product. Where S = 0 the band is
    undefined: the lower band is taken as 0 there (its limit; it lies below S), so a
    reached median always has a lower limit. The upper band at the step where S falls to 0
    (all n_j at risk escape) is the band before it times the exact binomial bound on the
    step's survival, 1 − (α/2)^(1/n_j) (no survivor of n_j); so a step of ≥ 6 ties ends the
    band below ½ (n identical escapes at t give (t, t), the order-statistic CI of a tied
    sample), while n = 1 gives (t_1, None). None means "not reached" for the median and
    both limits.

    Attributes
    ----------
    median_ : m̂, or None when the KM stays above 1/2 ("not reached").
    median_ci_ : (lo, hi), each None when not reached.
    """

    def fit(self, durations, events, level: float = LEVEL,
            transform: str = "log-log") -> KaplanMeierMedian:
        """``transform``: the band's scale, "log-log" (default, lifelines') or "log" (R
        survfit's default ``conf.type``: S·exp(±zσ), capped at 1)."""
        if transform not in CI_TRANSFORMS:
            raise ValueError(f"transform must be one of {CI_TRANSFORMS}, got {transform!r}")
        t, _, at_risk, surv, greenwood = _km_at_escapes(durations, events)
        z = stats.norm.ppf(0.5 + level / 2)
        lower, upper = np.zeros_like(surv), np.full_like(surv, np.nan)
        alive = surv > 0
        log_s = np.log(surv[alive])
        if transform == "log":
            sigma = np.sqrt(greenwood[alive])
            lower[alive] = np.exp(log_s - z * sigma)
            upper[alive] = np.minimum(np.exp(log_s + z * sigma), 1.0)
        else:
            half_width = z * np.sqrt(greenwood[alive]) / -log_s
            lower[alive] = np.exp(-np.exp(np.log(-log_s) + half_width))
            upper[alive] = np.exp(-np.exp(np.log(-log_s) - half_width))
        if not alive.all():  # the step where every replica still at risk escaped
            j = int(np.argmin(alive))
            before = upper[j - 1] if j else 1.0
            upper[j] = before * (1 - ((1 - level) / 2) ** (1 / at_risk[j]))

        def first_half(curve: np.ndarray) -> float | None:
            hit = np.flatnonzero(curve <= 0.5 + HALF_TOL)  # NaN (undefined) never hits
            return float(t[hit[0]]) if hit.size else None

        self.median_ = first_half(surv)
        self.median_ci_ = (first_half(lower), first_half(upper))
        return self


class RestrictedMean:
    r"""Restricted mean escape time (RMST) to a horizon h, with a Greenwood-type CI.

    .. math::
        \hat\mu = \int_0^h \hat S(t)\,dt, \qquad
        \widehat{\mathrm{Var}}\,\hat\mu = \frac{n}{n-1} \sum_{t_j \le h} A_j^2
        \frac{d_j}{n_j (n_j - d_j)}, \qquad A_j = \int_{t_j}^{h} \hat S(t)\,dt

    The sum is Klein & Moeschberger's (§4.5; steps with n_j = d_j have A_j = 0). Without
    censoring it is the plug-in variance of mean(min(t, h)), so n/(n − 1) makes it the
    unbiased s²/n. The CI is normal on the logit of μ/h (0 < μ ≤ h): it stays in (0, h) and
    skews as small samples do. Where the variance is 0 — no escape before h (μ̂ = h), or
    every replica escaped at one time — the data cannot say how far below h (or that
    time) μ lies: the CI is (None, h) or (None, None), "not estimable", never a point.

    Attributes
    ----------
    rmst_, rmst_ci_, se_ : μ̂, its interval (a limit None where not estimable) and SE.
    horizon_ : h (default: the largest observed time).
    """

    def fit(
        self, durations, events, horizon: float | None = None, level: float = LEVEL
    ) -> RestrictedMean:
        h = float(np.max(durations)) if horizon is None else float(horizon)
        t, d, r, surv, _ = _km_at_escapes(durations, events)
        keep = t <= h
        t, d, r, surv = t[keep], d[keep], r[keep], surv[keep]
        pieces = surv * np.diff(np.append(t, h))  # area of each KM step up to h
        area_after = np.cumsum(pieces[::-1])[::-1]  # A_j
        ok = r > d
        terms = area_after[ok] ** 2 * d[ok] / (r[ok] * (r[ok] - d[ok]))
        n = np.size(durations)
        self.horizon_ = h
        self.rmst_ = float((t[0] if t.size else h) + pieces.sum())
        self.se_ = float(np.sqrt(n / max(n - 1, 1) * terms.sum()))
        self.rmst_ci_: tuple[float | None, float | None]
        if self.rmst_ >= h or self.se_ == 0:
            self.rmst_ci_ = (None, h if self.rmst_ >= h else None)
            return self
        z = stats.norm.ppf(0.5 + level / 2)
        centre = math.log(self.rmst_ / (h - self.rmst_))
        half = z * self.se_ * h / (self.rmst_ * (h - self.rmst_))  # delta method
        lo, hi = (h / (1 + math.exp(-(centre + s * half))) for s in (-1, 1))
        self.rmst_ci_ = (lo, hi)
        return self
