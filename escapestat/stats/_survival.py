"""Escape times as right-censored survival data: rates, medians, RMST and a Poisson check.

The rate of a condition is the censored exponential MLE ``k = D / Σ t_i`` (D escapes,
exposure summed over every replica, censored ones included), with the exact Poisson
(Garwood) interval, which holds for D = 0. The Kaplan–Meier median (log(−log) Greenwood
interval) and the restricted mean (Greenwood-type variance) come from lifelines' event
table (escapes and numbers at risk), with our rules at S = 1/2 and S = 0 on top, stated in
the estimators. The Weibull shape (≈ 1 for
activated escape) and a parametric-bootstrap KS test of KM against the fitted exponential,
under the same censoring and on the same check grid, say whether escape looks Poisson-like.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.errors import EscapestatError
from escapestat.stats import _stability as stability
from escapestat.stats._stability import Trend
from escapestat.stats._verdict import mechanism
from escapestat.table._records import Columns

LEVEL = 0.95
#: Parametric-bootstrap draws of the KS test, for every command (one table, one verdict).
KS_BOOTSTRAP = 499
HALF_TOL = 1e-9  # S(t) ≤ 1/2 + HALF_TOL counts as reaching 1/2: float rounding, not sampling


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


class KaplanMeierMedian:
    r"""Kaplan–Meier median escape time with the log(−log) Greenwood (Brookmeyer–Crowley) CI.

    .. math::
        \hat S(t) = \prod_{t_j \le t} \Bigl(1 - \frac{d_j}{n_j}\Bigr), \qquad
        \hat m = \min\{t_j : \hat S(t_j) \le \tfrac12\}, \qquad
        \sigma^2(t) = \sum_{t_j \le t} \frac{d_j}{n_j (n_j - d_j)}

    The pointwise band is :math:`\hat S^{\exp(\pm z \sigma / \log \hat S)}` (lifelines'
    "exponential Greenwood"); the CI for m is the set of times where it contains 1/2, so
    its lower limit is the first t_j at which the lower band is ≤ 1/2 and its upper limit
    the first at which the upper band is.

    Rules. "≤ 1/2" means ≤ 1/2 + 1e-9, so S = 1/2 exactly (k of 2k escaped, none censored
    before) gives t_(k) whatever the rounding of the product. Where S = 0 the band is
    undefined: the lower band is taken as 0 there (its limit; it lies below S), so a
    reached median always has a lower limit; the upper band is not extended, so an upper
    limit not reached while S > 0 is None, never the time the KM drops to 0 (n = 1 gives
    (t_1, None)). None means "not reached" for the median and both limits.

    Attributes
    ----------
    median_ : m̂, or None when the KM stays above 1/2 ("not reached").
    median_ci_ : (lo, hi), each None when not reached.
    """

    def fit(self, durations, events, level: float = LEVEL) -> KaplanMeierMedian:
        t, _, _, surv, greenwood = _km_at_escapes(durations, events)
        z = stats.norm.ppf(0.5 + level / 2)
        lower, upper = np.zeros_like(surv), np.full_like(surv, np.nan)
        alive = surv > 0
        log_s = np.log(surv[alive])
        half_width = z * np.sqrt(greenwood[alive]) / -log_s
        lower[alive] = np.exp(-np.exp(np.log(-log_s) + half_width))
        upper[alive] = np.exp(-np.exp(np.log(-log_s) - half_width))

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
    skews as small samples do. No escape before h: μ̂ = h, variance 0, the CI collapses.

    Attributes
    ----------
    rmst_, rmst_ci_, se_ : μ̂, its interval and standard error.
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
        if self.rmst_ >= h or self.se_ == 0:
            self.rmst_ci_ = (self.rmst_, self.rmst_)
            return self
        z = stats.norm.ppf(0.5 + level / 2)
        centre = math.log(self.rmst_ / (h - self.rmst_))
        half = z * self.se_ * h / (self.rmst_ * (h - self.rmst_))  # delta method
        self.rmst_ci_ = tuple(h / (1 + math.exp(-(centre + s * half))) for s in (-1, 1))
        return self


def _model_survival(t, rate: float, grid: float | None):
    """Fitted survival at t and just before t: exp(−k t), or on a grid that of the recorded
    (rounded-up) time, (1 − k g)^⌊t/g⌋, where k g = D / Σ(t/g) is the per-check MLE."""
    if grid is None:
        s = np.exp(-rate * np.asarray(t))
        return s, s
    log_q = math.log1p(-min(rate * grid, 1 - 1e-12))
    checks = np.asarray(t) / grid
    return np.exp(log_q * np.floor(checks + 1e-9)), np.exp(log_q * (np.ceil(checks - 1e-9) - 1))


def _ks_from_km(times, deaths, at_risk, t_end: float, rate: float, grid: float | None) -> float:
    """sup |KM − model| on [0, t_end]: KM is flat between escapes and the model falls, so
    both sides of each escape step and t_end suffice (= checking every distinct time)."""
    surv = np.cumprod(1.0 - deaths / at_risk)
    at, just_before = _model_survival(times, rate, grid)
    before = np.concatenate(([1.0], surv[:-1]))
    tail = abs(surv[-1] - float(_model_survival(t_end, rate, grid)[0]))
    return float(max(np.max(np.abs(surv - at)), np.max(np.abs(before - just_before)), tail))


def _censoring_law(durations: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse Kaplan–Meier law of the censoring time: support c_j and their masses.

    From lifelines' event table, with one rule of ours at ties: the hazard at t is
    censored / (at risk − escaped), as an escape recorded at check t only shows C ≥ t (the
    engine counts an escape at the budget check), so a budget is reproduced exactly.
    lifelines' ``KaplanMeierFitter().fit(d, 1 − e)`` keeps those escapes at risk (C > t);
    without ties the two are equal. Mass left past the last censoring goes to the largest
    time, not ∞ (which gave 1.7% rejections at 5% under random censoring).
    """
    table = _event_table(durations, events)
    times = table.index.to_numpy(dtype=float)
    censored = table["censored"].to_numpy(dtype=float)
    at_risk = table["at_risk"].to_numpy(dtype=float)
    deaths = table["observed"].to_numpy(dtype=float)
    hit = censored > 0
    survive = np.cumprod(1.0 - censored[hit] / (at_risk[hit] - deaths[hit]))
    mass = -np.diff(np.concatenate(([1.0], survive, [0.0])))
    mass = np.clip(mass, 0.0, None)
    return np.append(times[hit], times[-1]), mass / mass.sum()


def _null_ks(rng, n: int, rate: float, support, mass, grid: float | None) -> float:
    """KS statistic of one null sample in O(n), no sort: escape times are drawn sorted
    (Rényi: cumulated Exp(1)/(n − i) spacings), censoring cells i.i.d., KM from counts."""
    t = np.cumsum(rng.standard_exponential(n) / np.arange(n, 0, -1)) / rate
    if grid is not None:
        t = np.ceil(t / grid) * grid
    if mass.size <= 64:  # few censoring times (a budget): inverse-CDF draws are cheapest
        cell = rng.choice(mass.size, size=n, p=mass)
    else:
        cell = rng.permutation(np.repeat(np.arange(mass.size), rng.multinomial(n, mass)))
    c = support[cell]
    escaped = t <= c
    esc_t = t[escaped]  # sorted
    if esc_t.size == 0:
        return 0.0  # KM flat at 1 and exp(−0·t) = 1
    first = np.flatnonzero(np.concatenate(([True], esc_t[1:] != esc_t[:-1])))
    times = esc_t[first]
    deaths = np.diff(np.append(first, esc_t.size)).astype(float)
    censored_below = np.cumsum(np.bincount(cell[~escaped] + 1, minlength=mass.size + 1))
    at_risk = (n - first - censored_below[np.searchsorted(support, times)]).astype(float)
    t_end = max(times[-1], c[~escaped].max(initial=0.0))
    k = esc_t.size / np.minimum(t, c).sum()
    return _ks_from_km(times, deaths, at_risk, t_end, k, grid)


def poisson_check(
    durations: np.ndarray,
    events: np.ndarray,
    n_bootstrap: int = KS_BOOTSTRAP,
    rng: np.random.Generator | None = None,
    *,
    grid: float | None = None,
) -> tuple[float, float]:
    """Parametric-bootstrap KS test of the KM curve against the fitted exponential.

    Null samples: exponential at the fitted rate under the observed (reverse-KM) censoring,
    re-fitted each time, one at a time (O(n) memory). With ``grid`` (``check_every``) null
    escape times are rounded up to it, as the engine records them, and KM is compared with
    the survival of rounded times (else the statistic measures the rounding). Returns
    (KS statistic, p-value); NaN p-value when there are no escapes to test.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if events.sum() == 0:
        return math.nan, math.nan
    if grid is not None and not grid > 0:
        raise EscapestatError(f"grid must be positive, got {grid}")
    rate = events.sum() / durations.sum()
    times, deaths, at_risk = _km_table(durations, events)
    hit = deaths > 0
    observed = _ks_from_km(times[hit], deaths[hit], at_risk[hit], times[-1], rate, grid)
    if grid is not None:  # the continuous rate whose rounded-up times have k g per check
        rate = -math.log1p(-min(rate * grid, 1 - 1e-12)) / grid
    support, mass = _censoring_law(durations, events)
    n = durations.size
    exceed = sum(
        _null_ks(rng, n, rate, support, mass, grid) >= observed for _ in range(n_bootstrap)
    )
    return observed, (1 + exceed) / (n_bootstrap + 1)


def weibull_shape(
    durations: np.ndarray, events: np.ndarray, level: float = LEVEL, grid: float | None = None
) -> tuple[float, tuple[float, float]]:
    """Weibull shape ρ (S = exp(−(t/λ)^ρ)) with a log-scale Wald CI; NaN when not estimable.

    ρ ≈ 1 is Poisson-like (activated) escape; ρ ≫ 1 a deterministic drift-set delay. With
    ``grid`` an escape recorded at t happened in (t − grid, t] and is fitted so (interval
    censoring): fitted as exact, exponential times rounded up to τ/3 gave ρ ≈ 1.58.
    """
    from lifelines import WeibullFitter

    nan = (math.nan, (math.nan, math.nan))
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if events.sum() < 2 or np.unique(durations[events == 1]).size < 2:
        return nan  # all at one time (one check): nothing shows the spread
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if grid is None:
                fitter = WeibullFitter().fit(durations, events)
            else:
                hit = events == 1
                lower = np.where(hit, np.maximum(durations - grid, 0.0), durations)
                fitter = WeibullFitter().fit_interval_censoring(
                    lower, np.where(hit, durations, np.inf))
        rho = float(fitter.rho_)
        se = float(np.sqrt(fitter.variance_matrix_.loc["rho_", "rho_"]))
    except Exception:  # lifelines raises several types on degenerate data
        return nan
    if not (np.isfinite(rho) and np.isfinite(se)) or rho <= 0:
        return nan
    z = stats.norm.ppf(0.5 + level / 2)
    half = z * se / rho
    return rho, (rho * math.exp(-half), rho * math.exp(half) if half < 700 else math.inf)


def _upper_note(median: KaplanMeierMedian, durations: np.ndarray, events: np.ndarray
                ) -> str | None:
    """Why the median's CI has no upper limit: the upper band stays above ½ to the last
    escape, because replicas were still trapped (censored) or too few escaped after it."""
    if median.median_ is None or median.median_ci_[1] is not None:
        return None
    late = int(np.sum(durations > median.median_))
    censored = int(np.sum((events == 0) & (durations >= median.median_)))
    if censored:
        return (f"censoring: {censored} replica(s) still trapped at the end keep the upper "
                f"band above ½")
    return f"too few escapes after the median ({late}) for the upper band to reach ½"


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
    ks_grid: float | None = None  # grid the KS null was drawn on; None: continuous times
    #: Why a reached median has no upper limit (None when it has one or is not reached).
    median_upper_note: str | None = None
    verdict: str = ""  # activated | deterministic | absorbing | inconclusive (``verdict``)
    verdict_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def describe(
    durations,
    events,
    group: object = "all",
    level: float = LEVEL,
    n_bootstrap: int = KS_BOOTSTRAP,
    seed: int = 0,
    grid: float | None = None,
    noiseless: bool = False,
    trend: Trend | None = None,
) -> GroupSummary:
    """Summarise one condition's escape times (see the module docstring for the estimators).

    ``grid``: the spacing durations sit on (``check_every``), for the KS null and the
    interval-censored Weibull shape; None = continuous.
    ``noiseless``: the times come from a run without noise (full batch), so the verdict is
    never ``activated`` (``verdict.mechanism``).
    ``trend``: how the censored replicas' order parameter moved (``stability.trend``).
    """
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if durations.size == 0:
        raise EscapestatError(f"group {group!r} has no rows")
    rate = ExponentialRate().fit(durations, events, level)
    median = KaplanMeierMedian().fit(durations, events, level)
    rmst = RestrictedMean().fit(durations, events, level=level)
    shape, shape_ci = weibull_shape(durations, events, level, grid=grid)
    rng = np.random.default_rng(seed)
    ks, pvalue = poisson_check(durations, events, n_bootstrap, rng, grid=grid)
    verdict = mechanism(rate.n_, rate.events_, shape_ci, pvalue, rate.rate_ci_[1],
                        noiseless=noiseless, trend=trend)
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
        median=median.median_,
        median_ci=median.median_ci_,
        median_reached=median.median_ is not None,
        rmst=rmst.rmst_,
        rmst_ci=rmst.rmst_ci_,
        rmst_horizon=rmst.horizon_,
        weibull_shape=shape,
        weibull_shape_ci=shape_ci,
        ks_statistic=ks,
        poisson_pvalue=pvalue,
        ks_grid=grid,
        median_upper_note=_upper_note(median, durations, events),
        verdict=verdict.mechanism,
        verdict_reason=verdict.reason,
    )


def summarize(
    df: pd.DataFrame,
    columns: Columns = Columns(),
    level: float = LEVEL,
    n_bootstrap: int = KS_BOOTSTRAP,
    seed: int = 0,
    grid: float | None = None,
    threshold: float | None = None,
) -> list[GroupSummary]:
    """One ``GroupSummary`` per value of the group column (or one group named "all");
    ``threshold``: the run's escape threshold, for the trend of groups with no escapes."""
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
            grid=grid,
            trend=stability.trend(part, threshold),
        )
        for key, part in parts
    ]
