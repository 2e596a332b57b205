"""The one censored Poisson GLM: escapes ~ Poisson with offset log(exposure), the exact
censored-exponential likelihood, with the moderated quasi-Poisson scale and t quantiles.

``arrhenius`` is this model on the design [1, −1/T]; ``regress`` on a patsy formula's.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from escapestat.errors import EscapestatError
from escapestat.stats._rate import LEVEL

#: One prior degree of freedom at the Poisson value (φ = 1) for the moderated scale.
PRIOR_DF = 1.0

MODERATED = "quasi-poisson (moderated)"


def moderated_scale(
    pearson_chi2: float, df_resid: int, level: float = LEVEL, prior_df: float = PRIOR_DF
) -> tuple[float, float, float]:
    """Moderated quasi-Poisson scale φ̃, CI quantile and its degrees of freedom ν.

    φ̃ = (d₀·1 + χ²_P) / (d₀ + df): the Pearson dispersion φ̂ = χ²_P/df shrunk towards the
    Poisson value 1 with d₀ prior degrees of freedom. The quantile is Student t on
    ν = (d₀ + df)²/df, the Satterthwaite degrees of freedom of φ̃ when the Poisson model
    holds (Var φ̃ = 2·df/(d₀ + df)²), so the interval covers ~95% then; ν → ∞ (normal
    quantile, plain Poisson) with no residual df. Both are continuous in φ̂: no switch.
    """
    if df_resid <= 0:
        return 1.0, float(stats.norm.ppf(0.5 + level / 2)), math.inf
    scale = (prior_df + pearson_chi2) / (prior_df + df_resid)
    nu = (prior_df + df_resid) ** 2 / df_resid
    return float(scale), float(stats.t.ppf(0.5 + level / 2, nu)), float(nu)


@dataclass(frozen=True)
class PoissonGLMFit:
    """Coefficients on the design's own columns, their scaled covariance and CIs' quantile.

    ``dispersion`` is the Pearson χ²/df (None without residual df); ``scale`` the
    moderated φ̃ the covariance is multiplied by; ``quantile`` the t quantile on
    ``quantile_df`` degrees of freedom every interval uses.
    """

    params: np.ndarray
    covariance: np.ndarray
    dispersion: float | None
    scale: float
    quantile: float
    quantile_df: float
    method: str

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))

    def ci(self, j: int) -> tuple[float, float]:
        """The interval of coefficient ``j``: estimate ± quantile · SE."""
        b, half = float(self.params[j]), self.quantile * float(self.se[j])
        return b - half, b + half


def _standardise(x: np.ndarray, intercept: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled (and centred when there is an intercept) for the optimiser, and the
    Jacobian J with β_raw = J β_scaled."""
    p = x.shape[1]
    centre = np.zeros(p)
    spread = np.ones(p)
    for j in range(p):
        if j == intercept:
            continue
        if intercept is not None:
            centre[j] = x[:, j].mean()
        spread[j] = x[:, j].std() or 1.0
    jac = np.diag(1.0 / spread)
    if intercept is not None:
        jac[intercept] -= centre / spread
        jac[intercept, intercept] = 1.0
    return (x - centre) / spread, jac


def fit_poisson_glm(events: np.ndarray, exposure: np.ndarray, design: np.ndarray,
                    intercept: int | None = 0, level: float = LEVEL) -> PoissonGLMFit:
    """Fit log E[D] = log E + Xβ over cells (rows); covariance × φ̃, intervals ± t_ν·SE.

    The design is standardised for a well-conditioned fit and mapped back after.
    """
    import statsmodels.api as sm

    scaled, jac = _standardise(design, intercept)
    model = sm.GLM(events, scaled, family=sm.families.Poisson(), offset=np.log(exposure))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.fit()
    params = jac @ np.asarray(result.params)
    if not result.converged or not np.isfinite(params).all():
        raise EscapestatError("the Poisson GLM did not converge")
    df_resid = len(events) - design.shape[1]
    scale, q, nu = moderated_scale(float(result.pearson_chi2), df_resid, level)
    return PoissonGLMFit(
        params=params,
        covariance=jac @ (np.asarray(result.cov_params()) * scale) @ jac.T,
        dispersion=float(result.pearson_chi2 / df_resid) if df_resid > 0 else None,
        scale=scale, quantile=q, quantile_df=nu,
        method=MODERATED if df_resid > 0 else "poisson",
    )
