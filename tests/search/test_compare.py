"""compare: arms chosen from a search, schedule ablations, and the contrast columns."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from escapestat.engine._detector import CENSORED, DIVERGED, ESCAPED
from escapestat.search._compare import (
    Arm,
    _contrast,
    _verdict,
    contrast_rows,
    held_values,
    meets_constraints,
    with_ablations,
)
from escapestat.search._search import ArmRun
from escapestat.search._space import load_search

STUDY = """
name = "abl"
[task]
operation = "add"
p = 23
[model]
kind = "mlp"
width = 64
[dynamics]
noise = "sgd"
lr = 2e-2
weight_decay = 1.0
batch_size = 64
[run]
replicas = 4
max_steps = 1000
[search]
trials = 2
max_final_test_error = 0.1
[search.space]
"dynamics.lr" = {low = 1e-2, high = 3e-2, log = true}
"dynamics.weight_decay.shape" = {choices = ["constant", "cosine"]}
"dynamics.weight_decay.value" = {low = 0.5, high = 2.0}
"dynamics.weight_decay.start" = {low = 0.5, high = 2.0}
"dynamics.weight_decay.end" = {low = 0.1, high = 1.0}
"dynamics.weight_decay.steps" = {low = 100, high = 1000}
"""

COSINE = {"dynamics.lr": 0.02, "dynamics.weight_decay.shape": "cosine",
          "dynamics.weight_decay.start": 2.0, "dynamics.weight_decay.end": 0.5,
          "dynamics.weight_decay.steps": 500}


def test_a_schedule_is_held_at_its_start_end_and_mean_over_the_budget():
    raw, _ = load_search(STUDY, "abl.toml")
    held = held_values(raw, COSINE, "abl.toml")
    assert set(held) == {"weight_decay"}
    h = held["weight_decay"]
    assert h["start"] == pytest.approx(2.0) and h["end"] == pytest.approx(0.5)
    # Cosine from 2 to 0.5 over 500 steps averages (2 + 0.5) / 2 there, then holds 0.5
    # for the other 500 steps of the 1000-step budget: mean ≈ (1.25 + 0.5) / 2.
    assert h["mean"] == pytest.approx((1.25 + 0.5) / 2, abs=2e-3)
    constant = {"dynamics.lr": 0.02, "dynamics.weight_decay.shape": "constant",
                "dynamics.weight_decay.value": 1.0}
    assert held_values(raw, constant, "abl.toml") == {}


def test_each_scheduled_best_trial_gets_its_ablations_once():
    raw, _ = load_search(STUDY, "abl.toml")
    arms = [Arm("best-constant", {"dynamics.lr": 0.02, "dynamics.weight_decay": 0.5},
                "constant search"),
            Arm("best-1", COSINE, "search trial 3"),
            Arm("default", {"dynamics.lr": 0.01}, "baseline")]
    out, ablations = with_ablations(raw, "abl.toml", arms)
    names = [a.name for a in out]
    # Held at its end (0.5) the cosine arm is the best constant already: that arm serves.
    assert ablations == {"best-1": ["best-1:weight_decay@start", "best-constant",
                                    "best-1:weight_decay@mean"]}
    assert names[:3] == ["best-constant", "best-1", "default"]
    start = next(a for a in out if a.name == "best-1:weight_decay@start")
    assert start.overrides == {"dynamics.lr": 0.02, "dynamics.weight_decay": 2.0}
    assert start.source == "ablation of best-1"
    # A baseline is never ablated, even with a schedule.
    base = [Arm("sched", COSINE, "baseline")]
    assert with_ablations(raw, "abl.toml", base) == (base, {})


def _run(times, statuses, err, budget=1000, seconds=1.0):
    rows = pd.DataFrame({"duration": times, "status": statuses,
                         "event": [int(s == ESCAPED) for s in statuses],
                         "final_test_accuracy": [1 - err] * len(times)})
    return ArmRun(rows, seconds, budget, budget)


def test_a_schedule_matters_only_against_its_best_feasible_ablation():
    _, spec = load_search(STUDY, "abl.toml")
    rng = np.random.default_rng(0)

    def arm(scale, err=0.0, n=64):
        return _run(np.ceil(rng.exponential(scale, n)), [ESCAPED] * n, err)

    runs = {"best-1": arm(100), "best-1:wd@start": arm(100),
            "best-1:wd@end": arm(300), "best-1:wd@mean": arm(20, err=0.5),
            "best-2": arm(50), "best-2:wd@start": arm(200), "best-2:wd@end": arm(400),
            "default": arm(400)}
    arms = [Arm(n, {}, "ablation of x" if ":" in n else "search trial 0") for n in runs]
    ablations = {"best-1": ["best-1:wd@start", "best-1:wd@end", "best-1:wd@mean"],
                 "best-2": ["best-2:wd@start", "best-2:wd@end"]}
    rows = {r.arm: r.as_dict() for r in contrast_rows(arms, runs, spec, ablations, n_bootstrap=500)}
    one, two = rows["best-1"], rows["best-2"]
    # @mean is fastest but fails the final-error limit (0.5 > 0.1): the bar is @start,
    # which is the same law as best-1 — no difference shown.
    assert not rows["best-1:wd@mean"]["feasible"] and rows["best-1:wd@start"]["feasible"]
    assert one["ablation_best"] == "best-1:wd@start"
    lo, hi = one["ratio_vs_ablation_ci"]
    assert lo < 1 < hi and one["schedule_verdict"] == "no difference shown"
    # best-2 escapes 4× sooner than its best ablation: the CI excludes 1 below.
    assert two["ablation_best"] == "best-2:wd@start"
    assert two["ratio_vs_ablation"] == pytest.approx(0.25, rel=0.35)
    assert two["ratio_vs_ablation_ci"][1] < 1 and two["schedule_verdict"] == "faster"
    assert 0 <= two["logrank_p_vs_ablation"] < 1e-3
    assert rows["default"]["ablations"] is None and rows["default"]["ratio_vs_ablation"] is None
    assert two["ratio_vs_default"] < 1


def test_an_arm_with_divergences_cannot_win_against_the_same_escape_times():
    _, spec = load_search(STUDY, "abl.toml")
    times = list(np.arange(100, 2100, 100.0))[:20]
    clean = _run(times, [ESCAPED] * 20, 0.0, budget=3000)
    # Its 14 fastest escapes, and 6 replicas (30%) diverged early.
    mixed = _run(times[:14] + [30.0] * 6, [ESCAPED] * 14 + [DIVERGED] * 6, 0.0, budget=3000)
    runs = {"default": clean, "best-1": mixed}
    arms = [Arm("default", {}, "baseline"), Arm("best-1", {}, "search trial 0")]
    row = {r.arm: r.as_dict() for r in contrast_rows(arms, runs, spec, n_bootstrap=500)}["best-1"]
    assert row["ratio_vs_default"] >= 1 and row["diverged_fraction"] == pytest.approx(0.3)
    assert row["escaped_fraction"] == pytest.approx(0.7) and row["censored_fraction"] == 0
    assert row["rmst"] > clean.summary().rmst


def test_constraints_decide_feasibility():
    _, spec = load_search(STUDY, "abl.toml")
    censored = _run([1000.0] * 4, [CENSORED] * 4, 0.0).summary()
    assert censored.median is None and math.isclose(censored.rmst, 1000.0)
    ok = replace(censored, final_test_error=0.05, final_loss=None)
    assert meets_constraints(spec, ok)
    assert not meets_constraints(spec, replace(ok, final_test_error=0.2))
    assert not meets_constraints(spec, replace(ok, final_test_error=None))


def _grid_arm(rng, tau, n, grid, budget=4000):
    t = np.minimum(np.ceil(rng.exponential(tau, n) / grid) * grid, budget)
    return ArmRun(pd.DataFrame({"duration": t, "status": np.where(t < budget, ESCAPED,
                                                                   "censored"),
                                "event": (t < budget).astype(int),
                                "final_test_accuracy": 1.0}), 1.0, budget, budget, grid)


def test_on_the_grid_the_time_ratio_sees_what_the_median_ratio_cannot():
    """One arm 1.5× faster, grid at τ/4. At n = 64 the medians sit a few checks apart:
    over 30 datasets the bootstrap CI of their ratio excluded 1 in ~7% (the review's
    7.7%), the Weibull-AFT time ratio (every escape, interval-censored on the grid) in
    ~58% (``time_ratio``'s measured power); at n = 256 it excludes 1, holds the truth
    1/1.5, and decides the verdict."""
    from escapestat.stats._contrast import median_ratio, time_ratio

    rng = np.random.default_rng(5)
    median_hits = time_hits = 0
    for i in range(30):
        ref, arm = _grid_arm(rng, 400, 64, 100), _grid_arm(rng, 400 / 1.5, 64, 100)
        m = median_ratio(arm.durations, arm.events, ref.durations, ref.events,
                         n_bootstrap=200, seed=i)
        median_hits += m.ci[1] is not None and m.ci[1] < 1
        time_hits += time_ratio(arm.durations, arm.events, ref.durations, ref.events,
                                grid=100).ci[1] < 1
    assert time_hits >= 12 and time_hits >= 3 * max(median_hits, 1), (time_hits, median_hits)

    _, spec = load_search(STUDY, "abl.toml")
    runs = {"default": _grid_arm(rng, 400, 256, 100),
            "best-1": _grid_arm(rng, 400 / 1.5, 256, 100)}
    arms = [Arm("default", {}, "baseline"), Arm("best-1", {}, "search trial 0")]
    row = {r.arm: r.as_dict() for r in contrast_rows(arms, runs, spec, n_bootstrap=500)}["best-1"]
    tlo, thi = row["time_ratio_vs_default_ci"]
    assert thi < 1 and tlo <= 1 / 1.5 <= thi
    assert 1 < row["detectable_vs_default"] < 1.5
    c = compare_contrast(runs["best-1"], runs["default"])
    assert c.time_ratio == pytest.approx(row["time_ratio_vs_default"]) and c.bound is None
    assert _verdict(c) == "faster"


def test_no_time_ratio_when_the_escapes_sit_on_one_or_two_checks():
    """Each arm's escapes within a check or two (a tiny search): the Weibull shape runs
    off (≈ 120) and the AFT's interval spans 10⁻¹⁷ to 10¹⁶; no time ratio is reported,
    while spread-out arms keep theirs."""
    from escapestat.stats._contrast import time_ratio

    arm, ref = np.full(8, 300.0), np.r_[np.full(6, 200.0), np.full(2, 250.0)]
    none = time_ratio(arm, np.ones(8), ref, np.ones(8), grid=50)
    assert none.ratio is None and none.ci == (None, None) and none.detectable is None
    rng = np.random.default_rng(2)
    spread = time_ratio(np.ceil(rng.exponential(300, 16) / 50) * 50, np.ones(16),
                        np.ceil(rng.exponential(200, 16) / 50) * 50, np.ones(16), grid=50)
    assert spread.ratio is not None and spread.ci[0] < spread.ratio < spread.ci[1]


def test_a_median_not_reached_bounds_one_side_of_the_ratio():
    """21 of 64 escape by the budget against a reference with median ≈ 700: the ratio of
    medians is unbounded above, but it is > budget / 700, and the verdict says slower."""
    rng = np.random.default_rng(6)
    slow = _grid_arm(rng, 9000, 64, 50, budget=3000)
    fast = _grid_arm(rng, 1000, 64, 50, budget=3000)
    c = compare_contrast(slow, fast)
    assert c.ratio is None and c.bound[0] == ">"
    assert c.bound[1] == pytest.approx(3000 / fast.incidence().median_)
    assert c.logrank_p < 1e-6 and _verdict(c) == "slower"


def compare_contrast(run, ref):
    return _contrast(run, ref, 500, 0)
