"""How often the mechanism verdict is right on times the engine records: on its check grid.

The engine records an escape at the first check at or after it, so durations are
rounded up to ``check_every``. Simulated escape times (n = 256 per dataset, budget 40τ,
so nothing is censored in practice) from an exponential (activated escape: the verdict
should be "activated"), from a Weibull of shape 1.5 (not memoryless: how often it is
still called "activated" is the rule's blind spot) and from a Weibull of shape 6 (a
narrow, drift-set delay: "deterministic"), each at τ/grid = 3, 10 and 30 and as exact
continuous times. For each cell: the fraction of datasets per verdict and the mean
fitted Weibull shape, the shape fitted as escapestat does (interval-censored on
(t − grid, t] when the grid is known) and, for contrast, as if the rounded times were
exact (what 0.6 did).

Run: ``python benchmarks/verdict_grid.py [--datasets N] [--bootstrap B] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from escapestat.stats._survival import KS_BOOTSTRAP, describe, weibull_shape
from escapestat.stats._verdict import mechanism

N, GRID = 256, 100.0


def sample(rng: np.random.Generator, shape: float, ratio: float | None):
    """n Weibull(shape) times of scale τ = ratio·grid (τ = 1000 when continuous), rounded
    up to the grid when there is one; censored at 40τ."""
    scale = (ratio or 10.0) * GRID
    t = scale * rng.weibull(shape, N)
    if ratio is not None:
        t = np.ceil(t / GRID) * GRID
    e = (t <= 40 * scale).astype(int)
    return np.minimum(t, 40 * scale), e


def cell(seed: int, shape: float, ratio: float | None, datasets: int, bootstrap: int) -> dict:
    rng = np.random.default_rng(seed)
    grid = GRID if ratio is not None else None
    kinds: dict[str, int] = {}
    exact_kinds: dict[str, int] = {}
    shapes, exact_shapes = [], []
    for i in range(datasets):
        t, e = sample(rng, shape, ratio)
        s = describe(t, e, grid=grid, n_bootstrap=bootstrap, seed=i)
        kinds[s.verdict] = kinds.get(s.verdict, 0) + 1
        shapes.append(s.weibull_shape)
        if grid is not None:  # the same data, shape fitted as if the times were exact
            rho, ci = weibull_shape(t, e)
            v = mechanism(s.n, s.events, ci, s.poisson_pvalue, s.rate_ci[1]).mechanism
            exact_kinds[v] = exact_kinds.get(v, 0) + 1
            exact_shapes.append(rho)
    out = {"shape": shape, "tau_over_grid": ratio, "datasets": datasets,
           "verdicts": {k: v / datasets for k, v in sorted(kinds.items())},
           "mean_shape": float(np.mean(shapes))}
    if exact_kinds:
        out.update(exact_fit_verdicts={k: v / datasets for k, v in sorted(exact_kinds.items())},
                   exact_fit_mean_shape=float(np.mean(exact_shapes)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200, help="datasets per cell")
    parser.add_argument("--bootstrap", type=int, default=KS_BOOTSTRAP,
                        help="KS bootstrap draws per dataset")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows = []
    for shape in (1.0, 1.5, 6.0):
        for k, ratio in enumerate((3, 10, 30, None)):
            row = cell(args.seed + 10 * k + int(shape), shape, ratio, args.datasets,
                       args.bootstrap)
            rows.append(row)
            where = "continuous" if ratio is None else f"τ/grid = {ratio}"
            fitted = ", ".join(f"{k} {v:.0%}" for k, v in row["verdicts"].items())
            line = f"Weibull {shape:g}, {where}: {fitted}; mean shape {row['mean_shape']:.2f}"
            if "exact_fit_verdicts" in row:
                as_exact = ", ".join(f"{k} {v:.0%}" for k, v in
                                     row["exact_fit_verdicts"].items())
                line += (f" | fitted as exact: {as_exact}; mean shape "
                         f"{row['exact_fit_mean_shape']:.2f}")
            print(line, flush=True)
    print(json.dumps({"cells": rows, "n": N, "bootstrap": args.bootstrap,
                      "seconds": round(time.perf_counter() - began, 1)}))


if __name__ == "__main__":
    main()
