"""Optuna search over a study's schedules, with a censoring-aware objective and pruning.

Each trial trains the study's replicas (one condition: the trial's parameters) for the
study's step budget on the study's own seed — the same seed for every trial, so that
trials differ by their parameters, not their luck — and is scored by

    rmst:     log RMST(budget) = log ∫₀^budget S(t) dt   (S: Kaplan–Meier of the escape times)
    log_tau:  log(exposure / max(escapes, ½))             (exposure: Σ durations)

Censored replicas enter as censored, never as escapes at the budget. At ``checkpoints``
steps t the fraction of the time so far spent trapped, log((1/t) ∫₀^t S), is reported
so that a pruner can stop a hopeless trial. It never rises with t (S falls), so Optuna's
median pruner, which compares a trial's best value so far with the others' at that
step, compares like with like; at the budget it is the objective minus log(budget).
``max_final_test_error`` (grokking) or ``max_final_loss`` (the linear trap: every replica
then trains to the budget, escaped or not, and its loss there is measured) is a
constraint (``Trial.set_constraint``): a schedule that escapes fast but ends worse — by
staying hot, say — does not win. Each trial keeps its overrides, events, n,
median and CI, RMST and final test error as user attributes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from .detector import CENSORED, DIVERGED, ESCAPED
from .errors import EscapestatError
from .search_space import SearchSpec, build_study, suggest
from .study import Study, conditions
from .survival import KaplanMeierMedian, kaplan_meier, restricted_mean
from .trials import plan_chunks, resolve_device, run_chunk_output

SURVIVAL_STATUSES = (ESCAPED, CENSORED, DIVERGED)
#: The constraint's name in Optuna (``Trial.set_constraint``): mean final test error − limit.
CONSTRAINT = "final_test_error"
CONSTANT_SUFFIX = "-constant"


# ---------------------------------------------------------------- one arm, run and summarised
@dataclass
class ArmRun:
    """One study run in memory: every replica's row, the wall time and the steps run."""

    replicas: pd.DataFrame
    seconds: float
    steps: int
    budget: int

    @property
    def survival(self) -> pd.DataFrame:
        return self.replicas[self.replicas["status"].isin(SURVIVAL_STATUSES)]

    @property
    def durations(self) -> np.ndarray:
        return self.survival["duration"].to_numpy(dtype=float)

    @property
    def events(self) -> np.ndarray:
        return self.survival["event"].to_numpy(dtype=int)

    @property
    def seconds_per_step(self) -> float:
        """Wall seconds per step of the whole ensemble (replicas retire as they escape, so
        late steps are cheaper: an average, not a constant)."""
        return self.seconds / max(self.steps, 1)

    def final_test_error(self) -> float | None:
        """Mean of 1 − final test accuracy over the replicas (a diverged one counts as 1);
        None for models that do not measure test accuracy."""
        if "final_test_accuracy" not in self.replicas:
            return None
        acc = self.survival["final_test_accuracy"].to_numpy(dtype=float)
        return float(np.mean(np.where(np.isfinite(acc), 1 - acc, 1.0))) if acc.size else None

    def final_loss(self) -> float | None:
        """Mean final loss at the budget (runs that hold escaped replicas); a diverged
        replica counts as +inf, so one divergence fails a loss constraint. None without."""
        if "final_loss" not in self.replicas:
            return None
        loss = self.survival["final_loss"].to_numpy(dtype=float)
        return float(np.mean(np.where(np.isfinite(loss), loss, np.inf))) if loss.size else None

    def summary(self) -> dict[str, Any]:
        d, e = self.durations, self.events
        if d.size == 0:
            raise EscapestatError("no replica gave survival data (all untrapped or unfit)")
        km = KaplanMeierMedian().fit(d, e)
        times, surv = kaplan_meier(d, e)
        return {"n": int(d.size), "events": int(e.sum()), "escaped_fraction": float(e.mean()),
                "median": km.median_, "median_ci": list(km.median_ci_),
                "rmst": restricted_mean(times, surv, self.budget),
                "exposure": float(d.sum()), "final_test_error": self.final_test_error(),
                "final_loss": self.final_loss(),
                "seconds": round(self.seconds, 3),
                "seconds_per_step": self.seconds_per_step}


def run_arm(study: Study, device: str = "auto", watch: Callable[..., None] | None = None,
            hold: bool = False) -> ArmRun:
    """Run ``study`` (one condition) in memory, on one chunk; nothing is written.

    ``hold`` trains escaped replicas on to the budget to measure their final loss."""
    dev = resolve_device(device)
    study = study.with_overrides(chunk_replicas=max(study.run.replicas, study.run.chunk_replicas))
    conds = conditions(study)
    last_t = [0]

    def seen(t, status, duration, active, last):
        last_t[0] = t
        if watch is not None:
            watch(t, status, duration, active, last)

    began = time.perf_counter()
    frames = [run_chunk_output(study, conds, chunk, dev, watch=seen, hold=hold).table
              for chunk in plan_chunks(study, conds)]
    return ArmRun(pd.concat(frames, ignore_index=True), time.perf_counter() - began,
                  last_t[0], study.run.max_steps)


def objective_value(kind: str, summary: dict[str, Any]) -> float:
    """The searched value of an arm (lower is better): see the module docstring."""
    if kind == "rmst":
        return math.log(summary["rmst"])
    return math.log(summary["exposure"] / max(summary["events"], 0.5))


def censored_rmst(t: int, status: np.ndarray, duration: np.ndarray,
                  active: np.ndarray) -> float:
    """RMST to horizon t of the replicas so far: undecided ones censored at t."""
    d = np.minimum(duration.astype(float), t)
    d[active] = t
    keep = np.isin(status, SURVIVAL_STATUSES)
    keep[active] = True
    e = (status == ESCAPED) & keep
    e[active] = False
    times, surv = kaplan_meier(d[keep], e[keep].astype(int))
    return restricted_mean(times, surv, t)


# ---------------------------------------------------------------- the objective
@dataclass
class Objective:
    """Optuna objective over a study file's ``[search]``; ``constant_only`` searches the
    same space with every searched schedule held constant."""

    raw: dict
    spec: SearchSpec
    source: str
    device: str = "auto"
    constant_only: bool = False
    worker: str = ""

    def checkpoints(self, budget: int, every: int) -> list[int]:
        """Report steps: ``spec.checkpoints`` even fractions of the budget, on the check grid."""
        k = self.spec.checkpoints
        return sorted({min(budget, every * math.ceil(budget * i / k / every))
                       for i in range(1, k + 1)})

    def __call__(self, trial: optuna.Trial) -> float:
        overrides = suggest(self.spec, trial, self.constant_only)
        study = build_study(self.raw, overrides, self.source)
        trial.set_user_attr("overrides", overrides)
        if self.worker:
            trial.set_user_attr("worker", self.worker)
        marks = self.checkpoints(study.run.max_steps, study.escape.check_every)
        limit = self.spec.max_final_test_error
        final: list = []

        def watch(t, status, duration, active, last):
            final[:] = [status, duration]
            if not marks or t < marks[0]:
                return
            while marks and marks[0] <= t:
                marks.pop(0)
            trial.report(math.log(censored_rmst(t, status, duration, active) / t), t)
            if trial.should_prune():
                if limit is not None and "test_accuracy" in last:
                    err = float(np.nanmean(1 - last["test_accuracy"]))
                    trial.set_user_attr("final_test_error", err)
                    trial.set_constraint(CONSTRAINT, err - limit)
                trial.set_user_attr("pruned_at", int(t))
                raise optuna.TrialPruned()

        arm = run_arm(study, self.device, watch, hold=self.spec.max_final_loss is not None)
        # A trial whose replicas were all decided before the last checkpoints still has a
        # value there (its survival curve is known to the budget): report it, so that the
        # pruner compares later trials with the fast ones too, not only with the slow.
        for t in marks:
            trial.report(math.log(censored_rmst(t, *final, np.array([], dtype=int)) / t), t)
        summary = arm.summary()
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        if limit is not None:
            err = summary["final_test_error"]
            trial.set_constraint(CONSTRAINT, (1.0 if err is None else err) - limit)
        if self.spec.max_final_loss is not None:
            loss = summary["final_loss"]
            trial.set_constraint("final_loss", min(loss, 1e300) - self.spec.max_final_loss)
        return objective_value(self.spec.objective, summary)


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Every constraint ≤ 0 (a trial without constraints is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped: spaces that change with a searched shape), GP, CMA-ES or
    random, seeded; TPE and GP read the trials' constraints while sampling, the others
    meet them only when the best trial is chosen."""
    startup = min(10, max(2, spec.trials // 4))
    if spec.sampler == "tpe":
        with warnings.catch_warnings():  # ``group`` is flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True,
                                              n_startup_trials=startup)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=startup)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def make_pruner(spec: SearchSpec, budget: int) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(3, spec.trials // 8),
                                           n_warmup_steps=budget // spec.checkpoints)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=budget // spec.checkpoints,
                                              max_resource=budget)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- running a search
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


@dataclass
class SearchOutcome:
    """A search's trials and its best feasible complete trial (None if there is none)."""

    name: str
    trials: list[optuna.trial.FrozenTrial]
    best: optuna.trial.FrozenTrial | None
    counts: dict[str, int] = field(default_factory=dict)

    def ranked(self) -> list[optuna.trial.FrozenTrial]:
        """Complete, feasible trials, best first."""
        ok = [t for t in self.trials if t.state == optuna.trial.TrialState.COMPLETE
              and feasible(t) and t.value is not None]
        return sorted(ok, key=lambda t: (t.value, t.number))


def outcome(study: optuna.Study) -> SearchOutcome:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    result = SearchOutcome(study.study_name, trials, None, counts)
    ranked = result.ranked()
    result.best = ranked[0] if ranked else None
    return result


def open_search(storage, name: str, spec: SearchSpec, budget: int) -> optuna.Study:
    """Create the study once (any worker), or load it: workers share it by name."""
    return optuna.create_study(storage=storage, study_name=name, direction="minimize",
                               sampler=make_sampler(spec), pruner=make_pruner(spec, budget),
                               load_if_exists=True)


def run_search(study: optuna.Study, objective: Objective, n_trials: int,
               callbacks: list[Callable] = ()) -> SearchOutcome:
    """Run trials until the study holds ``n_trials`` finished ones (shared by all workers).

    Worker errors of the escapestat kind (a bad override, a run with no usable replicas)
    fail that trial and the search goes on; anything else stops this worker.
    """
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    if done < n_trials:
        study.optimize(objective, n_trials=None, catch=(EscapestatError,),
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
                                  *callbacks], gc_after_trial=False)
    return outcome(study)


def trials_frame(*outcomes: SearchOutcome) -> pd.DataFrame:
    """The trials of one or more searches as one table (one row per trial)."""
    rows = []
    for out in outcomes:
        for t in out.trials:
            a = t.user_attrs
            row = {"search": out.name, "trial": t.number, "state": t.state.name.lower(),
                   "value": t.value, "feasible": feasible(t),
                   "median": a.get("median"), "median_lo": (a.get("median_ci") or [None])[0],
                   "median_hi": (a.get("median_ci") or [None, None])[1],
                   "events": a.get("events"), "n": a.get("n"), "rmst": a.get("rmst"),
                   "final_test_error": a.get("final_test_error"),
                   "pruned_at": a.get("pruned_at"), "seconds": a.get("seconds"),
                   "overrides": json.dumps(a.get("overrides", {}), sort_keys=True)}
            rows.append(row)
    return pd.DataFrame(rows)
