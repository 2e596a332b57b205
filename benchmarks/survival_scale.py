"""Wall time and peak memory of ``survival.describe`` on a million replicas.

Two samples of censored exponential escape times (τ = 1000, budget 1500, so ~22%
censored): continuous times, and the same times rounded up to a ``check_every`` grid of
100 (τ/grid = 10, as the engine records them; ``describe(..., grid=100)``). Each case runs
in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own; the
memory after imports and data generation is printed too, so the difference is what
``describe`` adds. The KS bootstrap is O(n) in memory (one replicate at a time), so the
peak should stay a few hundred MB above the baseline at any ``--bootstrap``.

Run: ``python benchmarks/survival_scale.py [--rows N] [--bootstrap B] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TAU, BUDGET, GRID = 1000.0, 1500.0, 100.0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(case: str, rows: int, bootstrap: int, seed: int) -> dict:
    """Time one ``describe`` call in this process; returns the figures as a dict."""
    import numpy as np

    from escapestat.stats._survival import describe
    from escapestat.stats._synthetic import censored_exponential

    durations, events = censored_exponential(1 / TAU, rows, BUDGET, np.random.default_rng(seed))
    grid = None
    if case == "grid":
        grid = GRID
        durations = np.minimum(np.ceil(durations / GRID) * GRID, BUDGET)
    baseline = _rss_mb()
    start = time.perf_counter()
    s = describe(durations, events, n_bootstrap=bootstrap, seed=seed, grid=grid)
    wall = time.perf_counter() - start
    return {
        "case": case,
        "rows": rows,
        "distinct_times": int(np.unique(durations).size),
        "bootstrap": bootstrap,
        "wall_s": round(wall, 1),
        "baseline_rss_mb": round(baseline),
        "peak_rss_mb": round(_rss_mb()),
        "ks_pvalue": s.poisson_pvalue,
        "median": s.median,
        "median_ci": s.median_ci,
        "rmst_ci": [round(x, 2) for x in s.rmst_ci],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", type=int, default=499)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", choices=["continuous", "grid"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process: one case, JSON on stdout
        print(json.dumps(run_case(args.case, args.rows, args.bootstrap, args.seed)))
        return
    print(f"describe() on {args.rows:,} rows, n_bootstrap = {args.bootstrap}")
    print(f"{'case':<11} {'distinct':>9} {'wall s':>7} {'RSS before':>11} {'peak RSS':>9}  KS p")
    for case in ("continuous", "grid"):
        flags = [f"--case={case}", f"--rows={args.rows}", f"--bootstrap={args.bootstrap}"]
        cmd = [sys.executable, __file__, *flags, f"--seed={args.seed}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        print(
            f"{case:<11} {r['distinct_times']:>9,} {r['wall_s']:>7} "
            f"{r['baseline_rss_mb']:>8} MB {r['peak_rss_mb']:>6} MB  {r['ks_pvalue']:.3f}"
        )


if __name__ == "__main__":
    main()
