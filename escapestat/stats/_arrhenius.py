"""Arrhenius law k(T) = k₀ exp(−ΔE / T) fitted to censored escape times.

The censored exponential likelihood of a condition depends on its data only through
D (escapes) and E (exposure, Σ t over all replicas), so a Poisson GLM of D on −1/T with
offset log E is the exact maximum-likelihood fit across temperatures, zero-escape
temperatures included: log k = log k₀ + ΔE · (−1/T). The standard errors use the
quasi-Poisson scale with t on the residual df (``quasi_poisson_scale``), continuous in
the Pearson dispersion, which keeps the barrier's coverage when rates scatter. A
lifelines Weibull AFT model on 1/T is fitted beside it as a cross-check that does not
assume a constant hazard. Neither sees replicas that escape at different rates (their
totals stay Poisson-like while the barrier is biased): the gamma-frailty fit beside them
(``frailty``) tests for that and gives the barrier that stays honest under it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.errors import EscapestatError
from escapestat.stats._aft import first_sentence, fit_weibull_aft
from escapestat.stats._poisson_glm import (  # noqa: F401 (re-exported)
    QUASI_POISSON,
    fit_poisson_glm,
    quasi_poisson_scale,
)
from escapestat.stats._survival import LEVEL, poisson_rate_ci
from escapestat.table._records import Columns, round_significant

if TYPE_CHECKING:
    from escapestat.stats._frailty import FrailtyFit


@dataclass(frozen=True)
class AftBarrier:
    """The Weibull-AFT cross-check of a barrier: log λ = a + b/T, so b is the barrier;
    its CI assumes no extra scatter between temperatures. Without a fit, ``note`` says why."""

    barrier: float | None
    barrier_ci: tuple[float, float] | None
    shape: float | None
    note: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"barrier": self.barrier, "barrier_ci": self.barrier_ci, "shape": self.shape}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class ArrheniusFit:
    """A fitted Arrhenius law (the ``arrhenius --json`` contract, plus the cross-checks).

    ``dispersion`` is the Pearson χ²/df (None with two temperatures); ``scale`` the
    φ̂ that multiplies the Poisson covariance (1 then); ``quantile`` the t quantile on
    ``quantile_df`` degrees of freedom used by every interval of the fit.
    """

    barrier: float
    barrier_ci: tuple[float, float]
    log_prefactor: float
    log_prefactor_ci: tuple[float, float]
    dispersion: float | None
    method: str
    temperatures: list[float]
    rates: list[float]
    rates_ci: list[tuple[float, float]]
    events: list[int]
    exposure: list[float]
    n: list[int]
    scale: float = 1.0
    quantile: float = float(stats.norm.ppf(0.5 + LEVEL / 2))
    quantile_df: float = math.inf
    #: The Weibull-AFT cross-check (None when not asked for).
    weibull_aft: AftBarrier | None = None
    covariance: list[list[float]] = field(default_factory=list)
    #: The gamma-frailty fit: whether the replicas' rates differ, and the barrier that
    #: stays unbiased when they do (None when not fitted; ``frailty_note`` says why).
    frailty: FrailtyFit | None = None
    frailty_note: str | None = None

    @property
    def tau0(self) -> float:
        """τ₀ = 1 / k₀ = exp(−log_prefactor), the attempt time in units of duration."""
        return math.exp(-self.log_prefactor)

    @property
    def direction(self) -> str:
        """How the rate moves with temperature, read from the slope's CI: ``faster with
        more noise`` (a barrier: CI above 0), ``slower with more noise`` (CI below 0: a
        finding, never a negative barrier) or ``flat`` (the CI holds 0)."""
        lo, hi = self.barrier_ci
        if lo > 0:
            return "faster with more noise"
        if hi < 0:
            return "slower with more noise"
        return "flat"

    def rate(self, temperature) -> np.ndarray:
        """k(T) = exp(log_prefactor − barrier / T)."""
        return np.exp(self.log_prefactor - self.barrier / np.asarray(temperature, dtype=float))

    def log_rate_band(self, temperature) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise CI of log k(T) (for plots), with the same quantile as the parameter CIs."""
        inv = -1.0 / np.atleast_1d(np.asarray(temperature, dtype=float))
        x = np.column_stack([np.ones_like(inv), inv])
        cov = np.asarray(self.covariance)
        se = np.sqrt(np.einsum("ij,jk,ik->i", x, cov, x))
        mean = x @ np.array([self.log_prefactor, self.barrier])
        return mean - self.quantile * se, mean + self.quantile * se

    def versus_theory(self, theory_barrier: float) -> dict:
        """Fitted / theory barrier with its CI; the theory barrier must be finite and > 0."""
        check_theory_barrier(theory_barrier)
        lo, hi = self.barrier_ci
        return {"theory_barrier": float(theory_barrier),
                "barrier_ratio": self.barrier / theory_barrier,
                "barrier_ratio_ci": (lo / theory_barrier, hi / theory_barrier)}

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("covariance")
        out.pop("frailty_note")
        out["weibull_aft"] = {} if self.weibull_aft is None else self.weibull_aft.as_dict()
        out["frailty"] = self.frailty_dict()
        out["direction"] = self.direction
        return out

    def frailty_dict(self) -> dict:
        """The ``frailty`` object of the JSON: the fit's, or the note why there is none."""
        if self.frailty is not None:
            return self.frailty.as_dict()
        return {"note": self.frailty_note} if self.frailty_note else {}


def check_theory_barrier(theory_barrier: float | None) -> None:
    """A theory barrier to compare with must be a finite positive number (None: none given)."""
    if theory_barrier is not None and not (math.isfinite(theory_barrier) and theory_barrier > 0):
        raise EscapestatError(
            f"the theory barrier must be a finite number > 0; got {theory_barrier:g}"
        )


def aggregate(df: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """Per temperature: replicas n, escapes D and exposure E = Σ durations (censored included).

    Temperatures are grouped after rounding to ``TEMPERATURE_DIGITS`` significant digits.
    """
    if columns.temperature is None:
        raise EscapestatError("no temperature column given")
    temps = round_significant(df[columns.temperature].to_numpy(dtype=float))
    grouped = df.assign(**{columns.temperature: temps}).groupby(columns.temperature, sort=True)
    table = pd.DataFrame(
        {
            "n": grouped.size(),
            "events": grouped[columns.event].sum().astype(int),
            "exposure": grouped[columns.duration].sum().astype(float),
        }
    )
    table.index.name = "temperature"
    return table.reset_index()


def _weibull_aft(df: pd.DataFrame, columns: Columns, level: float) -> AftBarrier:
    """Cross-check: lifelines WeibullAFTFitter with log λ = a + b/T, so b is the barrier."""
    data = pd.DataFrame(
        {
            "duration": df[columns.duration].to_numpy(dtype=float),
            "event": df[columns.event].to_numpy(dtype=int),
            "inv_temperature": 1.0 / df[columns.temperature].to_numpy(dtype=float),
        }
    )
    # Scale the covariate so the optimiser sees O(1) numbers; undo it on the coefficient.
    scale = float(np.median(data["inv_temperature"]))
    data["inv_temperature"] /= scale
    try:
        aft = fit_weibull_aft(data, level)
        coef = float(aft.params_[("lambda_", "inv_temperature")]) / scale
        se = float(aft.standard_errors_[("lambda_", "inv_temperature")]) / scale
        shape = float(np.exp(aft.params_[("rho_", "Intercept")]))
    except Exception as exc:  # lifelines raises several types when the fit cannot converge
        return AftBarrier(None, None, None, first_sentence(exc))
    z = stats.norm.ppf(0.5 + level / 2)
    return AftBarrier(coef, (coef - z * se, coef + z * se), shape)


def fit_arrhenius(
    df: pd.DataFrame,
    columns: Columns,
    level: float = LEVEL,
    crosscheck: bool = True,
    grid: float | None = None,
) -> ArrheniusFit:
    """Fit log k = log k₀ − ΔE/T by Poisson GLM with offset log(exposure).

    Covariance: Poisson's, times the Pearson dispersion φ̂; intervals: ± t_df · SE
    (``quasi_poisson_scale``). Beside it the gamma-frailty fit (``frailty``, on ``grid`` when
    the durations sit on one) tests whether the replicas' rates differ. Raises
    ``EscapestatError`` with fewer than two temperatures, exposures or rates that
    overflow, no escapes at all, or escapes at only one temperature (then the barrier is
    not identified).
    """

    agg = aggregate(df, columns)
    if len(agg) < 2:
        raise EscapestatError(
            f"need at least two temperatures for an Arrhenius fit; column "
            f"{columns.temperature!r} has {len(agg)} distinct value(s)"
        )
    with np.errstate(divide="ignore", over="ignore"):
        finite = np.isfinite(agg["exposure"]) & np.isfinite(agg["events"] / agg["exposure"])
    if not finite.all() or (agg["exposure"] <= 0).any():
        raise EscapestatError(
            f"column {columns.duration!r}: exposure or rate is not a finite positive number at "
            f"T = {agg['temperature'][~finite | (agg['exposure'] <= 0)].iloc[0]:g}; rescale "
            "the durations"
        )
    if agg["events"].sum() == 0:
        bounds = ", ".join(
            f"T={t:g}: k<{poisson_rate_ci(0, e, level)[1]:.3g}"
            for t, e in zip(agg["temperature"], agg["exposure"], strict=True)
        )
        raise EscapestatError(f"no escapes at any temperature; rate upper bounds only ({bounds})")
    if (agg["events"] > 0).sum() < 2:
        raise EscapestatError(
            "escapes at only one temperature: the barrier is not identified "
            "(run longer or hotter so that at least two temperatures see escapes)"
        )
    temps = agg["temperature"].to_numpy(dtype=float)
    events = agg["events"].to_numpy(dtype=float)
    exposure = agg["exposure"].to_numpy(dtype=float)
    # The one censored Poisson GLM, on the design [1, −1/T]: (log k₀, ΔE).
    glm = fit_poisson_glm(events, exposure, np.column_stack([np.ones_like(temps), -1.0 / temps]),
                          intercept=0, level=level)
    log_k0, barrier = (float(v) for v in glm.params)
    rate_ci = [poisson_rate_ci(int(d), e, level) for d, e in zip(events, exposure, strict=True)]
    frailty, frailty_note = _frailty(df, columns, level, grid)
    return ArrheniusFit(
        barrier=barrier,
        barrier_ci=glm.ci(1),
        log_prefactor=log_k0,
        log_prefactor_ci=glm.ci(0),
        dispersion=glm.dispersion,
        method=glm.method,
        temperatures=temps.tolist(),
        rates=(events / exposure).tolist(),
        rates_ci=rate_ci,
        events=events.astype(int).tolist(),
        exposure=exposure.tolist(),
        n=agg["n"].astype(int).tolist(),
        scale=glm.scale,
        quantile=glm.quantile,
        quantile_df=glm.quantile_df,
        weibull_aft=_weibull_aft(df, columns, level) if crosscheck else None,
        covariance=glm.covariance.tolist(),
        frailty=frailty,
        frailty_note=frailty_note,
    )


def _frailty(df: pd.DataFrame, columns: Columns, level: float, grid: float | None
             ) -> tuple[FrailtyFit | None, str | None]:
    """The gamma-frailty fit, or None and why it failed."""
    from escapestat.stats._frailty import fit_frailty_arrhenius

    try:
        return fit_frailty_arrhenius(df, columns, level, grid), None
    except (EscapestatError, ValueError, np.linalg.LinAlgError) as exc:
        return None, str(exc)[:120]


def temperature_from_lr_batch(df: pd.DataFrame, lr_col: str, batch_col: str) -> pd.Series:
    """SGD noise temperature T = lr / B (the design's reported T; the true T_eff has a factor C).

    Rounded to ``TEMPERATURE_DIGITS`` significant digits: 0.3/48 and 0.1/16 are one T.
    """
    lr = pd.to_numeric(df[lr_col], errors="coerce")
    batch = pd.to_numeric(df[batch_col], errors="coerce")
    if lr.isna().any() or batch.isna().any() or (lr <= 0).any() or (batch <= 0).any():
        raise EscapestatError(f"columns {lr_col!r} and {batch_col!r} must be positive numbers")
    return pd.Series(round_significant((lr / batch).to_numpy()), index=df.index)


def with_temperature(
    df: pd.DataFrame, temperature_col: str, lr_col: str = "lr", batch_col: str = "batch_size"
) -> tuple[pd.DataFrame, str | None]:
    """Add T = lr / batch when the table has no temperature column but has both; with a note.

    Returns the table (a copy when T was added) and the note to show, or None.
    """
    if temperature_col in df.columns or not {lr_col, batch_col} <= set(df.columns):
        return df, None
    out = df.copy()
    out[temperature_col] = temperature_from_lr_batch(df, lr_col, batch_col)
    return out, f"no {temperature_col!r} column: using T = {lr_col} / {batch_col}"

