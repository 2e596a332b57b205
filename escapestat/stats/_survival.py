"""Escape times as right-censored survival data: rates, medians, RMST and a Poisson check.

The rate of a condition is the censored exponential MLE ``k = D / Σ t_i`` (D escapes,
exposure summed over every replica, censored ones included), with the exact Poisson
(Garwood) interval, which holds for D = 0. The Kaplan–Meier median (log(−log) Greenwood
interval) and the restricted mean (Greenwood-type variance) come from lifelines' event
table (escapes and numbers at risk), with our rules at S = 1/2 and S = 0 on top, stated in
the estimators. The Weibull shape (≈ 1 for
activated escape) and a parametric-bootstrap KS test of KM against the fitted exponential,
under the same censoring and on the same check grid, say whether escape looks Poisson-like.

The estimators live in ``_rate``, ``_kaplan_meier`` and ``_poisson_check``; this module
puts them together into one ``GroupSummary`` per condition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from escapestat.errors import EscapestatError
from escapestat.stats import _stability as stability
from escapestat.stats._kaplan_meier import (  # noqa: F401
    HALF_TOL,
    KaplanMeierMedian,
    RestrictedMean,
    kaplan_meier,
    restricted_mean,
)
from escapestat.stats._poisson_check import (  # noqa: F401
    KS_BOOTSTRAP,
    _censoring_law,
    poisson_check,
    weibull_shape,
)
from escapestat.stats._rate import LEVEL, ExponentialRate, poisson_rate_ci  # noqa: F401
from escapestat.stats._stability import Trend
from escapestat.stats._verdict import mechanism
from escapestat.table._records import Columns


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


@dataclass(frozen=True)
class GroupSummary:
    """Everything ``escapestat fit`` reports for one condition (its ``--json`` contract)."""

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
    rmst_ci: tuple[float | None, float | None]
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
    ci_transform: str = "log-log",
) -> GroupSummary:
    """Summarise one condition's escape times (see the module docstring for the estimators).

    ``grid``: the spacing durations sit on (``check_every``), for the KS null and the
    interval-censored Weibull shape; None = continuous.
    ``noiseless``: the times come from a run without noise (full batch), so the verdict is
    never ``activated`` (``verdict.mechanism``).
    ``trend``: how the censored replicas' order parameter moved (``stability.trend``).
    ``ci_transform``: the KM median band's scale, "log-log" or R's "log".
    """
    durations = np.asarray(durations, dtype=float)
    events = np.asarray(events, dtype=int)
    if durations.size == 0:
        raise EscapestatError(f"group {group!r} has no rows")
    rate = ExponentialRate().fit(durations, events, level)
    median = KaplanMeierMedian().fit(durations, events, level, ci_transform)
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
    ci_transform: str = "log-log",
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
            ci_transform=ci_transform,
        )
        for key, part in parts
    ]
