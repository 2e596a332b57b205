"""Run summaries: per-condition escape statistics and, per L2 strength, the Arrhenius fit.

Statistics on a run's replica table (diverged and untrapped replicas are counted, never
used as escapes); the CLI and the report only render what this returns.
"""

from __future__ import annotations

import pandas as pd

from .records import Columns


def run_summary(replicas: pd.DataFrame, n_bootstrap: int = 199, seed: int = 0) -> dict:
    """Per-condition rates and, per L2 strength, the Arrhenius fit against theory.

    ``replicas`` is a run's replica table (``replicas.csv``: every replica with its
    status); diverged and untrapped replicas are counted, never used as escapes.
    """
    from .arrhenius import fit_arrhenius
    from .errors import EscapestatError
    from .survival import describe

    survival_rows = replicas[replicas["status"].isin(["escaped", "censored"])]
    conditions = []
    for key, part in replicas.groupby("condition", sort=True):
        usable = part[part["status"].isin(["escaped", "censored"])]
        first = part.iloc[0]
        row = {
            "condition": int(key),
            "weight_decay": float(first["weight_decay"]),
            "temperature": float(first["temperature"]),
            "lr": float(first["lr"]),
            "batch_size": None if pd.isna(first["batch_size"]) else int(first["batch_size"]),
            "barrier_theory": None if pd.isna(first["barrier_theory"])
            else float(first["barrier_theory"]),
            "diverged": int((part["status"] == "diverged").sum()),
            "untrapped": int((part["status"] == "untrapped").sum()),
        }
        if len(usable):
            s = describe(usable["duration"], usable["event"], group=int(key),
                         n_bootstrap=n_bootstrap, seed=seed)
            row.update(n=s.n, events=s.events, rate=s.rate, rate_ci=s.rate_ci, tau=s.tau,
                       median=s.median, weibull_shape=s.weibull_shape,
                       weibull_shape_ci=s.weibull_shape_ci, poisson_pvalue=s.poisson_pvalue)
        else:
            row.update(n=0, events=0)
        conditions.append(row)
    fits = []
    for beta, part in survival_rows.groupby("weight_decay", sort=True):
        theory = part["barrier_theory"].dropna()
        entry = {"weight_decay": float(beta),
                 "theory_barrier": float(theory.iloc[0]) if len(theory) else None}
        try:
            fit = fit_arrhenius(part, Columns(temperature="temperature"), crosscheck=False)
        except EscapestatError as exc:
            entry["error"] = str(exc)
        else:
            entry.update(barrier=fit.barrier, barrier_ci=fit.barrier_ci,
                         log_prefactor=fit.log_prefactor, method=fit.method,
                         dispersion=fit.dispersion)
            if entry["theory_barrier"]:
                entry["ratio"] = fit.barrier / entry["theory_barrier"]
                entry["ratio_ci"] = tuple(v / entry["theory_barrier"] for v in fit.barrier_ci)
        fits.append(entry)
    return {"conditions": conditions, "arrhenius": fits}
