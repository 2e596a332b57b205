"""The trial engine: trap replicas, train them with noise, detect escape, censor, resume.

A study's conditions × replicas are laid out replica-major and cut into *chunks* of at
most ``chunk_replicas`` replicas; each chunk is one batched replica model on one device
with its own seed, so a chunk's result is fixed by (study, chunk index) and a killed run
resumes chunk by chunk. Within a chunk the loop is flat: evaluate the schedules at step
t, step the model, and every ``check_every`` steps let the escape detector decide;
decided replicas leave the active set, so compute follows the replicas still running.
The model (``linear_model``), the detector (``detector``) and the run directory
(``storage``) live in their own modules.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from escapestat.config._registry import model_class
from escapestat.config._study import Condition, Study, conditions
from escapestat.engine._detector import (
    CENSORED,
    DIVERGED,
    ESCAPED,
    UNTRAPPED,
    EscapeDetector,
    EscapeRule,
)
from escapestat.engine._hyper import ReplicaSchedules
from escapestat.engine._memory import check_memory
from escapestat.engine._storage import (
    CURVES,
    ESCAPES,
    REPLICAS,
    ChunkCheckpoint,
    RunStore,
    device_text,
    versions,
)
from escapestat.errors import EscapestatError
from escapestat.models import _native as native
from escapestat.models._threads import cpu_threads
from escapestat.models.base import Hyper, ReplicaModel
from escapestat.stats._curves import curve_bands
from escapestat.stats._stability import Q_END, Q_MID, Q_MID_STEP
from escapestat.vocab import CHECKPOINT_EVERY, UNFIT

__all__ = ["CENSORED", "DIVERGED", "ESCAPED", "ESCAPES", "REPLICAS", "UNTRAPPED", "Chunk",
           "ChunkProgress", "ChunkStarted", "RunResult", "plan_chunks", "resolve_device",
           "run_chunk", "run_study"]

#: Statuses that enter the survival table (diverged: a competing risk, censored there).
SURVIVAL_STATUSES = (ESCAPED, CENSORED, DIVERGED)


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


def _batch_key(cond: Condition) -> tuple:
    """Chunks share one batch-size schedule; constants sort by size (keeps chunk seeds)."""
    b = cond.batch_size
    if b is None:
        return (0, 0.0, "")
    return (0 if b.is_constant else 1, b.value(0) if b.is_constant else 0.0, b.describe())


@dataclass(frozen=True)
class Chunk:
    """A block of replicas run as one batched model: which condition and replica each is."""

    index: int
    condition: tuple[int, ...]
    replica: tuple[int, ...]

    def seed(self, study_seed: int) -> int:
        """Independent per-chunk seed derived from the study seed (SeedSequence spawning)."""
        return int(np.random.SeedSequence([study_seed, self.index]).generate_state(1)[0])


def plan_chunks(study: Study, conds: list[Condition]) -> list[Chunk]:
    """Replica-major layout so every chunk spans the ladder; one batch-size schedule per chunk.

    A study whose plan or largest chunk cannot fit in memory is refused first (``memory``).
    """
    check_memory(study, len(conds))
    chunks: list[Chunk] = []
    for key in sorted({_batch_key(c) for c in conds}):
        ids = [i for i, c in enumerate(conds) if _batch_key(c) == key]
        pairs = [(c, r) for r in range(study.run.replicas) for c in ids]
        step = study.run.chunk_replicas
        for start in range(0, len(pairs), step):
            block = pairs[start : start + step]
            chunks.append(Chunk(len(chunks), *map(tuple, zip(*block, strict=True))))
    return chunks


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EscapestatError("--device cuda: no CUDA device is available here")
    if device not in ("cpu", "cuda"):
        raise EscapestatError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


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
    dtype = torch.float64 if run.dtype == "float64" else torch.float32
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
            code = (d.escaped.to(torch.int8) + 2 * d.censored.to(torch.int8)
                    + 3 * d.diverged.to(torch.int8)).cpu().numpy()  # host sync, once per check
            if hold:  # held replicas were decided before: only a divergence still matters
                code = np.where(open_, code, np.where(code == 3, 4, 0))
            if code.any():
                times = d.time.cpu().numpy()
                first = (code > 0) & (code < 4)
                trend[Q_END][active[first]] = q.cpu().numpy()[first]
                for value, label in ((1, ESCAPED), (2, CENSORED), (3, DIVERGED)):
                    m = code == value
                    status[active[m]], duration[active[m]] = label, times[m]
                if marks is not None:
                    marks.settle((code > 0) & (code < 4), active)
                late[active[code == 4]] = True
                open_ &= code == 0
                gone = code >= 3 if hold else code > 0  # held: only the diverged leave
                retire(gone)
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


@dataclass
class RunResult:
    out_dir: Path
    escapes: pd.DataFrame  # the survival table: escaped, censored and diverged replicas
    replicas: pd.DataFrame  # every replica, with its status (untrapped included)
    meta: dict
    conditions: list[Condition]
    notes: list[str] = field(default_factory=list)
    curves: pd.DataFrame | None = None  # per condition: median and 10–90% band per check
    resumed: str | None = None  # with ``resume``: what was read back and continued

    @property
    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.replicas["status"].value_counts().items()}

    def require_usable(self) -> None:
        """A run in which no replica gave survival data is an error (its tables are kept)."""
        counts = self.counts
        if sum(counts.get(s, 0) for s in (ESCAPED, CENSORED)) == 0:
            raise EscapestatError(
                f"no usable replicas: {counts.get(DIVERGED, 0)} diverged (weights non-finite "
                f"or beyond divergence_limit), {counts.get(UNTRAPPED, 0)} untrapped; lower lr "
                f"or T, or check the trap — tables kept in {self.out_dir}")


def _chunk_notes(infos: dict[int, dict]) -> list[str]:
    """Say so when a resumed run's chunks ran on different devices, dtypes or versions."""
    notes = []
    for key in ("device", "dtype", "versions"):
        seen: dict[str, list[int]] = {}
        for index, info in sorted(infos.items()):
            seen.setdefault(str(info.get(key, "unknown")), []).append(index)
        if len(seen) > 1:
            parts = "; ".join(f"chunks {_ranges(ids)} on {value}" for value, ids in seen.items())
            notes.append(f"chunks ran with different {key}: {parts}")
    return notes


def _route_notes(study: Study, dev: torch.device) -> list[str]:
    """Say so when the grokking models ran on the torch route because the C kernels could
    not be had: it is correct, and about 4× slower on a CPU."""
    if not model_class(study.model.kind).native_kernels or dev.type != "cpu" or native.loaded():
        return []
    why = native.why_not() if native.kernels() is None else None
    return [f"the C kernels are not in use ({why}); the torch route ran, about 4× slower "
            f"on a CPU"] if why else []


def _ranges(ids: list[int]) -> str:
    out, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None], strict=True):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}–{a}")
            start = b
    return ", ".join(out)


def _tables(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    replicas = pd.concat(frames, ignore_index=True).sort_values(["condition", "replica"])
    replicas = replicas.reset_index(drop=True)
    escapes = replicas[replicas["status"].isin(SURVIVAL_STATUSES)].reset_index(drop=True)
    return replicas, escapes


def run_study(
    study: Study,
    out_dir: str | os.PathLike,
    device: str = "auto",
    resume: bool = False,
    study_text: str | None = None,
    progress: Progress | None = None,
    checkpoint_every: float | None = CHECKPOINT_EVERY,
) -> RunResult:
    """Run (or resume) a study into ``out_dir``; finished chunks are written atomically.

    A directory holding the complete run of the same study is read back, writing nothing.
    Every ``checkpoint_every`` seconds (None: never) an unfinished chunk saves its state,
    and ``resume`` continues it from there.
    """
    dev = resolve_device(device)
    conds = conditions(study)
    chunks = plan_chunks(study, conds)
    store = RunStore(out_dir)
    if store.open(study.config_hash(), resume):  # complete: read back, writing nothing
        return _read_back(store, chunks, conds)
    with store.locked():
        return _run_locked(study, store, conds, chunks, dev, resume, study_text, progress,
                           checkpoint_every)


def _read_back(store: RunStore, chunks: list[Chunk], conds: list[Condition]) -> RunResult:
    frames = [store.finished_chunk(c.index) for c in chunks]
    if any(f is None for f in frames):
        raise EscapestatError(f"{store.out} is marked complete but chunks are missing")
    replicas, escapes = _tables(frames)
    return RunResult(store.out, escapes, replicas, store.meta, conds,
                     list(store.meta.get("notes", [])), _read_curves(store))


def _run_locked(study: Study, store: RunStore, conds: list[Condition], chunks: list[Chunk],
                dev: torch.device, resume: bool, study_text: str | None,
                progress: Progress | None, checkpoint_every: float | None) -> RunResult:
    """``run_study`` while this process holds the run directory (checked again under the
    lock: another process may have finished it meanwhile)."""
    if store.open(study.config_hash(), resume):
        return _read_back(store, chunks, conds)
    store.start({
        "study": study.name,
        "config_hash": study.config_hash(),
        "seed": study.run.seed,
        "chunk_seeds": [c.seed(study.run.seed) for c in chunks],
        "versions": versions(),
        "device": device_text(dev),
        "dtype": study.run.dtype,
        "units": "steps",
        "check_every": study.escape.check_every,
        "max_steps": study.run.max_steps,
        "threshold": study.escape.threshold,
        "temperature": "exact Langevin T" if study.dynamics.noise == "langevin"
        else "T = lr / batch_size (SGD)",
        "conditions": [c.as_dict() for c in conds],
        "chunks_total": len(chunks),
        "chunks_done": sum(store.chunk_path(c.index).exists() for c in chunks),
    }, study_text)
    frames, read_back, continued = [], 0, []
    for chunk in chunks:
        frame = store.finished_chunk(chunk.index)
        read_back += frame is not None
        if frame is None:
            if progress is not None:
                progress(ChunkStarted(chunk.index, len(chunks), len(chunk.condition),
                                      study.run.max_steps))
            began = time.perf_counter()
            checkpoint = None if checkpoint_every is None else ChunkCheckpoint(
                store.partial_path(chunk.index), checkpoint_every, {
                    "config_hash": study.config_hash(), "chunk": chunk.index,
                    "seed": chunk.seed(study.run.seed), "versions": versions(),
                    "device": str(dev), "dtype": study.run.dtype})
            output = run_chunk_output(study, conds, chunk, dev, progress,
                                      hold=study.run.hold, checkpoint=checkpoint)
            info = {"device": output.device, "dtype": study.run.dtype,
                    "versions": versions(), "seconds": round(time.perf_counter() - began, 3)}
            if checkpoint is not None and checkpoint.resumed_from is not None:
                info["resumed_from_step"] = checkpoint.resumed_from
                continued.append(f"chunk {chunk.index + 1} from step "
                                 f"{checkpoint.resumed_from:,}")
            frame = store.write_chunk(chunk.index, output.table, info, output.curves)
            if checkpoint is not None:
                checkpoint.discard()
        frames.append(frame)
    notes = _chunk_notes({c.index: store.chunk_info(c.index) for c in chunks})
    notes += _route_notes(study, dev)
    replicas, escapes = _tables(frames)
    curves = _bands(store, chunks, frames)
    store.complete(replicas, escapes, notes, curves)
    resumed = None
    if resume:
        resumed = (f"read back {read_back} of {len(chunks)} finished chunks"
                   + (f"; continued {', '.join(continued)}" if continued else ""))
    return RunResult(store.out, escapes, replicas, store.meta, conds, notes, curves, resumed)


def _bands(store: RunStore, chunks: list[Chunk], frames: list[pd.DataFrame]):
    """Per-condition curve bands from the chunks' per-replica curves (None without curves)."""
    pairs = [(f, store.chunk_curves(c.index)) for c, f in zip(chunks, frames, strict=True)]
    pairs = [(f, c) for f, c in pairs if c is not None]
    return curve_bands(pairs) if pairs else None


def _read_curves(store: RunStore) -> pd.DataFrame | None:
    path = store.out / CURVES
    return pd.read_csv(path) if path.exists() else None
