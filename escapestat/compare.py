"""Validation of a search: the best schedules and the baselines re-run on fresh seeds.

A search picks its best trial from many noisy ones, so its best value is biased low (the
winner's curse). Here each arm — the best few trials, the best constant setting (from
the constant-only search with the same trial budget) and the study file's baselines —
is trained again on ``compare_seed``, never used in the search, at the same step budget,
and set against the literature default and the best constant: the ratio of median times
with a bootstrap CI, and a log-rank p-value; also per wall-clock second, since a filter
or schedule may cost time per step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .arm_contrast import logrank_p, median_ratio, scaled
from .search import ArmRun, SearchOutcome, run_arm
from .search_space import SearchSpec, build_study

DEFAULT, BEST_CONSTANT = "default", "best-constant"


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]
    source: str  # "search", "constant search" or "baseline"


def pick_arms(spec: SearchSpec, search: SearchOutcome,
              constant: SearchOutcome | None) -> list[Arm]:
    """The best ``spec.top`` distinct trials, the best constant, then the baselines."""
    arms: list[Arm] = []
    seen: set[str] = set()

    def add(name: str, overrides: dict, source: str) -> None:
        key = json.dumps(overrides, sort_keys=True)
        if key not in seen:
            seen.add(key)
            arms.append(Arm(name, dict(overrides), source))

    constant_best = constant.best if constant is not None else None
    if constant_best is not None:
        add(BEST_CONSTANT, constant_best.user_attrs["overrides"], "constant search")
    for i, trial in enumerate(search.ranked()[:spec.top], start=1):
        add(f"best-{i}", trial.user_attrs["overrides"], f"search trial {trial.number}")
    for name, overrides in spec.baselines.items():
        add(name, overrides, "baseline")
    return arms


def run_arms(raw: dict, spec: SearchSpec, source: str, arms: list[Arm], device: str = "auto",
             on_arm: Callable[[Arm, ArmRun], None] | None = None) -> dict[str, ArmRun]:
    """Each arm on the fresh seed, with ``compare_replicas`` replicas each."""
    out = {}
    for arm in arms:
        study = build_study(raw, arm.overrides, source, f"compare {arm.name}")
        seed = spec.compare_seed if spec.compare_seed is not None else study.run.seed + 1
        study = study.with_overrides(seed=seed, replicas=spec.compare_replicas)
        out[arm.name] = run_arm(study, device, hold=spec.max_final_loss is not None)
        if on_arm is not None:
            on_arm(arm, out[arm.name])
    return out


def _ci(value) -> list[float | None]:
    return [value.ci[0], value.ci[1]]


def contrast_rows(arms: list[Arm], runs: dict[str, ArmRun], n_bootstrap: int = 2000,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Per arm: its median with CI, escaped fraction, final test error, and its ratio of
    medians (in steps and in wall-clock seconds) against the default and the best constant."""
    rows = []
    for arm in arms:
        run = runs[arm.name]
        s = run.summary()
        row = {"arm": arm.name, "source": arm.source, "params": arm.overrides,
               "n": s["n"], "events": s["events"], "median": s["median"],
               "median_ci": s["median_ci"], "escaped_fraction": s["escaped_fraction"],
               "final_test_error": s["final_test_error"], "final_loss": s["final_loss"],
               "rmst": s["rmst"],
               "seconds_per_step": s["seconds_per_step"]}
        for ref_name, key in ((DEFAULT, "default"), (BEST_CONSTANT, "best_constant")):
            ref = runs.get(ref_name)
            row[f"ratio_vs_{key}"] = row[f"ratio_vs_{key}_ci"] = None
            row[f"wall_ratio_vs_{key}"] = None
            row[f"logrank_p_vs_{key}"] = None
            if ref is None or ref_name == arm.name:
                continue
            r = median_ratio(run.durations, run.events, ref.durations, ref.events,
                             n_bootstrap=n_bootstrap, seed=seed)
            wall = scaled(r, run.seconds_per_step / ref.seconds_per_step)
            row[f"ratio_vs_{key}"], row[f"ratio_vs_{key}_ci"] = r.ratio, _ci(r)
            row[f"wall_ratio_vs_{key}"] = wall.ratio
            row[f"logrank_p_vs_{key}"] = logrank_p(run.durations, run.events,
                                                   ref.durations, ref.events)
        # Against the best constant, the bar a schedule must clear; else the default.
        row["logrank_p"] = (row["logrank_p_vs_best_constant"]
                            if BEST_CONSTANT in runs else row["logrank_p_vs_default"])
        rows.append(row)
    return rows
