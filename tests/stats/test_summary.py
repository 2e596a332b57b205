"""Run summaries: one Arrhenius fit per β (never pooled), diverged replicas as censored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from escapestat.stats._summary import run_summary
from escapestat.stats._synthetic import arrhenius_table


def _replicas(barrier: float, beta: float, schedule: str = "constant", seed: int = 0):
    df = arrhenius_table(barrier, -np.log(60), [barrier / 3, barrier / 4, barrier / 5], 200,
                         4e4, seed=seed)
    df["status"] = np.where(df["event"] == 1, "escaped", "censored")
    df["condition"] = df.groupby("temperature").ngroup() + (0 if beta < 0.5 else 10)
    return df.assign(weight_decay=beta, lr=0.25, batch_size=np.nan, noise="langevin",
                     barrier_theory=barrier, temperature_schedule=schedule,
                     weight_decay_schedule="constant", lr_schedule="constant",
                     batch_size_schedule="constant", grad_filter="none")


def test_one_fit_per_beta_against_its_own_theory():
    df = pd.concat([_replicas(0.01, 0.3, seed=1), _replicas(0.02, 0.6, seed=2)])
    fits = run_summary(df, n_bootstrap=49)["arrhenius"]
    assert [f["weight_decay"] for f in fits] == [0.3, 0.6]
    for f in fits:
        lo, hi = f["barrier_ratio_ci"]
        assert lo < 1 < hi and f["barrier"] == pytest.approx(f["theory_barrier"], rel=0.15)


def test_scheduled_temperatures_get_no_arrhenius_law():
    df = pd.concat([_replicas(0.01, 0.3, seed=1), _replicas(0.02, 0.6, "{}", seed=2)])
    fits = run_summary(df, n_bootstrap=49)["arrhenius"]
    assert "barrier" in fits[0] and "barrier" not in fits[1]
    assert "constant" in fits[1]["error"]


def test_diverged_replicas_count_as_censored_time_at_risk():
    df = _replicas(0.01, 0.3, seed=3)
    first = df["condition"] == df["condition"].min()
    base = run_summary(df, n_bootstrap=49)["conditions"][0]
    df.loc[first & (df["event"] == 0), "status"] = "diverged"
    again = run_summary(df, n_bootstrap=49)["conditions"][0]
    assert again["diverged"] > 0
    assert again["n"] == base["n"] and again["rate"] == pytest.approx(base["rate"])
