"""Optuna search over a study's schedules, with a competing-risk objective and pruning.

Each trial trains the study's replicas (one condition: the trial's parameters) for the
study's step budget on the study's own seed — the same seed for every trial, so that
trials differ by their parameters, not their luck — and is scored by

    rmst:     log ∫₀^budget (1 − F(t)) dt    (F: Aalen–Johansen incidence of escape)
    log_tau:  log(exposure / max(escapes, ½))  (a diverged replica exposed to the budget)

A diverged replica is a failure here, never missing data: it can no longer escape, so it
counts as not escaped to the budget (the competing-risk reading), while a replica still
trapped at the budget is censored there. (Estimation — ``fit``, ``run`` — censors a
divergence where it happened instead: there the question is the rate of escape.) At
``checkpoints`` steps t the fraction of the time so far spent not yet escaped,
log((1/t) ∫₀^t (1 − F)), is reported so that a pruner can stop a hopeless trial. It never
rises with t (1 − F falls), so Optuna's median pruner, which compares a trial's best value
so far with the others' at that step, compares like with like; at the budget it is the
objective minus log(budget).
``max_final_test_error`` (grokking) or ``max_final_loss`` (the linear trap) is a
constraint (``Trial.set_constraint``), measured with every replica trained on to the
budget (``hold``): a setting that escapes fast but ends worse — by staying hot, or by
forgetting what it learned — does not win. Each trial keeps its overrides, outcome
counts, median and CI, RMST and final errors as user attributes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import optuna
import pandas as pd

from escapestat.config._study import Study
from escapestat.engine._detector import DIVERGED, ESCAPED
from escapestat.engine._trials import run_study
from escapestat.errors import EscapestatError
from escapestat.search._identity import check_identity
from escapestat.search._sampling import make_pruner, make_sampler, trial_seed
from escapestat.search._space import SearchSpec, build_study, suggest
from escapestat.search._storage import retried_from
from escapestat.stats._incidence import DIVERGE, ESCAPE, EscapeIncidence, incidence_median_ci
from escapestat.trackers import open_log
from escapestat.vocab import SURVIVAL

#: The constraint's name in Optuna (``Trial.set_constraint``): mean final test error − limit.
CONSTRAINT = "final_test_error"
CONSTANT_SUFFIX = "-constant"


def causes(status: np.ndarray) -> np.ndarray:
    """Competing-risk codes of replica statuses: 1 escaped, 2 diverged, 0 censored."""
    return np.where(status == ESCAPED, ESCAPE, np.where(status == DIVERGED, DIVERGE, 0))


def needs_hold(study: Study, spec: SearchSpec) -> bool:
    """Whether search trials and compare arms train every replica to the budget: always
    for the grokking models (their final errors are measured there), and for the linear
    trap under ``max_final_loss``."""
    return study.model.learns_task or spec.max_final_loss is not None


# ---------------------------------------------------------------- one arm, run and summarised
@dataclass(frozen=True)
class ArmSummary:
    """An arm's outcome: counts and fractions (divergence competing with escape), the
    incidence median with a bootstrap CI, the restricted mean time not yet escaped
    (``rmst``), the exposure, final errors and wall time; ``as_dict()`` is what a trial
    keeps as user attributes."""

    n: int
    events: int
    diverged: int
    escaped_fraction: float
    diverged_fraction: float
    censored_fraction: float
    median: float | None
    median_ci: list[float | None]
    rmst: float
    exposure: float
    final_test_error: float | None
    final_train_error: float | None
    final_loss: float | None
    seconds: float
    seconds_per_step: float

    def as_dict(self) -> dict[str, Any]:
        """The fields in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ArmRun:
    """One study run in memory: every replica's row, the wall time and the steps run."""

    replicas: pd.DataFrame
    seconds: float
    steps: int
    budget: int
    grid: float | None = None  # check_every: the durations' grid (None: exact times)

    @property
    def survival(self) -> pd.DataFrame:
        return self.replicas[self.replicas["status"].isin(SURVIVAL)]

    @property
    def durations(self) -> np.ndarray:
        return self.survival["duration"].to_numpy(dtype=float)

    @property
    def events(self) -> np.ndarray:
        return self.survival["event"].to_numpy(dtype=int)

    @property
    def causes(self) -> np.ndarray:
        """1 escaped, 2 diverged (a competing event), 0 censored."""
        return causes(self.survival["status"].to_numpy())

    @property
    def seconds_per_step(self) -> float:
        """Wall seconds per step of the whole ensemble (replicas retire as they escape, so
        late steps are cheaper: an average, not a constant)."""
        return self.seconds / max(self.steps, 1)

    def _final_error(self, column: str) -> float | None:
        """Mean of 1 − ``column`` over the replicas; a diverged one counts as 1."""
        if column not in self.replicas:
            return None
        acc = self.survival[column].to_numpy(dtype=float)
        return float(np.mean(np.where(np.isfinite(acc), 1 - acc, 1.0))) if acc.size else None

    def final_test_error(self) -> float | None:
        """Mean final test error — at the budget when the run held its replicas, else where
        each left; None for models that do not measure test accuracy."""
        return self._final_error("final_test_accuracy")

    def final_train_error(self) -> float | None:
        return self._final_error("final_train_accuracy")

    def final_loss(self) -> float | None:
        """Mean final loss at the budget (runs that hold escaped replicas); a diverged
        replica counts as +inf, so one divergence fails a loss constraint. None without."""
        if "final_loss" not in self.replicas:
            return None
        loss = self.survival["final_loss"].to_numpy(dtype=float)
        return float(np.mean(np.where(np.isfinite(loss), loss, np.inf))) if loss.size else None

    def at_risk_to_budget(self) -> tuple[np.ndarray, np.ndarray]:
        """Durations and escape events with each diverged replica at risk to the budget
        (it never escapes): the risk set of the incidence of escape."""
        c = self.causes
        return np.where(c == DIVERGE, float(self.budget), self.durations), (c == ESCAPE
                                                                            ).astype(int)

    def incidence(self) -> EscapeIncidence:
        """The Aalen–Johansen incidence of escape, divergence competing."""
        if self.durations.size == 0:
            raise EscapestatError("no replica gave survival data (all untrapped or unfit)")
        return EscapeIncidence().fit(self.durations, self.causes)

    def summary(self, n_bootstrap: int = 1000, seed: int = 0) -> ArmSummary:
        """The arm's outcome (``ArmSummary``); the median's CI from ``n_bootstrap`` draws."""
        inc = self.incidence()
        d, c = self.durations, self.causes
        frac = inc.fractions()
        return ArmSummary(
            n=int(d.size), events=int((c == ESCAPE).sum()), diverged=int((c == DIVERGE).sum()),
            escaped_fraction=frac["escaped"], diverged_fraction=frac["diverged"],
            censored_fraction=frac["censored"], median=inc.median_,
            median_ci=list(incidence_median_ci(d, c, n_bootstrap, seed=seed)),
            rmst=inc.restricted_mean(self.budget),
            exposure=float(self.at_risk_to_budget()[0].sum()),
            final_test_error=self.final_test_error(), final_train_error=self.final_train_error(),
            final_loss=self.final_loss(), seconds=round(self.seconds, 3),
            seconds_per_step=self.seconds_per_step)


def run_arm(study: Study, device: str = "auto", watch: Callable[..., None] | None = None,
            hold: bool = False) -> ArmRun:
    """Run ``study`` (one condition) in memory, on one chunk, through the engine's
    ``run_study``; nothing is written.

    ``hold`` trains escaped replicas on to the budget to measure their final values there."""
    study = study.with_overrides(chunk_replicas=max(study.run.replicas, study.run.chunk_replicas),
                                 hold=hold)
    last_t = [0]

    def seen(t, status, duration, active, last):
        last_t[0] = t
        if watch is not None:
            watch(t, status, duration, active, last)

    began = time.perf_counter()
    result = run_study(study, None, device, watch=seen)
    return ArmRun(result.replicas, time.perf_counter() - began,
                  last_t[0], study.run.max_steps, float(study.escape.check_every))


def objective_value(kind: str, summary: ArmSummary) -> float:
    """The searched value of an arm (lower is better): see the module docstring."""
    if kind == "rmst":
        return math.log(summary.rmst)
    return math.log(summary.exposure / max(summary.events, 0.5))


def censored_rmst(t: int, status: np.ndarray, duration: np.ndarray,
                  active: np.ndarray) -> float:
    """∫₀^t (1 − F) of the replicas so far: undecided ones censored at t, diverged ones
    never escaping."""
    d = np.minimum(duration.astype(float), t)
    d[active] = t
    keep = np.isin(status, SURVIVAL)
    keep[active] = True
    c = causes(status)
    c[active] = 0
    return EscapeIncidence().fit(d[keep], c[keep]).restricted_mean(t)


# ---------------------------------------------------------------- the objective
@dataclass
class Objective:
    """Optuna objective over a study file's ``[search]``; ``constant_only`` searches the
    same space with every searched schedule held constant. With ``log`` (``open_log``'s
    text) each trial is a tracker run ``search-trial-N`` (``constant-trial-N``): the values
    reported to the pruner as ``log_rmst_ratio``, then its parameters and ``objective``."""

    raw: dict
    spec: SearchSpec
    source: str
    device: str = "auto"
    constant_only: bool = False
    worker: str = ""
    log: str | None = None

    def checkpoints(self, budget: int, every: int) -> list[int]:
        """Report steps: ``spec.checkpoints`` even fractions of the budget, on the check grid."""
        k = self.spec.checkpoints
        return sorted({min(budget, every * math.ceil(budget * i / k / every))
                       for i in range(1, k + 1)})

    def __call__(self, trial: optuna.Trial) -> float:
        """The trial's score; a trial that fails says why (``fail_reason``), and one cut
        short by Ctrl-C (marked FAIL by Optuna) is flagged ``interrupted``."""
        try:
            return self._score(trial)
        except EscapestatError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    def _score(self, trial: optuna.Trial) -> float:
        overrides = suggest(self.spec, trial, self.constant_only)
        study = build_study(self.raw, overrides, self.source)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("sampler_seed", trial_seed(self.spec.seed, trial.number))
        if self.worker:
            trial.set_user_attr("worker", self.worker)
        marks = self.checkpoints(study.run.max_steps, study.escape.check_every)
        limit = self.spec.max_final_test_error
        final: list = []
        tracker = None if self.log is None else open_log(self.log)
        run = f"{'constant' if self.constant_only else 'search'}-trial-{trial.number}"

        def report(value: float, t: int) -> None:
            trial.report(value, t)
            if tracker is not None:
                tracker.scalars(run, t, {"log_rmst_ratio": value})

        def watch(t, status, duration, active, last):
            final[:] = [status, duration]
            if not marks or t < marks[0]:
                return
            while marks and marks[0] <= t:
                marks.pop(0)
            report(math.log(censored_rmst(t, status, duration, active) / t), t)
            if trial.should_prune():
                if limit is not None and "test_accuracy" in last:
                    err = float(np.nanmean(1 - last["test_accuracy"]))
                    trial.set_user_attr("final_test_error", err)
                    _constrain(trial, CONSTRAINT, err - limit)
                trial.set_user_attr("pruned_at", int(t))
                raise optuna.TrialPruned()

        try:
            arm = run_arm(study, self.device, watch, hold=needs_hold(study, self.spec))
            # A trial whose replicas were all decided before the last checkpoints still has
            # a value there (its survival curve is known to the budget): report it, so that
            # the pruner compares later trials with the fast ones too, not only the slow.
            for t in marks:
                rmst = censored_rmst(t, final[0], final[1], np.array([], dtype=int))
                report(math.log(rmst / t), t)
            summary = arm.summary()
            for key, value in summary.as_dict().items():
                trial.set_user_attr(key, value)
            for name, value in constraint_values(self.spec, summary).items():
                _constrain(trial, name, value)
            value = objective_value(self.spec.objective, summary)
            if tracker is not None:
                tracker.hparams(run, dict(trial.params))
                tracker.scalars(run, study.run.max_steps, {"objective": value})
            return value
        finally:
            if tracker is not None:
                tracker.close()


def constraint_values(spec: SearchSpec, summary: ArmSummary) -> dict[str, float]:
    """The search's constraints on an arm's summary, each ≤ 0 where met: mean final test
    error − limit (an arm that measured none counts as error 1), final loss − limit
    (capped at 1e300: a diverged replica makes the loss infinite)."""
    out = {}
    if spec.max_final_test_error is not None:
        err = summary.final_test_error
        out[CONSTRAINT] = (1.0 if err is None else err) - spec.max_final_test_error
    if spec.max_final_loss is not None:
        loss = summary.final_loss
        out["final_loss"] = min(1e300 if loss is None else loss, 1e300) - spec.max_final_loss
    return out


def _constrain(trial: optuna.Trial, name: str, value: float) -> None:
    """``Trial.set_constraint``, and the same as user attributes ``constraints`` and
    ``feasible``: optuna-dashboard (0.21) reads constraints where optuna 4 kept them, not
    where optuna 5 writes them, so without these it shows every trial's as empty."""
    trial.set_constraint(name, value)
    shown = {**trial.user_attrs.get("constraints", {}), name: value}
    trial.set_user_attr("constraints", shown)
    trial.set_user_attr("feasible", all(v <= 0 for v in shown.values()))


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Every constraint ≤ 0 (a trial without constraints is feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


# ---------------------------------------------------------------- running a search
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


def spent(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that use up the budget: complete, pruned, and failed ones that failed on
    their own (a bad override, no usable replicas). A trial whose worker died is failed
    and re-queued with the same parameters: the failed copy does not count, its retry
    does. A trial interrupted by Ctrl-C does not count either (the search resumes)."""
    retried = {retried_from(t) for t in trials} - {None}
    fail = optuna.trial.TrialState.FAIL
    return sum(t.state in FINISHED and not (t.state == fail and (
        t.number in retried or t.user_attrs.get("interrupted"))) for t in trials)


@dataclass(frozen=True)
class SearchOutcome:
    """A search's trials and its best feasible complete trial (None if there is none)."""

    name: str
    trials: list[optuna.trial.FrozenTrial]
    best: optuna.trial.FrozenTrial | None
    counts: dict[str, int] = field(default_factory=dict)

    def ranked(self) -> list[optuna.trial.FrozenTrial]:
        """Complete, feasible trials, best first."""
        return _ranked(self.trials)


def _ranked(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
          and feasible(t) and t.value is not None]
    return sorted(ok, key=lambda t: (t.value, t.number))


def outcome(study: optuna.Study) -> SearchOutcome:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    ranked = _ranked(trials)
    return SearchOutcome(study.study_name, trials, ranked[0] if ranked else None, counts)


#: How close to an end of its range a best value must be for ``edge_notes`` to speak.
EDGE = 0.05


def edge_notes(spec: SearchSpec, out: SearchOutcome | None) -> list[str]:
    """A note per searched range whose best value lies in the outer ``EDGE`` of it (on a
    log scale for a log range): the optimum may lie beyond, so the range should widen."""
    if out is None or out.best is None:
        return []
    best = out.best
    notes = []
    for p in spec.space:
        v = best.params.get(p.path)
        if p.choices is not None or v is None:
            continue
        assert p.low is not None and p.high is not None  # a range: the parser sets both
        scale = math.log if p.log else float
        pos = (scale(v) - scale(p.low)) / (scale(p.high) - scale(p.low))
        if EDGE < pos < 1 - EDGE:
            continue
        side, bound = ("top", p.high) if pos >= 1 - EDGE else ("bottom", p.low)
        shown = v if isinstance(v, int) else f"{v:.3g}"
        notes.append(f"{out.name}: the best trial (#{best.number}) has {p.path} = {shown}, "
                     f"in the {side} {EDGE:.0%} of its range [{p.low:g}, {p.high:g}]"
                     f"{' (log scale)' if p.log else ''}: the best may lie beyond "
                     f"{bound:g}; widen the range")
    return notes


def open_search(storage, name: str, spec: SearchSpec, budget: int,
                identity: dict[str, Any] | None = None, where: str = "") -> optuna.Study:
    """Create the study once (any worker), or load it: workers share it by name. With
    ``identity``, a study made from a different study file is refused (``check_identity``)."""
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                sampler=make_sampler(spec), pruner=make_pruner(spec, budget),
                                load_if_exists=True)
    if identity is not None:
        check_identity(study, identity, where)
    return study


def run_search(study: optuna.Study, objective: Objective, n_trials: int,
               callbacks: Sequence[Callable] = ()) -> SearchOutcome:
    """Run trials until the study has spent ``n_trials`` (shared by all workers; see
    ``spent``).

    Worker errors of the escapestat kind (a bad override, a run with no usable replicas)
    fail that trial and the search goes on; anything else stops this worker.
    """

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if spent(study.get_trials(deepcopy=False)) >= n_trials:
            study.stop()

    if spent(study.get_trials(deepcopy=False)) < n_trials:
        study.optimize(objective, n_trials=None, catch=(EscapestatError,),
                       callbacks=[enough, *callbacks], gc_after_trial=False)
    return outcome(study)


def trials_frame(*outcomes: SearchOutcome) -> pd.DataFrame:
    """The trials of one or more searches as one table (one row per trial)."""
    rows = []
    for out in outcomes:
        for t in out.trials:
            a = t.user_attrs
            ci = a.get("median_ci") or [None, None]
            rows.append({"search": out.name, "trial": t.number,
                         "state": t.state.name.lower(), "value": t.value,
                         "feasible": feasible(t), "median": a.get("median"),
                         "median_lo": ci[0], "median_hi": ci[1],
                         "events": a.get("events"), "diverged": a.get("diverged"),
                         "n": a.get("n"), "rmst": a.get("rmst"),
                         "final_test_error": a.get("final_test_error"),
                         "final_train_error": a.get("final_train_error"),
                         "final_loss": a.get("final_loss"),
                         "pruned_at": a.get("pruned_at"), "seconds": a.get("seconds"),
                         "worker": a.get("worker"), "sampler_seed": a.get("sampler_seed"),
                         "overrides": json.dumps(a.get("overrides", {}), sort_keys=True)})
    return pd.DataFrame(rows)
