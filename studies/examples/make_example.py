"""Write the worked-example table escapes.csv and its known truth truth.json next to this file.

A synthetic Arrhenius ladder shaped like the Langevin control (ΔE = 0.03, τ₀ = 120 steps,
T = ΔE/3 … ΔE/8, 256 replicas, a 4·10⁴-step budget), so the README's commands have data
whose answer is known. Run: ``python studies/examples/make_example.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from escapestat.stats._arrhenius import fit_arrhenius
from escapestat.stats._synthetic import censored_exponential
from escapestat.table._records import Columns, write_table

HERE = Path(__file__).resolve().parent
BARRIER = 0.03
TAU0 = 120.0  # steps: k(T) = exp(log_prefactor − ΔE/T) with log_prefactor = −log τ₀
LOG_PREFACTOR = -math.log(TAU0)
BARRIER_OVER_T = [3, 4, 5, 6, 8]
TEMPERATURES = [BARRIER / x for x in BARRIER_OVER_T]
REPLICAS = 256
BUDGET = 40_000  # steps
SEED = 20261123
LR = 0.25


def make_table() -> pd.DataFrame:
    """One row per replica: escape step (ceil of the continuous time) or the budget if censored."""
    rng = np.random.default_rng(SEED)
    frames = []
    for temperature in TEMPERATURES:
        rate = math.exp(LOG_PREFACTOR - BARRIER / temperature)  # per step
        times, events = censored_exponential(rate, REPLICAS, BUDGET, rng)
        # An escape during step s (continuous time in (s−1, s]) is recorded at step s; the
        # budget is a whole number, so ceil keeps censored replicas at exactly BUDGET.
        steps = np.maximum(np.ceil(times), 1).astype(int)
        frames.append(
            pd.DataFrame(
                {
                    "duration": steps,
                    "event": events.astype(int),
                    "temperature": temperature,
                    "lr": LR,
                    "seed": SEED,
                    "replica": np.arange(REPLICAS),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    df = make_table()
    write_table(df, HERE / "escapes.csv")
    truth = {
        "barrier": BARRIER,
        "log_prefactor": LOG_PREFACTOR,
        "tau0": TAU0,
        "temperatures": TEMPERATURES,
        "replicas": REPLICAS,
        "budget": BUDGET,
        "seed": SEED,
        "generator": "studies/examples/make_example.py",
    }
    (HERE / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")

    fit = fit_arrhenius(df, Columns(temperature="temperature"), crosscheck=False)
    lo, hi = fit.barrier_ci
    censored = 1 - df.groupby("temperature")["event"].mean().sort_index(ascending=False)
    print(f"wrote {HERE / 'escapes.csv'} ({len(df)} rows) and {HERE / 'truth.json'}")
    print("censored fraction by T: " + ", ".join(f"{t:.5g}: {c:.2f}" for t, c in censored.items()))
    print(
        f"fitted barrier {fit.barrier:.5f} (95% CI {lo:.5f} to {hi:.5f}, {fit.method}); "
        f"truth {BARRIER} {'inside' if lo < BARRIER < hi else 'OUTSIDE'} the CI"
    )
    if not lo < BARRIER < hi:
        raise SystemExit("the fitted barrier CI misses the truth")


if __name__ == "__main__":
    main()
