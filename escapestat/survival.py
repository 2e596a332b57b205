"""Escape times as right-censored survival data: rates, medians, RMST and a Poisson check.

The rate of a condition is the censored exponential MLE ``k = D / Σ t_i`` (D escapes,
exposure summed over every replica, censored ones included), with the exact Poisson
(Garwood) interval, which holds for D = 0. Kaplan–Meier curves, medians and their
log(−log) intervals come from lifelines; the Weibull shape (≈ 1 for activated escape)
and a parametric-bootstrap KS test of KM against the fitted exponential under the
same censoring say whether escape looks Poisson-like.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .errors import EscapestatError
from .records import Columns

LEVEL = 0.95


def poisson_rate_ci(events: int, exposure: float, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Garwood) CI for a Poisson rate: χ²(α/2, 2D)/2E and χ²(1−α/2, 2D+2)/2E.

    The lower bound is 0 when D = 0, so the interval stays valid with no escapes.
    """
    if exposure <= 0:
        raise EscapestatError("exposure must be positive")
    alpha = 1.0 - level
    lo = 0.0 if events == 0 else stats.chi2.ppf(alpha / 2, 2 * events) / 2
    hi = stats.chi2.ppf(1 - alpha / 2, 2 * events + 2) / 2
    return float(lo / exposure), float(hi / exposure)


class ExponentialRate:
    """Censored exponential MLE of the escape rate, k = D / Σ t_i, with a Garwood CI.

    Unlike lifelines' ``ExponentialFitter`` (whose ``lambda_`` is the mean time and whose
    Wald interval can go negative with few events), ``rate_`` here is a rate per unit of
    duration and ``rate_ci_`` is exact for any number of events, including zero.
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


def kaplan_meier(durations: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival S(t) at the distinct observed times, Π (1 − d_j / n_j).

    A small NumPy twin of lifelines' estimator, fast enough to call inside bootstraps.
    """
    order = np.argsort(durations, kind="stable")
    t = np.asarray(durations, dtype=float)[order]
    e = np.asarray(events, dtype=float)[order]
    times, first = np.unique(t, return_index=True)
    deaths = np.add.reduceat(e, first)
    at_risk = t.size - first
    return times, np.cumprod(1.0 - deaths / at_risk)


def restricted_mean(times: np.ndarray, surv: np.ndarray, horizon: float) -> float:
    """RMST: the area under the KM step function from 0 to ``horizon``."""
    keep = times < horizon
    knots = np.concatenate(([0.0], times[keep], [horizon]))
    heights = np.concatenate(([1.0], surv[keep]))
    return float(np.sum(np.diff(knots) * heights))


def _ks_to_exponential(times: np.ndarray, surv: np.ndarray, rate: float) -> float:
    """sup_t |KM(t) − exp(−k t)| over the observed range, using both sides of each KM step."""
    model = np.exp(-rate * times)
    before = np.concatenate(([1.0], surv[:-1]))
    return float(max(np.max(np.abs(surv - model)), np.max(np.abs(before - model))))


def _censoring_sampler(durations: np.ndarray, events: np.ndarray):
    """Draws censoring times from the reverse Kaplan–Meier estimate (censoring as the event).

    Administrative censoring at a budget is reproduced exactly; mass left beyond the last
    censoring time means "never censored" (∞).
    """
    c_times, c_surv = kaplan_meier(durations, 1 - events)
    cdf = 1.0 - c_surv

    def draw(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
        u = rng.random(size)
        idx = np.searchsorted(cdf, u, side="left")
        padded = np.concatenate((c_times, [np.inf]))
        return padded[np.minimum(idx, c_times.size)]

    return draw


def poisson_check(
    durations: np.ndarray,
    events: np.ndarray,
    n_bootstrap: int = 499,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Parametric-bootstrap KS test of the KM curve against the fitted exponential.

    Null samples are exponential with the fitted rate under the observed censoring
    pattern (reverse-KM draws), re-fitted each time, so the p-value accounts for both
    the censoring and the estimated rate. Returns (KS statistic, p-value); NaN p-value
    when there are no escapes to test.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if events.sum() == 0:
        return math.nan, math.nan
    rate = events.sum() / durations.sum()
    observed = _ks_to_exponential(*kaplan_meier(durations, events), rate)
    draw_censoring = _censoring_sampler(durations, events)
    n = durations.size
    t_star = rng.exponential(1.0 / rate, size=(n_bootstrap, n))
    c_star = draw_censoring(rng, (n_bootstrap, n))
    obs_star = np.minimum(t_star, c_star)
    ev_star = (t_star <= c_star).astype(int)
    exceed = 0
    for b in range(n_bootstrap):
        d = ev_star[b].sum()
        if d == 0:
            continue  # KM is flat at 1 and exp(−0·t) = 1: statistic 0, never exceeds
        k_b = d / obs_star[b].sum()
        exceed += _ks_to_exponential(*kaplan_meier(obs_star[b], ev_star[b]), k_b) >= observed
    return observed, (1 + exceed) / (n_bootstrap + 1)


def weibull_shape(
    durations: np.ndarray, events: np.ndarray, level: float = LEVEL
) -> tuple[float, tuple[float, float]]:
    """Weibull shape ρ (S = exp(−(t/λ)^ρ)) with a log-scale Wald CI; NaN when not estimable.

    ρ ≈ 1 is Poisson-like (activated) escape; ρ ≫ 1 a deterministic drift-set delay.
    """
    from lifelines import WeibullFitter

    nan = (math.nan, (math.nan, math.nan))
    if events.sum() < 2 or np.unique(durations[events == 1]).size < 2:
        return nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = WeibullFitter().fit(durations, events)
        rho = float(fitter.rho_)
        se = float(np.sqrt(fitter.variance_matrix_.loc["rho_", "rho_"]))
    except Exception:  # lifelines raises several types on degenerate data
        return nan
    if not (np.isfinite(rho) and np.isfinite(se)) or rho <= 0:
        return nan
    z = stats.norm.ppf(0.5 + level / 2)
    return rho, (rho * math.exp(-z * se / rho), rho * math.exp(z * se / rho))


def _km_median(durations: np.ndarray, events: np.ndarray, level: float):
    """KM median and its CI from the log(−log) (exponential Greenwood) bands of lifelines."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    kmf = KaplanMeierFitter(alpha=1 - level).fit(durations, events)
    median = float(kmf.median_survival_time_)
    ci = median_survival_times(kmf.confidence_interval_).to_numpy().ravel()
    lo, hi = (float(v) for v in ci)
    return median, (lo, hi)


def _rmst_with_ci(durations, events, horizon, n_bootstrap, rng, level):
    estimate = restricted_mean(*kaplan_meier(durations, events), horizon)
    n = durations.size
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    boots = np.array(
        [restricted_mean(*kaplan_meier(durations[i], events[i]), horizon) for i in idx]
    )
    alpha = 1 - level
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return estimate, (float(lo), float(hi))


@dataclass
class GroupSummary:
    """Everything ``escapestat fit`` reports for one condition (the §3 JSON contract)."""

    group: object
    n: int
    events: int
    censored: int
    exposure: float
    rate: float
    rate_ci: tuple[float, float]
    tau: float
    tau_ci: tuple[float, float]
    median: float | None
    median_ci: tuple[float | None, float | None]
    median_reached: bool
    rmst: float
    rmst_ci: tuple[float, float]
    rmst_horizon: float
    weibull_shape: float
    weibull_shape_ci: tuple[float, float]
    ks_statistic: float
    poisson_pvalue: float

    def as_dict(self) -> dict:
        return asdict(self)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def describe(
    durations,
    events,
    group: object = "all",
    level: float = LEVEL,
    n_bootstrap: int = 499,
    seed: int = 0,
) -> GroupSummary:
    """Summarise one condition's escape times (see the module docstring for the estimators)."""
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if durations.size == 0:
        raise EscapestatError(f"group {group!r} has no rows")
    rng = np.random.default_rng(seed)
    rate = ExponentialRate().fit(durations, events, level)
    median, (m_lo, m_hi) = _km_median(durations, events, level)
    horizon = float(durations.max())
    rmst, rmst_ci = _rmst_with_ci(durations, events, horizon, n_bootstrap, rng, level)
    shape, shape_ci = weibull_shape(durations, events, level)
    ks, pvalue = poisson_check(durations, events, n_bootstrap, rng)
    return GroupSummary(
        group=group,
        n=rate.n_,
        events=rate.events_,
        censored=rate.n_ - rate.events_,
        exposure=rate.exposure_,
        rate=rate.rate_,
        rate_ci=rate.rate_ci_,
        tau=rate.tau_,
        tau_ci=rate.tau_ci_,
        median=_finite_or_none(median),
        median_ci=(_finite_or_none(m_lo), _finite_or_none(m_hi)),
        median_reached=math.isfinite(median),
        rmst=rmst,
        rmst_ci=rmst_ci,
        rmst_horizon=horizon,
        weibull_shape=shape,
        weibull_shape_ci=shape_ci,
        ks_statistic=ks,
        poisson_pvalue=pvalue,
    )


def summarize(
    df: pd.DataFrame,
    columns: Columns = Columns(),
    level: float = LEVEL,
    n_bootstrap: int = 499,
    seed: int = 0,
) -> list[GroupSummary]:
    """One ``GroupSummary`` per value of the group column (or one group named "all")."""
    if columns.group is None:
        parts = [("all", df)]
    else:
        parts = list(df.groupby(columns.group, sort=True))
    return [
        describe(
            part[columns.duration].to_numpy(),
            part[columns.event].to_numpy(),
            group=key,
            level=level,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for key, part in parts
    ]
