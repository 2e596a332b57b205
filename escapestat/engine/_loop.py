"""One chunk's training loop, top to bottom: evaluate the schedules at step t, step the
model, and every ``check_every`` steps let the escape detector decide; decided replicas
leave the active set, so compute follows the replicas still running. The loop's state is
saved at a check (``ChunkCheckpoint``) so a stopped chunk continues where it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from escapestat.config._registry import model_class
from escapestat.config._study import Condition, Study
from escapestat.engine._chunks import Chunk
from escapestat.engine._detector import (
    CENSORED,
    DIVERGED,
    ESCAPED,
    UNTRAPPED,
    EscapeDetector,
    EscapeRule,
)
from escapestat.engine._hyper import ReplicaSchedules
from escapestat.engine._storage import (
    ChunkCheckpoint,
    device_text,
)
from escapestat.models._threads import cpu_threads
from escapestat.models.base import Hyper, ReplicaModel, torch_dtype
from escapestat.stats._stability import Q_END, Q_MID, Q_MID_STEP
from escapestat.vocab import UNFIT


@dataclass(frozen=True)
class ChunkStarted:
    """Progress event: a chunk begins."""

    chunk: int
    chunks: int
    replicas: int
    max_steps: int


@dataclass(frozen=True)
class ChunkProgress:
    """Progress event: a check inside a chunk (``active`` replicas still running)."""

    chunk: int
    step: int
    max_steps: int
    active: int
    replicas: int


Progress = Callable[[ChunkStarted | ChunkProgress], None]


class HyperSchedules:
    """The chunk's schedules, evaluated per step into per-replica ``Hyper`` tensors."""

    def __init__(self, conds: list[Condition], dtype: torch.dtype, device: torch.device):
        self.lr = ReplicaSchedules([c.lr for c in conds], dtype, device)
        self.beta = ReplicaSchedules([c.beta for c in conds], dtype, device)
        temps = [c.temperature for c in conds]
        self.temperature = (None if temps[0] is None
                            else ReplicaSchedules(temps, dtype, device))
        self.batch = conds[0].batch_size  # one per chunk (plan_chunks)

    def batch_size(self, t: int) -> int | None:
        return None if self.batch is None else max(1, int(round(self.batch.value(t))))

    def at(self, t: int) -> Hyper:
        temperature = None if self.temperature is None else self.temperature.at(t)
        return Hyper(self.lr.at(t), self.beta.at(t), temperature, self.batch_size(t))

    def keep(self, idx: torch.Tensor) -> None:
        for s in (self.lr, self.beta, self.temperature):
            if s is not None:
                s.keep(idx)


def build_model(study: Study, conds: list[Condition], generator: torch.Generator,
                device: torch.device, batch_size: int | None) -> ReplicaModel:
    """The study's replica model, trapped, as its kind's registered class builds it."""
    return model_class(study.model.kind)(study, conds, generator, device, batch_size)


@dataclass
class ChunkOutput:
    """A finished chunk: one row per replica, and per-replica curves when the model has them."""

    table: pd.DataFrame
    curves: dict[str, np.ndarray] | None = None  # "step" [C]; each metric [C, replicas]
    device: str = ""  # what it ran on (CPU threads included)


class _Milestones:
    """Secondary crossings (a grokking model's fit) and the primary's first crossing.

    Each milestone has its own commitment rule; its time is the crossing step of its
    first committed crossing (or of a crossing still pending when the replica is
    decided). They never retire a replica: only the primary escape does.
    """

    def __init__(self, rules: dict[str, EscapeRule], threshold: float, budget: int, n: int,
                 device: torch.device):
        self.detectors = {k: EscapeDetector(r, budget, n, device) for k, r in rules.items()}
        self.times = {k: np.full(n, np.nan) for k in rules}
        self.threshold, self.first_cross = threshold, np.full(n, np.nan)

    def check(self, t: int, q: torch.Tensor, values: dict[str, torch.Tensor],
              finite: torch.Tensor, active: np.ndarray) -> None:
        crossed = (q >= self.threshold).cpu().numpy() & np.isnan(self.first_cross[active])
        self.first_cross[active[crossed]] = t
        for name, det in self.detectors.items():
            d = det.check(t, values[name], finite)
            new = d.escaped.cpu().numpy() & np.isnan(self.times[name][active])
            self.times[name][active[new]] = d.time.cpu().numpy()[new]

    def settle(self, done: np.ndarray, active: np.ndarray) -> None:
        """Replicas about to leave: a milestone crossing still pending counts at its step."""
        for name, det in self.detectors.items():
            pending = det.pending.cpu().numpy().astype(float)
            take = done & (pending >= 0) & np.isnan(self.times[name][active])
            self.times[name][active[take]] = pending[take]

    def keep(self, idx: torch.Tensor) -> None:
        for det in self.detectors.values():
            det.keep(idx)


def run_chunk(study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
              progress: Progress | None = None) -> pd.DataFrame:
    """Run one chunk until every replica is decided; one row per replica with its status."""
    return run_chunk_output(study, conds, chunk, device, progress).table


#: Called after every check with (t, status, duration, undecided, last curve values): the
#: statuses and durations so far (``undecided``: positions not yet decided), e.g. to prune.
Watch = Callable[[int, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]], None]


def run_chunk_output(study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
                     progress: Progress | None = None, watch: Watch | None = None,
                     hold: bool = False,
                     checkpoint: ChunkCheckpoint | None = None) -> ChunkOutput:
    """``run_chunk`` with the per-replica curves of models that record them.

    ``hold``: replicas that escape keep training to the budget (their escape time is
    recorded when it commits, as always), and the model's ``final_values()`` (e.g. the
    linear trap's ``final_loss``) and its curves' last values (``final_test_accuracy``)
    are measured at the budget; a replica that diverges while held keeps its escape, has
    NaN final values and ``diverged_after_escape`` set. A search uses it to hold
    schedules to an equal final loss or test error; it costs the full budget for every
    replica.

    ``checkpoint``: the loop's whole state is saved there every so often (at a check), and
    a state saved earlier for this chunk is continued from, byte-identical to a run that
    was never interrupted.

    The model's class says how many CPU threads a chunk uses (a deep linear step too
    small to share out: one) and whether denormals are flushed to zero on the CPU (the
    grokking models: saturated softmax probabilities underflow to denormals, and CPU
    matmuls over them can run ~100× slower); that flag is process-wide (numpy too), so it
    is reset afterwards.
    """
    cls = model_class(study.model.kind)
    flush = cls.flush_denormals and device.type == "cpu"
    if flush:
        torch.set_flush_denormal(True)
    try:
        with cpu_threads(cls.cpu_threads(study, len(chunk.condition)), device):
            output = _run_chunk(study, conds, chunk, device, progress, watch, hold, checkpoint)
            output.device = device_text(device)
            return output
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _run_chunk(study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
               progress: Progress | None = None, watch: Watch | None = None,
               hold: bool = False, checkpoint: ChunkCheckpoint | None = None) -> ChunkOutput:
    run, esc = study.run, study.escape
    dtype = torch_dtype(study)
    cs = [conds[i] for i in chunk.condition]
    n, budget, every = len(cs), run.max_steps, esc.check_every
    saved = checkpoint.load(device) if checkpoint is not None else None
    if saved is None:
        generator = torch.Generator(device=device).manual_seed(chunk.seed(run.seed))
        hyper = HyperSchedules(cs, dtype, device)
        model = build_model(study, cs, generator, device, hyper.batch_size(0))
        detector = EscapeDetector(EscapeRule(esc.threshold, esc.fallback, esc.commit_steps),
                                  budget, n, device)
        rules = model.milestone_rules
        marks = _Milestones(rules, esc.threshold, budget, n, device) if rules else None
        state = {
            "model": model, "hyper": hyper, "detector": detector, "marks": marks,
            "switch": dict(model.switch_values),  # per replica, before any leave
            "curves": {name: [] for name in model.curve_names},
            "steps": [], "status": np.full(n, CENSORED, dtype=object),
            "duration": np.full(n, float(budget)), "active": np.arange(n),
            "open_": np.ones(n, dtype=bool),  # undecided, per position in ``active``
            "finals": {},  # with ``hold``: final values (NaN if diverged)
            # The order parameter at the first check past half the budget and where each
            # replica was decided: whether a trap held to the budget was still moving.
            "trend": {name: np.full(n, np.nan) for name in (Q_MID, Q_MID_STEP, Q_END)},
            "late": np.zeros(n, dtype=bool),  # with ``hold``: decided, then diverged while held
            "t": 0, "mid_seen": False,
        }
        state["last"] = {name: np.full(n, np.nan) for name in state["curves"]}
    else:
        state = saved
    model, hyper, detector, marks = (state[k] for k in ("model", "hyper", "detector", "marks"))
    switch, curves, last, steps = (state[k] for k in ("switch", "curves", "last", "steps"))
    status, duration, finals, trend, late = (
        state[k] for k in ("status", "duration", "finals", "trend", "late"))
    active, open_, t, mid_seen = (state[k] for k in ("active", "open_", "t", "mid_seen"))
    # No minibatch noise at all: full batch at a constant size (Langevin runs have noise).
    full_batch = model.full_batch and all(
        c.batch_size is None or c.batch_size.is_constant for c in cs)

    def retire(done: np.ndarray) -> None:
        nonlocal active, open_
        keep = ~done
        if keep.all():
            return
        idx = torch.as_tensor(np.flatnonzero(keep), device=device)
        active, open_ = active[keep], open_[keep]
        for part in (model, detector, hyper, marks):
            if part is not None:
                part.keep(idx)

    def record(t: int) -> None:
        if not curves:
            return
        for name, values in model.curve_values().items():
            last[name][active] = values.cpu().numpy()
            curves[name].append(last[name].copy())  # decided replicas carry their last value
        steps.append(t)

    with torch.no_grad():
        if saved is None:
            untrapped = detector.untrapped(model.order_parameter(), model.finite()).cpu().numpy()
            record(0)
            status[untrapped], duration[untrapped] = UNTRAPPED, 0.0
            retire(untrapped)
        while open_.any() or (hold and active.size and t < budget):
            for _ in range(min(every, budget - t) if t < budget else every):
                model.step(t, hyper.at(t))
                t += 1
            q, finite = model.order_parameter(), model.finite()
            if marks is not None:
                marks.check(t, q, model.milestones(), finite, active)
            record(t)
            if t >= budget / 2 and not mid_seen:
                trend[Q_MID][active], trend[Q_MID_STEP][active] = q.cpu().numpy(), t
                mid_seen = True
            d = detector.check(t, q, finite)
            escaped, censored, diverged = torch.stack(
                [d.escaped, d.censored, d.diverged]).cpu().numpy()  # host sync, once per check
            # Held replicas were decided before: only a divergence still matters for them.
            diverged_held = diverged & ~open_ if hold else np.zeros_like(diverged)
            escaped, censored, diverged = escaped & open_, censored & open_, diverged & open_
            decided = escaped | censored | diverged
            if decided.any() or diverged_held.any():
                times = d.time.cpu().numpy()
                trend[Q_END][active[decided]] = q.cpu().numpy()[decided]
                for now, label in ((escaped, ESCAPED), (censored, CENSORED),
                                   (diverged, DIVERGED)):
                    status[active[now]], duration[active[now]] = label, times[now]
                if marks is not None:
                    marks.settle(decided, active)
                late[active[diverged_held]] = True
                open_ &= ~decided
                retire(diverged | diverged_held if hold else decided)  # held: the rest stay
            if progress is not None:
                progress(ChunkProgress(chunk.index, min(t, budget), budget, int(active.size), n))
            if watch is not None:  # ``active`` less the held (decided) replicas
                watch(t, status, duration, active[open_], last)
            if checkpoint is not None and checkpoint.due() and (
                    open_.any() or (hold and active.size and t < budget)):
                state.update(active=active, open_=open_, t=t, mid_seen=mid_seen)
                checkpoint.save(state)
    if hold:
        for name, values in model.final_values().items():
            col = finals.setdefault(name, np.full(n, np.nan))
            col[active] = values.cpu().numpy()
    table = _chunk_table(study, cs, chunk, status, duration)
    table["full_batch"] = full_batch
    for name, col in {**switch, **finals, **trend}.items():
        table[name] = col
    if marks is not None:
        table = _milestone_columns(table, study, marks, last)
    if hold:  # a replica that diverged after its escape has no final value at the budget
        table["diverged_after_escape"] = late
        table.loc[late, [c for c in table if c.startswith("final_")]] = np.nan
    out = None if not curves else {"step": np.asarray(steps),
                                   **{k: np.stack(v) for k, v in curves.items()}}
    return ChunkOutput(table, out)


def _milestone_columns(table: pd.DataFrame, study: Study, marks: _Milestones,
                       last: dict[str, np.ndarray]) -> pd.DataFrame:
    """Fit, first crossing, generalisation and delay times, each curve's final value
    (``final_test_accuracy``, ``final_test_error`` ...); ``duration`` per ``measure``.

    A replica that never fits is ``unfit`` under ``measure = "delay"`` (no delay exists);
    a delay of 0 (fit and generalisation seen at the same check) is recorded as half a
    check interval, since durations must be positive.
    """
    esc = study.escape
    fit = marks.times["fit"]
    generalize = np.where(table["event"] == 1, table["duration"], np.nan)
    table = table.assign(
        fit_time=fit, first_cross_time=marks.first_cross, generalize_time=generalize,
        delay=generalize - fit,
        **{f"final_{name}": values for name, values in last.items()},
        measure=esc.measure)
    if esc.measure == "delay":
        unfit = np.isnan(fit) & table["status"].isin([ESCAPED, CENSORED, DIVERGED]).to_numpy()
        delay = np.where(table["event"] == 1, generalize - fit, table["duration"] - fit)
        delay = np.where(delay <= 0, esc.check_every / 2, delay)
        table["duration"] = np.where(unfit, np.nan, delay)
        table.loc[unfit, "status"] = UNFIT
        table.loc[unfit, "event"] = 0
    return table


def _label(schedule) -> str:
    return "constant" if schedule is None or schedule.is_constant else schedule.describe()


def _chunk_table(study: Study, cs: list[Condition], chunk: Chunk, status: np.ndarray,
                 duration: np.ndarray) -> pd.DataFrame:
    """One row per replica: the survival columns, the conditions and their schedules."""
    gf = study.dynamics.grad_filter
    return pd.DataFrame({
        "duration": duration,
        "event": (status == ESCAPED).astype(int),
        "status": status.astype(str),
        "temperature": [c.reported_temperature for c in cs],
        "lr": [c.lr.value(0) for c in cs],
        "batch_size": [None if c.batch_size is None else int(round(c.batch_size.value(0)))
                       for c in cs],
        "weight_decay": [c.beta.value(0) for c in cs],
        "noise": study.dynamics.noise,
        "barrier_theory": [c.barrier for c in cs],
        "lr_schedule": [_label(c.lr) for c in cs],
        "weight_decay_schedule": [_label(c.beta) for c in cs],
        "temperature_schedule": [
            "constant" if c.temperature_is_constant
            else (_label(c.temperature) if c.temperature is not None else "lr / batch_size")
            for c in cs],
        "batch_size_schedule": [_label(c.batch_size) for c in cs],
        "grad_filter": "none" if gf is None else json.dumps(gf.as_dict(), sort_keys=True),
        **({"seed_over_saddle": [c.seed_over_saddle for c in cs]}
           if any(c.seed_over_saddle is not None for c in cs) else {}),
        "condition": list(chunk.condition),
        "replica": list(chunk.replica),
        "chunk": chunk.index,
        "seed": chunk.seed(study.run.seed),
    })


