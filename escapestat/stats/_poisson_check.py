"""Does escape look Poisson-like? A parametric-bootstrap KS test of KM against the fitted
exponential under the observed censoring, and the Weibull shape (≈ 1 for activated escape)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from escapestat.errors import EscapestatError
from escapestat.stats._kaplan_meier import _event_table, _km_table
from escapestat.stats._rate import LEVEL

#: Parametric-bootstrap draws of the KS test, for every command (one table, one verdict).
KS_BOOTSTRAP = 499


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
