"""Run summaries: per-condition escape statistics and, per L2 strength, the Arrhenius fit.

Statistics on a run's replica table: escaped, censored and diverged replicas (the last a
competing risk, censored where it diverged) are survival data; untrapped replicas are
counted only. The CLI and the report only render what this returns.
"""

from __future__ import annotations

from typing import Any, cast

import pandas as pd

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


def _full_batch_twins(replicas: pd.DataFrame, conditions: list[dict]) -> None:
    """The control that tells drift from noise: each minibatch condition against its
    full-batch twin (same β, lr, seed, schedules; no noise at all). Adds the twin's
    escapes and the log-rank p-value; where the twin escapes too and the two laws do not
    differ (p ≥ 0.05), the delay needs no noise: the verdict becomes ``deterministic``."""
    from escapestat.stats._contrast import logrank_p
    from escapestat.stats._verdict import DETERMINISTIC

    if "full_batch" not in replicas.columns or (replicas["noise"] != "sgd").any():
        return
    keys = [k for k in TWIN_KEYS if k in replicas.columns]
    usable = replicas[replicas["status"].isin(SURVIVAL)]
    firsts = replicas.groupby("condition", sort=True).first()
    twins = {tuple(firsts.loc[c, keys]): c for c in firsts.index
             if bool(firsts.loc[c, "full_batch"])}
    for row in conditions:
        c = row["condition"]
        twin = None if bool(firsts.loc[c, "full_batch"]) else twins.get(
            tuple(firsts.loc[c, keys]))
        if twin is None:
            continue
        a, b = usable[usable["condition"] == c], usable[usable["condition"] == twin]
        if not len(a) or not len(b):
            continue
        p = logrank_p(a["duration"], a["event"], b["duration"], b["event"])
        row.update(twin_condition=int(twin), twin_events=int(b["event"].sum()),
                   twin_n=len(b), twin_logrank_p=p)
        if row["events"] and row["twin_events"] and p >= TWIN_LEVEL:
            row["verdict"] = DETERMINISTIC
            row["verdict_reason"] = (
                f"the full-batch twin (no noise) escapes alike: {row['twin_events']}/"
                f"{row['twin_n']} vs {row['events']}/{row['n']}, log-rank p {p:.2g}")


def grokking_times(part: pd.DataFrame, budget: float) -> dict:
    """Fit, generalisation and delay of one condition: KM medians with CIs under censoring.

    A replica that never fitted is censored at the budget for the fit; one that never
    generalised, at the budget for generalisation and at (budget − fit) for the delay.
    """
    import numpy as np

    from escapestat.stats._survival import KaplanMeierMedian

    fit = part["fit_time"].to_numpy(dtype=float)
    gen = part["generalize_time"].to_numpy(dtype=float)
    fitted = np.isfinite(fit)
    out: dict[str, Any] = {"grokked": float(np.isfinite(gen).mean()),
                           "fitted": float(fitted.mean())}
    series = {"fit": (np.where(fitted, fit, budget), fitted),
              "generalize": (np.where(np.isfinite(gen), gen, budget), np.isfinite(gen))}
    if fitted.any():
        delay = np.where(np.isfinite(gen), gen, budget)[fitted] - fit[fitted]
        series["delay"] = (np.maximum(delay, 0.5), np.isfinite(gen)[fitted])
    out.update(delay_median=None, delay_median_ci=(None, None))  # no fit, no delay
    for name, (times, events) in series.items():
        km = KaplanMeierMedian().fit(times, events.astype(int))
        out[f"{name}_median"], out[f"{name}_median_ci"] = km.median_, km.median_ci_
    return out


def run_summary(replicas: pd.DataFrame, n_bootstrap: int | None = None, seed: int = 0,
                grid: float | None = None, budget: float | None = None,
                threshold: float | None = None) -> dict:
    """Per-condition rates and, per stratum of equal β (and lr for Langevin), Arrhenius.

    ``replicas`` is a run's replica table (``replicas.csv``: every replica with its
    status); ``grid`` is the run's ``check_every`` (the KS null is drawn on it);
    ``threshold`` its escape threshold (whether a condition with no escapes was still
    moving, ``stability``).
    """
    from escapestat.stats._per_stratum import arrhenius_by
    from escapestat.stats._stability import trend
    from escapestat.stats._survival import KS_BOOTSTRAP, describe

    survival_rows = replicas[replicas["status"].isin(SURVIVAL)]
    grokking = "fit_time" in replicas.columns
    conditions: list[dict[str, Any]] = []
    for key, part in replicas.groupby("condition", sort=True):
        usable = part[part["status"].isin(SURVIVAL)]
        first = part.iloc[0]
        row: dict[str, Any] = {
            "condition": int(key),
            "weight_decay": float(first["weight_decay"]),
            "temperature": float(first["temperature"]),
            "lr": float(first["lr"]),
            "batch_size": None if pd.isna(first["batch_size"]) else int(first["batch_size"]),
            "barrier_theory": None if pd.isna(first["barrier_theory"])
            else float(first["barrier_theory"]),
            "barrier_over_temperature": None if pd.isna(first["barrier_theory"])
            else float(first["barrier_theory"]) / float(first["temperature"]),
            "diverged": int((part["status"] == Status.DIVERGED).sum()),
            "untrapped": int((part["status"] == Status.UNTRAPPED).sum()),
        }
        if "seed_over_saddle" in part:
            row["seed_over_saddle"] = float(first["seed_over_saddle"])
        if "switch_trapped_component" in part and len(usable):
            # What the layers carry beyond the learned modes at the switch, and the dtype's floor.
            row["switch_trapped_component"] = float(usable["switch_trapped_component"].median())
            row["rounding_floor"] = float(usable["rounding_floor"].median())
        if grokking:
            row["unfit"] = int((part["status"] == Status.UNFIT).sum())
            row.update(grokking_times(part, budget or float(part["duration"].max())))
        if len(usable):
            full = (bool(part["full_batch"].astype(bool).all()) if "full_batch" in part
                    else None)
            s = describe(usable["duration"], usable["event"], group=int(key),
                         n_bootstrap=KS_BOOTSTRAP if n_bootstrap is None else n_bootstrap,
                         seed=seed, grid=grid, noiseless=bool(full),
                         trend=trend(usable, threshold, budget))
            row.update(n=s.n, events=s.events, rate=s.rate, rate_ci=s.rate_ci, tau=s.tau,
                       tau_ci=s.tau_ci, median=s.median, weibull_shape=s.weibull_shape,
                       weibull_shape_ci=s.weibull_shape_ci, poisson_pvalue=s.poisson_pvalue,
                       verdict=s.verdict, verdict_reason=s.verdict_reason, full_batch=full)
        else:
            row.update(n=0, events=0, verdict="", verdict_reason="no usable replicas")
        conditions.append(row)
    _full_batch_twins(replicas, conditions)
    fits: list[dict[str, Any]] = []
    if grokking:  # delays of trained nets: no theory barrier, and T = lr/B is not the law
        return {"conditions": conditions, "arrhenius": fits}
    by = strata_columns(replicas)
    for r in arrhenius_by(survival_rows, by, grid):
        part, fit = r.stratum.rows, r.fit
        theory = part["barrier_theory"].dropna()
        entry: dict[str, Any] = {"weight_decay": float(cast(float, r.stratum.key[0][1])),
                                 "lr": float(part["lr"].iloc[0]),
                                 "theory_barrier": float(theory.iloc[0]) if len(theory) else None}
        if "seed_over_saddle" in by:
            entry["seed_over_saddle"] = float(part["seed_over_saddle"].iloc[0])
        if fit is None:
            entry["error"] = r.error
        else:
            entry.update(barrier=fit.barrier, barrier_ci=fit.barrier_ci,
                         log_prefactor=fit.log_prefactor, method=fit.method,
                         dispersion=fit.dispersion, direction=fit.direction,
                         frailty=fit.frailty)
            if entry["theory_barrier"]:
                ratio = fit.versus_theory(entry["theory_barrier"])
                entry.update(barrier_ratio=ratio["barrier_ratio"],
                             barrier_ratio_ci=ratio["barrier_ratio_ci"])
        fits.append(entry)
    return {"conditions": conditions, "arrhenius": fits}
