"""Arrhenius under replica heterogeneity: the exponential law with a gamma frailty per replica.

If replicas escape at different rates — each its own k(T)·Z, Z ~ Gamma(mean 1, variance
θ), from its own start, data or width — the fast ones escape first, and the more a
temperature is censored the more its rate D/E over-weights them. A Poisson GLM on the
per-temperature totals cannot see it (their Pearson dispersion stays near 1) and its
barrier is biased: measured −13% with CI coverage 0.80 at θ = 0.5 on a 5-temperature
ladder (``benchmarks/frailty.py``). Integrating Z out gives a closed marginal law,

    S(t | T) = (1 + θ k(T) t)^(−1/θ),   k(T) = k₀ exp(−ΔE / T),

fitted here by maximum likelihood over (log k₀, ΔE, log θ) with statsmodels'
``GenericLikelihoodModel`` (Wald intervals from its numerical Hessian). On a check grid
an escape recorded at t is the interval (t − grid, t]. The likelihood-ratio test of
θ = 0 (on the boundary: half a χ²₁) says whether heterogeneity is there at all.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.errors import EscapestatError
from escapestat.stats._survival import LEVEL
from escapestat.table._records import Columns

#: The LR test's level: below it, the replicas' rates differ and the report says so.
HETEROGENEITY_LEVEL = 0.05
_MIN_LOG_THETA = -20.0  # θ = 2e-9: the exponential law to double precision
_BOUNDARY_LOG_THETA = -9.0  # θ̂ below 1e-4: at the boundary, the exponential fit stands


def _log_survival(kt: np.ndarray, theta: float) -> np.ndarray:
    """log S = −log(1 + θ k t)/θ, and −k t as θ → 0."""
    if theta < 1e-10:
        return -kt
    return -np.log1p(theta * kt) / theta


@dataclass(frozen=True)
class FrailtyFit:
    """The gamma-frailty Arrhenius fit (``as_dict`` for JSON)."""

    barrier: float
    barrier_ci: tuple[float, float]
    log_prefactor: float
    log_prefactor_ci: tuple[float, float]
    frailty_variance: float
    frailty_variance_ci: tuple[float, float]
    lr_statistic: float
    lr_pvalue: float  # H0: θ = 0 (no heterogeneity); half a χ²₁ on the boundary
    grid: float | None

    @property
    def heterogeneous(self) -> bool:
        return self.lr_pvalue < HETEROGENEITY_LEVEL

    def as_dict(self) -> dict:
        return {**asdict(self), "heterogeneous": self.heterogeneous}


def _loglike(params: np.ndarray, x: np.ndarray, t: np.ndarray, event: np.ndarray,
             grid: float | None) -> np.ndarray:
    a, b, log_theta = params
    theta = math.exp(max(log_theta, _MIN_LOG_THETA))
    k = np.exp(a + b * x)
    log_s = _log_survival(k * t, theta)
    if grid is None:  # density of an exact time: k (1 + θkt)^(−1/θ − 1)
        log_f = np.log(k) + log_s - np.log1p(theta * k * t)
    else:  # the check interval (t − grid, t]: S(t − g) − S(t)
        before = _log_survival(k * np.maximum(t - grid, 0.0), theta)
        log_f = before + np.log(-np.expm1(log_s - before))
    return np.where(event == 1, log_f, log_s)


def fit_frailty_arrhenius(df: pd.DataFrame, columns: Columns, level: float = LEVEL,
                          grid: float | None = None) -> FrailtyFit:
    """Fit the gamma-frailty Arrhenius law to per-replica escape times (see the module)."""
    from statsmodels.base.model import GenericLikelihoodModel

    t = df[columns.duration].to_numpy(dtype=float)
    event = df[columns.event].to_numpy(dtype=int)
    temps = df[columns.temperature].to_numpy(dtype=float)
    if np.unique(temps).size < 2 or event.sum() == 0:
        raise EscapestatError("the frailty fit needs escapes and at least two temperatures")
    neg_inv = -1.0 / temps
    centre, spread = float(np.mean(neg_inv)), float(np.std(neg_inv)) or 1.0
    x = (neg_inv - centre) / spread

    class Model(GenericLikelihoodModel):
        def loglikeobs(self, params):
            return _loglike(params, x, t, event, grid)

    class Exponential(GenericLikelihoodModel):
        def loglikeobs(self, params):  # θ fixed at 0
            return _loglike(np.append(params, _MIN_LOG_THETA), x, t, event, grid)

    exog = np.column_stack([np.ones_like(x), x, np.ones_like(x)])
    rate = event.sum() / t.sum()
    best = None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for log_theta in (-3.0, 0.0):  # θ 0.05 and 1: the likelihood can have two basins
            start = np.array([math.log(rate), 1.0, log_theta])
            result = Model(np.zeros_like(x), exog).fit(start_params=start, method="bfgs",
                                                      maxiter=2000, disp=False)
            if best is None or result.llf > best.llf:
                best = result
        assert best is not None  # the loop above fits at least once
        exponential = Exponential(np.zeros_like(x), exog[:, :2])
        null = exponential.fit(start_params=best.params[:2], method="bfgs", maxiter=2000,
                               disp=False)
    params = np.asarray(best.params)
    on_boundary = params[2] < _BOUNDARY_LOG_THETA  # θ̂ ≈ 0: log θ has no curvature left
    cov = np.asarray((null if on_boundary else best).cov_params())
    if on_boundary:
        params = np.append(np.asarray(null.params), _MIN_LOG_THETA)
    if not np.all(np.isfinite(params)) or not np.all(np.isfinite(np.diag(cov))):
        raise EscapestatError("the frailty fit did not converge")
    z = stats.norm.ppf(0.5 + level / 2)
    # Back to (log k₀, ΔE): log k = a + b (−1/T − centre)/spread.
    jac = np.array([[1.0, -centre / spread], [0.0, 1.0 / spread]])
    ab = jac @ params[:2]
    se = np.sqrt(np.diag(jac @ cov[:2, :2] @ jac.T))
    log_theta = params[2]
    se_log_theta = math.inf if on_boundary else math.sqrt(max(cov[2, 2], 0.0))
    lr = max(2.0 * (best.llf - null.llf), 0.0)
    theta = math.exp(max(log_theta, _MIN_LOG_THETA))
    return FrailtyFit(
        barrier=float(ab[1]),
        barrier_ci=(float(ab[1] - z * se[1]), float(ab[1] + z * se[1])),
        log_prefactor=float(ab[0]),
        log_prefactor_ci=(float(ab[0] - z * se[0]), float(ab[0] + z * se[0])),
        frailty_variance=theta,
        frailty_variance_ci=(0.0, math.inf) if on_boundary else (
            theta * math.exp(-z * se_log_theta), theta * math.exp(min(z * se_log_theta, 700))),
        lr_statistic=float(lr),
        lr_pvalue=float(0.5 * stats.chi2.sf(lr, 1)) if lr > 0 else 1.0,
        grid=grid,
    )
