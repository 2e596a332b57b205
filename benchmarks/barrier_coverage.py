"""Coverage of the barrier's 95% CI when rates scatter between temperatures, over a grid.

Each temperature's log-rate gets its own N(0, σ²) offset (over-dispersion a Poisson model
does not have), on ladders of 3 or 5 temperatures (ΔE/T from 3 to 5, ΔE = 1) with 64 or
256 replicas each and one budget censoring ~30% at the middle temperature. Per cell: the
coverage and median width of the barrier CI under

  classic    — quasi-Poisson: φ̂ = χ²_P/df, t on df (the rule ``fit_arrhenius`` uses);
  moderated  — the rule of escapestat ≤ 0.7: φ̃ = (1 + χ²_P)/(1 + df), t on
               (1 + df)²/df degrees of freedom;
  moderated-ν̂ — φ̃ as above, t on the Satterthwaite df at the estimated dispersion,
               (1 + df·φ')²/(df·φ'²) with φ' = max(φ̂, 1) (the rule's own df where
               φ̂ ≤ 1, → df as φ̂ grows);
  AFT        — the lifelines Weibull-AFT cross-check's Wald CI (model-based, one row per
               replica: it assumes no scatter between temperatures).

    python benchmarks/barrier_coverage.py [--datasets N] [--seed S] [--no-aft]
                                          [--sigmas σ ...] [--replicas R ...]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.stats._arrhenius import fit_arrhenius
from escapestat.stats._synthetic import arrhenius_table
from escapestat.table._records import Columns

SIGMAS = (0.0, 0.1, 0.2, 0.3)
LADDERS = {3: np.array([3.0, 4.0, 5.0]), 5: np.array([3.0, 3.5, 4.0, 4.5, 5.0])}
REPLICAS = (64, 256)
CENSORED_AT_MIDDLE = 0.3
COLUMNS = Columns(temperature="temperature")
RULES = ("classic", "moderated", "moderated-ν̂", "AFT")


def ladder(seed: int, inv_t: np.ndarray, replicas: int, sigma: float) -> pd.DataFrame:
    temps = 1.0 / inv_t
    budget = -math.exp(float(np.median(inv_t))) * math.log(CENSORED_AT_MIDDLE)
    jitter = np.random.default_rng([seed, 1]).normal(0.0, sigma, temps.size)
    return pd.concat(arrhenius_table(1.0, j, [t], replicas, budget, seed=[seed, i])
                     for i, (t, j) in enumerate(zip(temps, jitter, strict=True)))


def half_widths(df: pd.DataFrame, aft: bool) -> tuple[dict, dict, float]:
    """Per rule: the CI's centre and half-width; and the Pearson dispersion φ̂."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_arrhenius(df, COLUMNS, crosscheck=aft)
    dof = len(fit.temperatures) - 2
    se_poisson = math.sqrt(np.asarray(fit.covariance)[1, 1] / fit.scale)
    phi = fit.dispersion
    moderated = (1 + phi * dof) / (1 + dof)
    floor = max(phi, 1.0)  # below 1, the Poisson df of the moderated rule
    nu_hat = (1 + dof * floor) ** 2 / (dof * floor**2)
    half = {
        "classic": (fit.barrier_ci[1] - fit.barrier_ci[0]) / 2,
        "moderated": stats.t.ppf(0.975, (1 + dof) ** 2 / dof) * math.sqrt(moderated)
        * se_poisson,
        "moderated-ν̂": stats.t.ppf(0.975, nu_hat) * math.sqrt(moderated) * se_poisson,
    }
    centre = {rule: fit.barrier for rule in half}
    cross = fit.weibull_aft
    if aft and cross is not None and cross.barrier is not None and cross.barrier_ci:
        lo, hi = cross.barrier_ci
        half["AFT"], centre["AFT"] = (hi - lo) / 2, cross.barrier
    return centre, half, phi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=400, help="ladders per cell")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--no-aft", action="store_true", help="skip the AFT column (slow)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS),
                        help="log-rate scatters to run (default: 0 0.1 0.2 0.3)")
    parser.add_argument("--replicas", type=int, nargs="+", default=list(REPLICAS),
                        help="replicas per temperature to run (default: 64 256)")
    args = parser.parse_args()
    began = time.perf_counter()
    rules = [r for r in RULES if r != "AFT" or not args.no_aft]
    mc = math.sqrt(0.95 * 0.05 / args.datasets)
    print(f"{args.datasets} ladders per cell (Monte-Carlo SE of a coverage ≈ {mc:.3f}), seed "
          f"{args.seed}; ΔE = 1, ΔE/T from 3 to 5; coverage (median CI width)")
    head = f"{'T':>2} {'R':>4} {'σ':>4} {'φ̂ med':>6}" + "".join(f"{r:>20}" for r in rules)
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(args.seed)
    for n_t, inv_t in LADDERS.items():
        for replicas in args.replicas:
            for sigma in args.sigmas:
                hits = {r: [] for r in rules}
                widths = {r: [] for r in rules}
                phis = []
                for seed in rng.integers(0, 2**32, size=args.datasets):
                    df = ladder(int(seed), inv_t, replicas, sigma)
                    centre, half, phi = half_widths(df, not args.no_aft)
                    phis.append(phi)
                    for r in rules:
                        ok = r in half
                        hits[r].append(ok and abs(centre[r] - 1.0) <= half[r])
                        widths[r].append(2 * half[r] if ok else math.nan)
                cells = "".join(f"{np.mean(hits[r]):>11.3f} ({np.nanmedian(widths[r]):.3f})"
                                for r in rules)
                print(f"{n_t:>2} {replicas:>4} {sigma:>4.1f} {np.median(phis):>6.2f}{cells}",
                      flush=True)
    print(f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
