"""One chunk's training loop, top to bottom: evaluate the schedules at step t, step the
model, and every ``check_every`` steps let the escape detector decide; decided replicas
leave the active set, so compute follows the replicas still running. The loop's state is
saved at a check (``ChunkCheckpoint``) so a stopped chunk continues where it was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch

from escapestat.config._registry import model_class
from escapestat.config._study import Condition, Study
from escapestat.engine._chunk_table import _chunk_table, _milestone_columns
from escapestat.engine._chunks import Chunk
from escapestat.engine._detector import (
    CENSORED,
    DIVERGED,
    ESCAPED,
    UNTRAPPED,
    Decisions,
    EscapeDetector,
    EscapeRule,
)
from escapestat.engine._hyper import ReplicaSchedules
from escapestat.engine._storage import (
    ChunkCheckpoint,
    device_text,
)
from escapestat.models._threads import ThreadGovernor, cpu_threads
from escapestat.models.base import Hyper, ReplicaModel, torch_dtype
from escapestat.stats._stability import Q_END, Q_MID, Q_MID_STEP

if TYPE_CHECKING:
    from escapestat.config._schedules import Schedule


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


@dataclass(frozen=True)
class ClusterReady:
    """Progress event: a run's chunks go to a Dask cluster (``--cluster``); ``done`` of
    ``chunks`` were finished already (read back), ``dashboard`` is None without one."""

    address: str
    workers: int
    dashboard: str | None
    chunks: int
    done: int


@dataclass(frozen=True)
class ClusterSteps:
    """Progress event: on a cluster, ``steps`` of ``total_steps`` done across the workers
    (finished chunks count their whole budget), ``done`` of ``chunks`` written."""

    steps: int
    total_steps: int
    done: int
    chunks: int


@dataclass(frozen=True)
class ChunkDone:
    """Progress event: on a cluster, a chunk finished and was written (``done`` of
    ``chunks`` now; ``steps`` of ``total_steps`` as in ``ClusterSteps``)."""

    chunk: int
    done: int
    chunks: int
    steps: int
    total_steps: int


Progress = Callable[[ChunkStarted | ChunkProgress | ClusterReady | ClusterSteps | ChunkDone],
                    None]


class HyperSchedules:
    """The chunk's schedules, evaluated per step into per-replica ``Hyper`` tensors."""

    def __init__(self, conds: list[Condition], dtype: torch.dtype, device: torch.device):
        self.lr = ReplicaSchedules([c.lr for c in conds], dtype, device)
        self.beta = ReplicaSchedules([c.beta for c in conds], dtype, device)
        temps = [c.temperature for c in conds]
        # One noise per study: every condition has a T (Langevin) or none has (SGD).
        self.temperature = (None if temps[0] is None
                            else ReplicaSchedules(cast("list[Schedule]", temps), dtype, device))
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

    The model's class says how many CPU threads a chunk uses at most (a deep linear step
    too small to share out: one; below that, ``ThreadGovernor`` keeps the steps on the
    count that runs them fastest on a busy machine) and whether denormals are flushed to
    zero on the CPU (the grokking models: saturated softmax probabilities underflow to
    denormals, and CPU matmuls over them can run ~100× slower); that flag is process-wide
    (numpy too), so it
    is reset afterwards.
    """
    cls = model_class(study.model.kind)
    flush = cls.flush_denormals and device.type == "cpu"
    if flush:
        torch.set_flush_denormal(True)
    try:
        with cpu_threads(cls.cpu_threads(study, len(chunk.condition)), device):
            governor = ThreadGovernor(torch.get_num_threads() if device.type == "cpu" else 1)
            output = _run_chunk(study, conds, chunk, device, progress, watch, hold, checkpoint,
                                governor)
            output.device = device_text(device)
            return output
    finally:
        if flush:
            torch.set_flush_denormal(False)


@dataclass
class _LoopState:
    """Everything the loop carries from check to check; a checkpoint saves it as a dict.

    ``status``, ``duration`` and the other columns are per replica of the chunk;
    ``active`` holds the positions still training and ``open_`` which of them are
    undecided (with ``hold``, decided replicas train on to the budget).
    """

    model: ReplicaModel
    hyper: HyperSchedules
    detector: EscapeDetector
    marks: _Milestones | None
    switch: dict[str, np.ndarray]  # per replica, before any leave
    curves: dict[str, list[np.ndarray]]
    steps: list[int]
    status: np.ndarray
    duration: np.ndarray
    active: np.ndarray
    open_: np.ndarray
    finals: dict[str, np.ndarray]  # with ``hold``: final values (NaN if diverged)
    # The order parameter at the first check past half the budget and where each
    # replica was decided: whether a trap held to the budget was still moving.
    trend: dict[str, np.ndarray]
    late: np.ndarray  # with ``hold``: decided, then diverged while held
    t: int
    mid_seen: bool
    last: dict[str, np.ndarray]  # each curve's latest value per replica

    def as_dict(self) -> dict:
        """The checkpoint's state: these fields by name, in this order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def running(self, hold: bool, budget: int) -> bool:
        """Replicas still undecided, or (``hold``) decided ones training to the budget."""
        return bool(self.open_.any() or (hold and self.active.size and self.t < budget))

    def retire(self, done: np.ndarray, device: torch.device) -> None:
        """The replicas at positions ``done`` of ``active`` stop training."""
        keep = ~done
        if keep.all():
            return
        idx = torch.as_tensor(np.flatnonzero(keep), device=device)
        self.active, self.open_ = self.active[keep], self.open_[keep]
        for part in (self.model, self.detector, self.hyper, self.marks):
            if part is not None:
                part.keep(idx)

    def record(self) -> None:
        """The curves at this check; decided replicas carry their last value."""
        if not self.curves:
            return
        for name, values in self.model.curve_values().items():
            self.last[name][self.active] = values.cpu().numpy()
            self.curves[name].append(self.last[name].copy())
        self.steps.append(self.t)


def _run_chunk(study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
               progress: Progress | None = None, watch: Watch | None = None,
               hold: bool = False, checkpoint: ChunkCheckpoint | None = None,
               governor: ThreadGovernor | None = None) -> ChunkOutput:
    """Start the chunk (or continue its checkpoint), train and check until every replica
    is decided, then write its table; ``governor`` picks the CPU threads of the steps."""
    cs = [conds[i] for i in chunk.condition]
    n, budget = len(cs), study.run.max_steps
    saved = checkpoint.load(device) if checkpoint is not None else None
    loop = _start(study, cs, chunk, device) if saved is None else _LoopState(**saved)
    # No minibatch noise at all: full batch at a constant size (Langevin runs have noise).
    full_batch = loop.model.full_batch and all(
        c.batch_size is None or c.batch_size.is_constant for c in cs)
    with torch.no_grad():
        if saved is None:
            _leave_untrapped(loop, device)
        while loop.running(hold, budget):
            _train_to_next_check(loop, study.escape.check_every, budget,
                                 governor or ThreadGovernor(1))
            _check(loop, budget, hold, device)
            _report(loop, chunk, n, budget, progress, watch)
            _save_if_due(loop, checkpoint, hold, budget)
    return _output(study, cs, chunk, loop, full_batch, hold)


def _start(study: Study, cs: list[Condition], chunk: Chunk, device: torch.device) -> _LoopState:
    """A fresh chunk: its model built and trapped, every replica active and undecided."""
    run, esc = study.run, study.escape
    n, budget = len(cs), run.max_steps
    generator = torch.Generator(device=device).manual_seed(chunk.seed(run.seed))
    hyper = HyperSchedules(cs, torch_dtype(study), device)
    model = build_model(study, cs, generator, device, hyper.batch_size(0))
    detector = EscapeDetector(EscapeRule(esc.threshold, esc.fallback, esc.commit_steps),
                              budget, n, device)
    rules = model.milestone_rules
    marks = _Milestones(rules, esc.threshold, budget, n, device) if rules else None
    switch = dict(model.switch_values)
    curves: dict[str, list[np.ndarray]] = {name: [] for name in model.curve_names}
    return _LoopState(
        model=model, hyper=hyper, detector=detector, marks=marks, switch=switch,
        curves=curves, steps=[], status=np.full(n, CENSORED, dtype=object),
        duration=np.full(n, float(budget)), active=np.arange(n),
        open_=np.ones(n, dtype=bool), finals={},
        trend={name: np.full(n, np.nan) for name in (Q_MID, Q_MID_STEP, Q_END)},
        late=np.zeros(n, dtype=bool), t=0, mid_seen=False,
        last={name: np.full(n, np.nan) for name in curves})


def _leave_untrapped(loop: _LoopState, device: torch.device) -> None:
    """Step 0: replicas not in the trap are ``untrapped`` (duration 0) and leave at once."""
    model = loop.model
    untrapped = loop.detector.untrapped(model.order_parameter(), model.finite()).cpu().numpy()
    loop.record()
    loop.status[untrapped], loop.duration[untrapped] = UNTRAPPED, 0.0
    loop.retire(untrapped, device)


def _train_to_next_check(loop: _LoopState, every: int, budget: int,
                         governor: ThreadGovernor) -> None:
    """``every`` training steps; fewer where the budget comes first."""
    for _ in range(min(every, budget - loop.t) if loop.t < budget else every):
        governor.step(lambda: loop.model.step(loop.t, loop.hyper.at(loop.t)))
        loop.t += 1


def _check(loop: _LoopState, budget: int, hold: bool, device: torch.device) -> None:
    """A check: the milestones, the curves, the order parameter at mid-budget, and the
    escape detector's decisions."""
    q, finite = loop.model.order_parameter(), loop.model.finite()
    if loop.marks is not None:
        loop.marks.check(loop.t, q, loop.model.milestones(), finite, loop.active)
    loop.record()
    if loop.t >= budget / 2 and not loop.mid_seen:
        trend, active = loop.trend, loop.active
        trend[Q_MID][active], trend[Q_MID_STEP][active] = q.cpu().numpy(), loop.t
        loop.mid_seen = True
    decisions = loop.detector.check(loop.t, q, finite)
    _decide(loop, decisions, q, hold, device)


def _decide(loop: _LoopState, d: Decisions, q: torch.Tensor, hold: bool,
            device: torch.device) -> None:
    """Write down the replicas decided at this check and retire them (held replicas train
    on, unless they diverge)."""
    escaped, censored, diverged = torch.stack(
        [d.escaped, d.censored, d.diverged]).cpu().numpy()  # host sync, once per check
    # Held replicas were decided before: only a divergence still matters for them.
    open_ = loop.open_
    diverged_held = diverged & ~open_ if hold else np.zeros_like(diverged)
    escaped, censored, diverged = escaped & open_, censored & open_, diverged & open_
    decided = escaped | censored | diverged
    if not (decided.any() or diverged_held.any()):
        return
    times = d.time.cpu().numpy()
    loop.trend[Q_END][loop.active[decided]] = q.cpu().numpy()[decided]
    for now, label in ((escaped, ESCAPED), (censored, CENSORED), (diverged, DIVERGED)):
        loop.status[loop.active[now]], loop.duration[loop.active[now]] = label, times[now]
    if loop.marks is not None:
        loop.marks.settle(decided, loop.active)
    loop.late[loop.active[diverged_held]] = True
    loop.open_ &= ~decided
    loop.retire(diverged | diverged_held if hold else decided, device)  # held: the rest stay


def _report(loop: _LoopState, chunk: Chunk, n: int, budget: int, progress: Progress | None,
            watch: Watch | None) -> None:
    if progress is not None:
        step = min(loop.t, budget)
        progress(ChunkProgress(chunk.index, step, budget, int(loop.active.size), n))
    if watch is not None:  # ``active`` less the held (decided) replicas
        watch(loop.t, loop.status, loop.duration, loop.active[loop.open_], loop.last)


def _save_if_due(loop: _LoopState, checkpoint: ChunkCheckpoint | None, hold: bool,
                 budget: int) -> None:
    """Save the loop's state every so often, unless this check ended the chunk."""
    if checkpoint is not None and checkpoint.due() and loop.running(hold, budget):
        checkpoint.save(loop.as_dict())


def _output(study: Study, cs: list[Condition], chunk: Chunk, loop: _LoopState,
            full_batch: bool, hold: bool) -> ChunkOutput:
    """The chunk's table, one row per replica, and its curves."""
    if hold:
        for name, values in loop.model.final_values().items():
            col = loop.finals.setdefault(name, np.full(len(cs), np.nan))
            col[loop.active] = values.cpu().numpy()
    table = _chunk_table(study, cs, chunk, loop.status, loop.duration)
    table["full_batch"] = full_batch
    for name, col in {**loop.switch, **loop.finals, **loop.trend}.items():
        table[name] = col
    if loop.marks is not None:
        table = _milestone_columns(table, study, loop.marks, loop.last)
    if hold:  # a replica that diverged after its escape has no final value at the budget
        table["diverged_after_escape"] = loop.late
        table.loc[loop.late, [c for c in table if c.startswith("final_")]] = np.nan
    curves = None if not loop.curves else {
        "step": np.asarray(loop.steps), **{k: np.stack(v) for k, v in loop.curves.items()}}
    return ChunkOutput(table, curves)
