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
    fits = run_summary(df, n_bootstrap=49).as_dict()["arrhenius"]
    assert [f["weight_decay"] for f in fits] == [0.3, 0.6]
    for f in fits:
        lo, hi = f["barrier_ratio_ci"]
        assert lo < 1 < hi and f["barrier"] == pytest.approx(f["theory_barrier"], rel=0.15)


def test_scheduled_temperatures_get_no_arrhenius_law():
    df = pd.concat([_replicas(0.01, 0.3, seed=1), _replicas(0.02, 0.6, "{}", seed=2)])
    fits = run_summary(df, n_bootstrap=49).as_dict()["arrhenius"]
    assert "barrier" in fits[0] and "barrier" not in fits[1]
    assert "constant" in fits[1]["error"]


def test_diverged_replicas_count_as_censored_time_at_risk():
    df = _replicas(0.01, 0.3, seed=3)
    first = df["condition"] == df["condition"].min()
    base = run_summary(df, n_bootstrap=49).as_dict()["conditions"][0]
    df.loc[first & (df["event"] == 0), "status"] = "diverged"
    again = run_summary(df, n_bootstrap=49).as_dict()["conditions"][0]
    assert again["diverged"] > 0
    assert again["n"] == base["n"] and again["rate"] == pytest.approx(base["rate"])


def test_the_summary_is_typed_and_its_json_has_the_keys_that_apply():
    """A condition with no usable replica has no rates and says why; a usable one has
    its escape statistics; the verdict lives in one place (the GroupSummary)."""
    import json

    from escapestat.stats import ConditionSummary, RunSummary

    df = _replicas(0.01, 0.3, seed=4)
    last = df["condition"] == df["condition"].max()
    df.loc[last, "status"] = "untrapped"
    summary = run_summary(df, n_bootstrap=49)
    assert isinstance(summary, RunSummary) and not summary.grokking
    usable, empty = summary.conditions[0], summary.conditions[-1]
    assert isinstance(usable, ConditionSummary) and usable.escape is not None
    assert usable.verdict == usable.escape.verdict and usable.n == usable.escape.n == 200
    assert usable.barrier_over_temperature == pytest.approx(5.0)  # the coldest: T = ΔE/5
    assert empty.escape is None and (empty.n, empty.events, empty.untrapped) == (0, 0, 200)
    rows = json.loads(json.dumps(summary.as_dict()))["conditions"]
    assert {"rate", "tau_ci", "full_batch"} <= set(rows[0])
    assert not {"rate", "tau_ci", "full_batch"} & set(rows[-1])
    assert (rows[-1]["verdict"], rows[-1]["verdict_reason"]) == ("", "no usable replicas")
    assert list(rows[0])[:9] == ["condition", "weight_decay", "temperature", "lr", "batch_size",
                                 "barrier_theory", "barrier_over_temperature", "diverged",
                                 "untrapped"]
