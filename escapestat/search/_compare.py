"""Validation of a search: the best schedules, their ablations and the baselines, re-run.

A search picks its best trial from many noisy ones, so its best value is biased low (the
winner's curse). Here each arm — the best few trials, the best constant setting (from
the constant-only search with the same trial budget) and the study file's baselines —
is trained again on ``compare_seed``, never used in the search, at the same step budget,
every replica to the budget where its final error is measured (``search.needs_hold``).

A diverged replica is a failure (it never escapes): each arm's median is where the
Aalen–Johansen incidence of escape reaches ½, and arms are set against the literature
default and the best constant by the ratio of those medians with a bootstrap CI, in steps
and per wall-clock second (a filter or schedule may cost time per step), and by a
log-rank test on the escape times with diverged replicas kept at risk to the budget.

A schedule's edge over "the best constant" can be an artefact of a constant-only search
that explored too little. So each best trial that schedules something is also run with
each scheduled quantity held constant — at its start, its end and its time average over
the budget (its *ablations*) — and set against the best of them that meets the search's
constraint. The schedule matters only when that ratio's CI excludes 1. Choosing the best
ablation on the same data favours the ablation, so the test leans against the schedule.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from escapestat.config._schedules import parse_schedule
from escapestat.config._study import Study
from escapestat.engine._cluster import ClusterSpec, TaskFailed, cluster_device, connect
from escapestat.engine._loop import ClusterReady
from escapestat.errors import EscapestatError
from escapestat.search._arm_result import ArmComparison
from escapestat.search._search import (
    ArmRun,
    ArmSummary,
    SearchOutcome,
    constraint_values,
    needs_hold,
    run_arm,
)
from escapestat.search._space import SearchSpec, apply_overrides, build_study
from escapestat.stats._contrast import incidence_median_ratio, logrank_p, scaled, time_ratio

DEFAULT, BEST_CONSTANT = "default", "best-constant"
#: The values an ablation holds a schedule at.
HELD_AT = ("start", "end", "mean")


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]
    source: str  # "search trial N", "constant search", "baseline" or "ablation of ARM"


def pick_arms(spec: SearchSpec, search: SearchOutcome,
              constant: SearchOutcome | None) -> list[Arm]:
    """The best constant, the best ``spec.top`` distinct trials, then the baselines."""
    arms = _Arms()
    constant_best = constant.best if constant is not None else None
    if constant_best is not None:
        arms.add(BEST_CONSTANT, constant_best.user_attrs["overrides"], "constant search")
    for i, trial in enumerate(search.ranked()[:spec.top], start=1):
        arms.add(f"best-{i}", trial.user_attrs["overrides"], f"search trial {trial.number}")
    for name, overrides in spec.baselines.items():
        arms.add(name, overrides, "baseline")
    return arms.arms


class _Arms:
    """Arms in order, one per distinct setting: a setting met again keeps its first name."""

    def __init__(self, arms: Sequence[Arm] = ()):
        self.arms: list[Arm] = []
        self._names: dict[str, str] = {}
        for arm in arms:
            self.add(arm.name, arm.overrides, arm.source)

    def add(self, name: str, overrides: dict[str, Any], source: str) -> str:
        """The name the setting runs under (``name``, or the arm that has it already)."""
        key = json.dumps(overrides, sort_keys=True)
        if key not in self._names:
            self._names[key] = name
            self.arms.append(Arm(name, dict(overrides), source))
        return self._names[key]


def held_values(raw: dict, overrides: dict[str, Any], source: str) -> dict[str, dict]:
    """Each non-constant schedule of the arm's ``[dynamics]``, by key, with the constants
    an ablation holds it at: its value at the first and the last step and its mean over
    the budget (a batch size rounded to a whole number)."""
    study = build_study(raw, overrides, source)
    steps = np.arange(study.run.max_steps)
    dynamics = apply_overrides(raw, overrides).get("dynamics", {})
    out = {}
    for key, value in dynamics.items():
        if not (isinstance(value, dict) and "shape" in value):
            continue
        schedule = parse_schedule(value, f"{source}: [dynamics] {key}")
        if schedule.is_constant:
            continue
        held = {"start": schedule.value(0), "end": schedule.value(int(steps[-1])),
                "mean": float(np.mean([schedule.value(int(t)) for t in steps]))}
        if key == "batch_size":
            held = {k: max(1, int(round(v))) for k, v in held.items()}
        out[key] = held
    return out


def with_ablations(raw: dict, source: str, arms: list[Arm]) -> tuple[list[Arm],
                                                                      dict[str, list[str]]]:
    """The arms plus, for each best trial that schedules something, one arm per scheduled
    quantity and ``HELD_AT`` value; and, per such trial, the names of its ablations."""
    out = _Arms(arms)
    ablations: dict[str, list[str]] = {}
    for arm in [a for a in arms if a.source.startswith("search trial")]:
        for key, held in held_values(raw, arm.overrides, source).items():
            path = f"dynamics.{key}"
            kept = {k: v for k, v in arm.overrides.items()
                    if k != path and not k.startswith(path + ".")}
            for at in HELD_AT:
                name = out.add(f"{arm.name}:{key}@{at}", {**kept, path: held[at]},
                               f"ablation of {arm.name}")
                ablations.setdefault(arm.name, []).append(name)
    return out.arms, ablations


def run_arms(raw: dict, spec: SearchSpec, source: str, arms: list[Arm], device: str = "auto",
             on_arm: Callable[[Arm, ArmRun], None] | None = None,
             cluster: ClusterSpec | None = None,
             on_cluster: Callable[[ClusterReady], None] | None = None) -> dict[str, ArmRun]:
    """Each arm on the fresh seed, with ``compare_replicas`` replicas each: one after the
    other here, or (``cluster``) each arm one task on a Dask cluster, ``on_cluster`` told
    where once. Same seeds either way, so the same replicas; ``on_arm`` sees each arm as
    it finishes."""
    studies = {}
    for arm in arms:
        study = build_study(raw, arm.overrides, source, f"compare {arm.name}")
        seed = spec.compare_seed if spec.compare_seed is not None else study.run.seed + 1
        studies[arm.name] = study.with_overrides(seed=seed, replicas=spec.compare_replicas)
    if cluster is not None:
        return _run_arms_on_cluster(cluster, spec, arms, studies, device, on_arm, on_cluster)
    out = {}
    for arm in arms:
        study = studies[arm.name]
        out[arm.name] = run_arm(study, device, hold=needs_hold(study, spec))
        if on_arm is not None:
            on_arm(arm, out[arm.name])
    return out


def _run_arms_on_cluster(cluster: ClusterSpec, spec: SearchSpec, arms: list[Arm],
                         studies: dict[str, Study], device: str,
                         on_arm: Callable[[Arm, ArmRun], None] | None,
                         on_cluster: Callable[[ClusterReady], None] | None
                         ) -> dict[str, ArmRun]:
    """``run_arms`` with each arm one Dask task (``device`` "cuda" is the workers')."""
    dev = cluster_device(device)
    token = uuid.uuid4().hex[:8]
    jobs = {i: (f"escapestat-compare-arm-{i:03d}-{token}", run_arm,
                (studies[arm.name], str(dev), None, needs_hold(studies[arm.name], spec)))
            for i, arm in enumerate(arms)}
    done: dict[str, ArmRun] = {}
    with connect(cluster, dev.type == "cuda") as session:
        if on_cluster is not None:
            on_cluster(session.ready(len(arms), 0))
        try:
            for i, run in session.results(jobs):
                arm = arms[i]
                done[arm.name] = run
                if on_arm is not None:
                    on_arm(arm, run)
        except TaskFailed as failed:
            arm = arms[failed.item]
            kept = (f"{len(done)} of {len(arms)} arms had finished; compare writes its "
                    f"tables once every arm has run, so nothing was written")
            if failed.how == "lost":
                raise EscapestatError(f"lost the Dask scheduler at {cluster}; {kept}: rerun "
                                      f"compare (with or without --cluster)") from None
            what = "failed" if failed.how == "raised" else "finished but could not be read"
            raise EscapestatError(f"arm {arm.name} {what} on a Dask worker ({failed.why}); "
                                  f"{kept}") from None
    return {arm.name: done[arm.name] for arm in arms}  # the arms' order, as run here


def meets_constraints(spec: SearchSpec, summary: ArmSummary) -> bool:
    """Whether an arm's final test error or loss is within the search's constraint."""
    return all(v <= 0 for v in constraint_values(spec, summary).values())


@dataclass(frozen=True)
class _Contrast:
    ratio: float | None
    ci: list[float | None]
    wall: float | None
    logrank_p: float
    time_ratio: float | None
    time_ratio_ci: list[float | None]
    detectable: float | None
    bound: list | None  # [">" or "<", x]: the one side a not-reached median bounds


def _contrast(run: ArmRun, ref: ArmRun, n_bootstrap: int, seed: int) -> _Contrast:
    r = incidence_median_ratio(run.durations, run.causes, ref.durations, ref.causes,
                               n_bootstrap=n_bootstrap, seed=seed)
    wall = scaled(r, run.seconds_per_step / ref.seconds_per_step)
    grid = run.grid if run.grid == ref.grid else None
    t = time_ratio(*run.at_risk_to_budget(), *ref.at_risk_to_budget(), grid=grid)
    return _Contrast(r.ratio, [r.ci[0], r.ci[1]], wall.ratio,
                     logrank_p(*run.at_risk_to_budget(), *ref.at_risk_to_budget()),
                     t.ratio, [t.ci[0], t.ci[1]], t.detectable, _bound(run, ref))


def _bound(run: ArmRun, ref: ArmRun) -> list | None:
    """Where one median is not reached by the budget, the side of the ratio it bounds:
    arm not reached against a reached reference m gives ratio > budget/m (and the
    reverse < m/budget) — never nothing, when the log-rank may say p 1e-18."""
    arm, other = run.incidence().median_, ref.incidence().median_
    if arm is None and other is not None:
        return [">", run.budget / other]
    if other is None and arm is not None:
        return ["<", arm / ref.budget]
    return None


def _verdict(c: _Contrast) -> str:
    """Faster or slower from the time ratio's CI (the whole curve), else the median
    ratio's; "no difference shown" when neither excludes 1."""
    lo, hi = c.time_ratio_ci if c.time_ratio is not None else c.ci
    if hi is not None and hi < 1:
        return "faster"
    if lo is not None and lo > 1:
        return "slower"
    if c.bound is not None and c.logrank_p < 0.05:
        return "slower" if c.bound[0] == ">" else "faster"
    return "no difference shown"


def contrast_rows(arms: list[Arm], runs: dict[str, ArmRun], spec: SearchSpec,
                  ablations: dict[str, list[str]] | None = None, n_bootstrap: int = 2000,
                  seed: int = 0) -> list[ArmComparison]:
    """Per arm: outcome fractions, incidence median with CI, final errors, feasibility; its
    ratio of medians against the default, the best constant and (a scheduled best trial)
    the best feasible of its own ablations, each with a bootstrap CI."""
    ablations = ablations or {}
    summaries = {arm.name: runs[arm.name].summary(seed=seed) for arm in arms}
    feasible = {name: meets_constraints(spec, s) for name, s in summaries.items()}
    rows = []
    for arm in arms:
        run, s = runs[arm.name], summaries[arm.name]
        row = {"arm": arm.name, "source": arm.source, "params": arm.overrides,
               **{k: getattr(s, k) for k in ("n", "events", "diverged", "median", "median_ci",
                                             "escaped_fraction", "diverged_fraction",
                                             "censored_fraction", "final_test_error",
                                             "final_train_error", "final_loss", "rmst",
                                             "seconds_per_step")},
               "feasible": feasible[arm.name]}
        for ref_name, key in ((DEFAULT, "default"), (BEST_CONSTANT, "best_constant")):
            ref = runs.get(ref_name)
            c = (None if ref is None or ref_name == arm.name
                 else _contrast(run, ref, n_bootstrap, seed))
            row[f"ratio_vs_{key}"] = None if c is None else c.ratio
            row[f"ratio_vs_{key}_ci"] = None if c is None else c.ci
            row[f"wall_ratio_vs_{key}"] = None if c is None else c.wall
            row[f"logrank_p_vs_{key}"] = None if c is None else c.logrank_p
            row.update(_time_columns(key, c))
        # Against the best constant, the bar a schedule must clear; else the default.
        row["logrank_p"] = (row["logrank_p_vs_best_constant"]
                            if BEST_CONSTANT in runs else row["logrank_p_vs_default"])
        row.update(_ablation_columns(arm, runs, summaries, feasible,
                                     ablations.get(arm.name, []), n_bootstrap, seed))
        rows.append(ArmComparison(**row))
    return rows


def _time_columns(key: str, c: _Contrast | None) -> dict[str, Any]:
    """``time_ratio_vs_KEY`` (with ``_ci``), ``detectable_vs_KEY`` and ``ratio_vs_KEY_bound``
    ([">" or "<", x] where a median is not reached)."""
    return {f"time_ratio_vs_{key}": None if c is None else c.time_ratio,
            f"time_ratio_vs_{key}_ci": None if c is None else c.time_ratio_ci,
            f"detectable_vs_{key}": None if c is None else c.detectable,
            f"ratio_vs_{key}_bound": None if c is None else c.bound}


def _ablation_columns(arm: Arm, runs: dict[str, ArmRun], summaries: dict[str, ArmSummary],
                      feasible: dict[str, bool], names: list[str], n_bootstrap: int,
                      seed: int) -> dict[str, Any]:
    """The best feasible ablation (shortest median, then restricted mean) and the arm's
    ratio against it; ``schedule_verdict`` says whether the CI excludes 1 and which way."""
    out = {"ablations": names or None, "ablation_best": None, "ratio_vs_ablation": None,
           "ratio_vs_ablation_ci": None, "wall_ratio_vs_ablation": None,
           "logrank_p_vs_ablation": None, **_time_columns("ablation", None),
           "schedule_verdict": None}
    if not names:
        return out
    ok = [n for n in dict.fromkeys(names) if n != arm.name and feasible[n]]
    if not ok:
        out["schedule_verdict"] = "no ablation is feasible"
        return out
    best = min(ok, key=lambda n: (summaries[n].median or np.inf, summaries[n].rmst))
    c = _contrast(runs[arm.name], runs[best], n_bootstrap, seed)
    out.update(ablation_best=best, ratio_vs_ablation=c.ratio, ratio_vs_ablation_ci=c.ci,
               wall_ratio_vs_ablation=c.wall, logrank_p_vs_ablation=c.logrank_p,
               **_time_columns("ablation", c), schedule_verdict=_verdict(c))
    return out
