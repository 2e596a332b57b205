"""Run summaries: per-condition escape statistics and, per L2 strength, the Arrhenius fit.

Statistics on a run's replica table: escaped, censored and diverged replicas (the last a
competing risk, censored where it diverged) are survival data; untrapped replicas are
counted only. The results are typed (``RunSummary``); the CLI and the report
only render them, and ``as_dict()`` is the ``run --json`` contract.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import pandas as pd

from escapestat.stats._arrhenius import ArrheniusFit
from escapestat.stats._per_stratum import StratumFit, arrhenius_by
from escapestat.stats._survival import GroupSummary
from escapestat.vocab import SURVIVAL, Status


def strata_columns(replicas: pd.DataFrame) -> list[str]:
    """What must be equal within one Arrhenius fit: β (and its schedule), the filter, and for
    Langevin the lr (for SGD, lr and B make up T = lr / B)."""
    cols = ["weight_decay", "weight_decay_schedule", "grad_filter", "seed_over_saddle"]
    if (replicas["noise"] == "langevin").all():
        cols.append("lr")
    return [c for c in cols if c in replicas.columns]


#: What a minibatch condition and its full-batch twin share (all but B and T = lr / B).
TWIN_KEYS = ("weight_decay", "lr", "seed_over_saddle", "weight_decay_schedule", "lr_schedule",
             "grad_filter")
TWIN_LEVEL = 0.05


@dataclass(frozen=True)
class Twin:
    """A minibatch condition's full-batch twin (same β, lr, seed, schedules; no noise):
    its escapes and the log-rank p-value of the two laws."""

    condition: int
    events: int
    n: int
    logrank_p: float


@dataclass(frozen=True)
class GrokkingTimes:
    """Fit, generalisation and delay of one grokking condition: KM medians with CIs
    (``None`` where not reached), the fractions that fitted and grokked, the unfit count."""

    unfit: int
    grokked: float
    fitted: float
    fit_median: float | None
    fit_median_ci: tuple[float | None, float | None]
    generalize_median: float | None
    generalize_median_ci: tuple[float | None, float | None]
    delay_median: float | None = None  # no fit, no delay
    delay_median_ci: tuple[float | None, float | None] = (None, None)

    def median(self, name: str) -> tuple[float | None, tuple[float | None, float | None]]:
        """(median, CI) of ``fit``, ``generalize`` or ``delay``."""
        return getattr(self, f"{name}_median"), getattr(self, f"{name}_median_ci")

    def as_dict(self) -> dict[str, Any]:
        return {"unfit": self.unfit, "grokked": self.grokked, "fitted": self.fitted,
                "delay_median": self.delay_median, "delay_median_ci": self.delay_median_ci,
                "fit_median": self.fit_median, "fit_median_ci": self.fit_median_ci,
                "generalize_median": self.generalize_median,
                "generalize_median_ci": self.generalize_median_ci}


@dataclass(frozen=True)
class ConditionSummary:
    """One condition of a run: its setting, what was excluded, and the escape statistics
    and verdict of its usable replicas (``escape``), which the full-batch twin can turn
    ``deterministic``."""

    condition: int
    weight_decay: float
    temperature: float
    lr: float
    batch_size: int | None
    barrier_theory: float | None
    diverged: int
    untrapped: int
    #: The usable replicas' statistics and verdict (None when there are none).
    escape: GroupSummary | None
    full_batch: bool | None = None
    seed_over_saddle: float | None = None
    #: Medians over the usable replicas of what the layers carry beyond the learned modes
    #: at the switch, and of the dtype's rounding floor (deep linear runs).
    switch_trapped_component: float | None = None
    rounding_floor: float | None = None
    grokking: GrokkingTimes | None = None
    twin: Twin | None = None

    @property
    def n(self) -> int:
        """Usable replicas (escaped, censored or diverged)."""
        return self.escape.n if self.escape is not None else 0

    @property
    def events(self) -> int:
        return self.escape.events if self.escape is not None else 0

    @property
    def verdict(self) -> str:
        return self.escape.verdict if self.escape is not None else ""

    @property
    def verdict_reason(self) -> str:
        return self.escape.verdict_reason if self.escape is not None else "no usable replicas"

    @property
    def barrier_over_temperature(self) -> float | None:
        """ΔE/T with the theory barrier (None without one)."""
        return None if self.barrier_theory is None else self.barrier_theory / self.temperature

    def as_dict(self) -> dict[str, Any]:
        """The ``run --json`` object of a condition (keys present as they apply)."""
        out: dict[str, Any] = {
            "condition": self.condition, "weight_decay": self.weight_decay,
            "temperature": self.temperature, "lr": self.lr, "batch_size": self.batch_size,
            "barrier_theory": self.barrier_theory,
            "barrier_over_temperature": self.barrier_over_temperature,
            "diverged": self.diverged, "untrapped": self.untrapped}
        if self.seed_over_saddle is not None:
            out["seed_over_saddle"] = self.seed_over_saddle
        if self.switch_trapped_component is not None:
            out.update(switch_trapped_component=self.switch_trapped_component,
                       rounding_floor=self.rounding_floor)
        if self.grokking is not None:
            out.update(self.grokking.as_dict())
        e = self.escape
        out.update(n=self.n, events=self.events)
        if e is not None:
            out.update(rate=e.rate, rate_ci=e.rate_ci, tau=e.tau, tau_ci=e.tau_ci,
                       median=e.median, weibull_shape=e.weibull_shape,
                       weibull_shape_ci=e.weibull_shape_ci, poisson_pvalue=e.poisson_pvalue)
        out.update(verdict=self.verdict, verdict_reason=self.verdict_reason)
        if e is not None:
            out["full_batch"] = self.full_batch
        if self.twin is not None:
            out.update(twin_condition=self.twin.condition, twin_events=self.twin.events,
                       twin_n=self.twin.n, twin_logrank_p=self.twin.logrank_p)
        return out


@dataclass(frozen=True)
class StratumArrhenius:
    """The Arrhenius fit of one stratum of equal β (and lr for Langevin), or why there is
    none, with the theory barrier it is compared with."""

    result: StratumFit[ArrheniusFit]
    weight_decay: float
    lr: float
    theory_barrier: float | None
    seed_over_saddle: float | None = None

    @property
    def fit(self) -> ArrheniusFit | None:
        return self.result.fit

    @property
    def error(self) -> str | None:
        return self.result.error

    def versus_theory(self) -> dict[str, Any] | None:
        """Fitted / theory barrier with its CI (None without a fit or a theory barrier)."""
        if self.fit is None or not self.theory_barrier:
            return None
        return self.fit.versus_theory(self.theory_barrier)

    def as_dict(self) -> dict[str, Any]:
        """The ``run --json`` object of a stratum's fit."""
        out: dict[str, Any] = {"weight_decay": self.weight_decay, "lr": self.lr,
                               "theory_barrier": self.theory_barrier}
        if self.seed_over_saddle is not None:
            out["seed_over_saddle"] = self.seed_over_saddle
        fit = self.fit
        if fit is None:
            out["error"] = self.error
            return out
        out.update(barrier=fit.barrier, barrier_ci=fit.barrier_ci,
                   log_prefactor=fit.log_prefactor, method=fit.method,
                   dispersion=fit.dispersion, direction=fit.direction,
                   frailty=fit.frailty_dict())
        ratio = self.versus_theory()
        if ratio is not None:
            out.update(barrier_ratio=ratio["barrier_ratio"],
                       barrier_ratio_ci=ratio["barrier_ratio_ci"])
        return out


@dataclass(frozen=True)
class RunSummary:
    """What ``run`` and the report say about a run: every condition, and per stratum the
    Arrhenius fit (none for grokking runs, whose T = lr / B is only a label)."""

    conditions: tuple[ConditionSummary, ...]
    arrhenius: tuple[StratumArrhenius, ...] = ()

    @property
    def grokking(self) -> bool:
        return any(c.grokking is not None for c in self.conditions)

    def as_dict(self) -> dict[str, Any]:
        """The summary part of ``run --json``."""
        return {"conditions": [c.as_dict() for c in self.conditions],
                "arrhenius": [f.as_dict() for f in self.arrhenius]}


def _twin(usable: pd.DataFrame, firsts: pd.DataFrame, keys: list[str], twins: dict,
          c: int) -> Twin | None:
    """Condition ``c``'s full-batch twin and the log-rank test against it, if it has one
    and both have usable replicas."""
    from escapestat.stats._contrast import logrank_p

    if bool(firsts.loc[c, "full_batch"]):
        return None
    twin = twins.get(tuple(firsts.loc[c, keys]))
    if twin is None:
        return None
    a, b = usable[usable["condition"] == c], usable[usable["condition"] == twin]
    if not len(a) or not len(b):
        return None
    p = logrank_p(a["duration"], a["event"], b["duration"], b["event"])
    return Twin(int(twin), int(b["event"].sum()), len(b), p)


def _with_twins(replicas: pd.DataFrame, conditions: list[ConditionSummary]
                ) -> list[ConditionSummary]:
    """The control that tells drift from noise: each minibatch condition against its
    full-batch twin. Where the twin escapes too and the two laws do not differ
    (p ≥ 0.05), the delay needs no noise: the verdict becomes ``deterministic``."""
    from escapestat.stats._verdict import DETERMINISTIC

    if "full_batch" not in replicas.columns or (replicas["noise"] != "sgd").any():
        return conditions
    keys = [k for k in TWIN_KEYS if k in replicas.columns]
    usable = replicas[replicas["status"].isin(SURVIVAL)]
    firsts = replicas.groupby("condition", sort=True).first()
    twins = {tuple(firsts.loc[c, keys]): c for c in firsts.index
             if bool(firsts.loc[c, "full_batch"])}
    out = []
    for row in conditions:
        twin = _twin(usable, firsts, keys, twins, row.condition)
        if twin is not None:
            row = replace(row, twin=twin)
            e = row.escape
            if e is not None and e.events and twin.events and twin.logrank_p >= TWIN_LEVEL:
                why = (f"the full-batch twin (no noise) escapes alike: {twin.events}/{twin.n} "
                       f"vs {e.events}/{e.n}, log-rank p {twin.logrank_p:.2g}")
                row = replace(row, escape=replace(e, verdict=DETERMINISTIC, verdict_reason=why))
        out.append(row)
    return out


def grokking_times(part: pd.DataFrame, budget: float) -> GrokkingTimes:
    """Fit, generalisation and delay of one condition: KM medians with CIs under censoring.

    A replica that never fitted is censored at the budget for the fit; one that never
    generalised, at the budget for generalisation and at (budget − fit) for the delay.
    """
    import numpy as np

    from escapestat.stats._survival import KaplanMeierMedian

    fit = part["fit_time"].to_numpy(dtype=float)
    gen = part["generalize_time"].to_numpy(dtype=float)
    fitted = np.isfinite(fit)
    series = {"fit": (np.where(fitted, fit, budget), fitted),
              "generalize": (np.where(np.isfinite(gen), gen, budget), np.isfinite(gen))}
    if fitted.any():
        delay = np.where(np.isfinite(gen), gen, budget)[fitted] - fit[fitted]
        series["delay"] = (np.maximum(delay, 0.5), np.isfinite(gen)[fitted])
    medians: dict[str, Any] = {}
    for name, (times, events) in series.items():
        km = KaplanMeierMedian().fit(times, events.astype(int))
        medians[f"{name}_median"], medians[f"{name}_median_ci"] = km.median_, km.median_ci_
    unfit = int((part["status"] == Status.UNFIT).sum()) if "status" in part else 0
    return GrokkingTimes(unfit=unfit, grokked=float(np.isfinite(gen).mean()),
                         fitted=float(fitted.mean()), **medians)


def _optional(value: Any) -> float | None:
    return None if pd.isna(value) else float(value)


def run_summary(replicas: pd.DataFrame, n_bootstrap: int | None = None, seed: int = 0,
                grid: float | None = None, budget: float | None = None,
                threshold: float | None = None) -> RunSummary:
    """Per-condition rates and, per stratum of equal β (and lr for Langevin), Arrhenius.

    ``replicas`` is a run's replica table (``replicas.csv``: every replica with its
    status); ``grid`` is the run's ``check_every`` (the KS null is drawn on it);
    ``threshold`` its escape threshold (whether a condition with no escapes was still
    moving, ``stability``).
    """
    from escapestat.stats._stability import trend
    from escapestat.stats._survival import KS_BOOTSTRAP, describe

    survival_rows = replicas[replicas["status"].isin(SURVIVAL)]
    grokking = "fit_time" in replicas.columns
    conditions: list[ConditionSummary] = []
    for key, part in replicas.groupby("condition", sort=True):
        usable = part[part["status"].isin(SURVIVAL)]
        first = part.iloc[0]
        escape, full = None, None
        if len(usable):
            full = (bool(part["full_batch"].astype(bool).all()) if "full_batch" in part
                    else None)
            escape = describe(usable["duration"], usable["event"], group=int(key),
                              n_bootstrap=KS_BOOTSTRAP if n_bootstrap is None else n_bootstrap,
                              seed=seed, grid=grid, noiseless=bool(full),
                              trend=trend(usable, threshold, budget))
        switch = "switch_trapped_component" in part and len(usable)
        conditions.append(ConditionSummary(
            condition=int(key), weight_decay=float(first["weight_decay"]),
            temperature=float(first["temperature"]), lr=float(first["lr"]),
            batch_size=None if pd.isna(first["batch_size"]) else int(first["batch_size"]),
            barrier_theory=_optional(first["barrier_theory"]),
            diverged=int((part["status"] == Status.DIVERGED).sum()),
            untrapped=int((part["status"] == Status.UNTRAPPED).sum()),
            escape=escape, full_batch=full,
            seed_over_saddle=(float(first["seed_over_saddle"]) if "seed_over_saddle" in part
                              else None),
            switch_trapped_component=(float(usable["switch_trapped_component"].median())
                                      if switch else None),
            rounding_floor=float(usable["rounding_floor"].median()) if switch else None,
            grokking=(grokking_times(part, budget or float(part["duration"].max()))
                      if grokking else None)))
    conditions = _with_twins(replicas, conditions)
    if grokking:  # delays of trained nets: no theory barrier, and T = lr/B is not the law
        return RunSummary(tuple(conditions))
    by = strata_columns(replicas)
    fits = []
    for r in arrhenius_by(survival_rows, by, grid):
        part = r.stratum.rows
        theory = part["barrier_theory"].dropna()
        fits.append(StratumArrhenius(
            r, weight_decay=float(cast(float, r.stratum.key[0][1])),
            lr=float(part["lr"].iloc[0]),
            theory_barrier=float(theory.iloc[0]) if len(theory) else None,
            seed_over_saddle=(float(part["seed_over_saddle"].iloc[0])
                              if "seed_over_saddle" in by else None)))
    return RunSummary(tuple(conditions), tuple(fits))
