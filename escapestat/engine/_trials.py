"""The trial engine: trap replicas, train them with noise, detect escape, censor, resume.

``run_study`` plans a study's chunks (``_chunks``), runs each unfinished one through the
loop (``_loop``) into its run directory (``_storage``) and writes the tables; a killed run
resumes chunk by chunk, and inside a chunk from its last saved state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from escapestat.config._registry import model_class
from escapestat.config._study import Condition, Study, conditions
from escapestat.engine._chunks import Chunk, plan_chunks, resolve_device
from escapestat.engine._cluster import ClusterSpec, as_cluster, cluster_device, run_on_cluster
from escapestat.engine._detector import (
    CENSORED,
    DIVERGED,
    ESCAPED,
    UNTRAPPED,
)
from escapestat.engine._loop import (
    ChunkOutput,
    ChunkProgress,
    ChunkStarted,
    HyperSchedules,
    Progress,
    Watch,
    build_model,
    run_chunk,
    run_chunk_output,
)
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
from escapestat.stats._curves import curve_bands
from escapestat.vocab import CHECKPOINT_EVERY, SURVIVAL

__all__ = ["CENSORED", "DIVERGED", "ESCAPED", "ESCAPES", "REPLICAS", "UNTRAPPED", "Chunk",
           "ChunkOutput", "ChunkProgress", "ChunkStarted", "HyperSchedules", "RunResult",
           "Watch", "build_model", "plan_chunks", "resolve_device", "run_chunk",
           "run_chunk_output", "run_study"]

#: Statuses that enter the survival table (diverged: a competing risk, censored there).


@dataclass(frozen=True)
class RunResult:
    out_dir: Path | None  # None: run in memory
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
    out: list[str] = []
    start: int | None = ids[0]
    for a, b in zip(ids, ids[1:] + [None], strict=True):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}–{a}")
            start = b
    return ", ".join(out)


def _tables(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    replicas = pd.concat(frames, ignore_index=True).sort_values(["condition", "replica"])
    replicas = replicas.reset_index(drop=True)
    escapes = replicas[replicas["status"].isin(SURVIVAL)].reset_index(drop=True)
    return replicas, escapes


def run_study(
    study: Study,
    out_dir: str | os.PathLike | None,
    device: str = "auto",
    resume: bool = False,
    study_text: str | None = None,
    progress: Progress | None = None,
    checkpoint_every: float | None = CHECKPOINT_EVERY,
    watch: Watch | None = None,
    cluster: ClusterSpec | str | None = None,
) -> RunResult:
    """Run (or resume) a study into ``out_dir``; finished chunks are written atomically.

    A directory holding the complete run of the same study is read back, writing nothing.
    Every ``checkpoint_every`` seconds (None: never) an unfinished chunk saves its state,
    and ``resume`` continues it from there. With ``out_dir`` None the run stays in memory:
    nothing is written or resumed, and ``watch`` sees the replicas at every check (the
    search's trials and compare's arms run this way).

    ``cluster`` (a ``ClusterSpec``, or its text: ``local``, ``local:N``,
    ``tcp://HOST:PORT``): the unfinished chunks run as tasks on a Dask cluster
    (``_cluster``) and are written here as they finish; the tables are byte-identical to a
    run in this process, and either kind of run resumes the other. ``device`` "cuda" is
    then the workers' (this machine needs none); "auto" is decided here.
    """
    spec = as_cluster(cluster)
    dev = resolve_device(device) if spec is None else cluster_device(device)
    conds = conditions(study)
    chunks = plan_chunks(study, conds)
    if out_dir is None:
        if spec is not None:
            raise EscapestatError("a run kept in memory (no run directory) cannot use a "
                                  "cluster")
        frames = [run_chunk_output(study, conds, chunk, dev, progress, watch=watch,
                                   hold=study.run.hold).table for chunk in chunks]
        replicas, escapes = _tables(frames)
        return RunResult(None, escapes, replicas, {}, conds, _route_notes(study, dev))
    store = RunStore(out_dir)
    if store.open(study.config_hash(), resume):  # complete: read back, writing nothing
        return _read_back(store, chunks, conds)
    with store.locked():
        return _run_locked(study, store, conds, chunks, dev, resume, study_text, progress,
                           checkpoint_every, spec)


def _read_back(store: RunStore, chunks: list[Chunk], conds: list[Condition]) -> RunResult:
    frames = [store.finished_chunk(c.index) for c in chunks]
    if any(f is None for f in frames):
        raise EscapestatError(f"{store.out} is marked complete but chunks are missing")
    replicas, escapes = _tables(frames)
    return RunResult(store.out, escapes, replicas, store.meta, conds,
                     list(store.meta.get("notes", [])), _read_curves(store))


def _run_locked(study: Study, store: RunStore, conds: list[Condition], chunks: list[Chunk],
                dev: torch.device, resume: bool, study_text: str | None,
                progress: Progress | None, checkpoint_every: float | None,
                cluster: ClusterSpec | None = None) -> RunResult:
    """``run_study`` while this process holds the run directory (checked again under the
    lock: another process may have finished it meanwhile). The chunks not yet finished run
    here, one after the other, or as tasks on a Dask cluster; either way each is written
    through ``_Writer`` as it finishes."""
    if store.open(study.config_hash(), resume):
        return _read_back(store, chunks, conds)
    writer = _Writer(study, store, chunks, dev)
    pending = writer.start(conds, study_text)
    if cluster is not None:
        run_on_cluster(cluster, study, conds, chunks, pending, dev, writer.write, progress,
                       store.out)
    else:
        _run_here(study, store, conds, chunks, pending, dev, writer, progress,
                  checkpoint_every)
    return writer.complete(resume)


def _run_here(study: Study, store: RunStore, conds: list[Condition], chunks: list[Chunk],
              pending: list[Chunk], dev: torch.device, writer: _Writer,
              progress: Progress | None, checkpoint_every: float | None) -> None:
    """The ``pending`` chunks in this process, one after the other, each saving its state
    every ``checkpoint_every`` seconds and continuing a state saved before."""
    for chunk in pending:
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
        writer.write(chunk, output, time.perf_counter() - began, versions(),
                     None if checkpoint is None else checkpoint.resumed_from)


class _Writer:
    """The run directory's side of a run, whichever process ran the chunks: run.json at
    the start, each finished chunk with its sidecar (device, dtype, versions, seconds),
    then the tables, notes and curve bands."""

    def __init__(self, study: Study, store: RunStore, chunks: list[Chunk],
                 dev: torch.device):
        self.study, self.store, self.chunks, self.dev = study, store, chunks, dev
        self.frames: dict[int, pd.DataFrame] = {}
        self.read_back = 0
        self.continued: list[str] = []
        self.conds: list[Condition] = []

    def start(self, conds: list[Condition], study_text: str | None) -> list[Chunk]:
        """Write run.json (status running); read back the finished chunks and return the
        others, in order."""
        study, store, chunks, self.conds = self.study, self.store, self.chunks, conds
        store.start({
            "study": study.name,
            "config_hash": study.config_hash(),
            "seed": study.run.seed,
            "chunk_seeds": [c.seed(study.run.seed) for c in chunks],
            "versions": versions(),
            "device": device_text(self.dev) if self.dev.type != "cuda"
            or torch.cuda.is_available() else "cuda (the Dask workers')",
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
        pending = []
        for chunk in chunks:
            frame = store.finished_chunk(chunk.index)
            if frame is None:
                pending.append(chunk)
            else:
                self.frames[chunk.index] = frame
        self.read_back = len(self.frames)
        return pending

    def write(self, chunk: Chunk, output: ChunkOutput, seconds: float, ran_with: dict,
              resumed_from: int | None = None, worker: str | None = None) -> None:
        """A finished chunk into the directory, with its sidecar (``worker``: the Dask
        worker's address); a mid-chunk state saved for it before is gone."""
        info = {"device": output.device, "dtype": self.study.run.dtype,
                "versions": ran_with, "seconds": round(seconds, 3)}
        if worker is not None:
            info["worker"] = worker
        if resumed_from is not None:
            info["resumed_from_step"] = resumed_from
            self.continued.append(f"chunk {chunk.index + 1} from step {resumed_from:,}")
        self.frames[chunk.index] = self.store.write_chunk(chunk.index, output.table, info,
                                                          output.curves)
        self.store.partial_path(chunk.index).unlink(missing_ok=True)

    def complete(self, resume: bool) -> RunResult:
        """The tables from every chunk, notes and curve bands; run.json complete."""
        store, chunks = self.store, self.chunks
        frames = [self.frames[c.index] for c in chunks]
        notes = _chunk_notes({c.index: store.chunk_info(c.index) for c in chunks})
        notes += _route_notes(self.study, self.dev)
        replicas, escapes = _tables(frames)
        curves = _bands(store, chunks, frames)
        store.complete(replicas, escapes, notes, curves)
        resumed = None
        if resume:
            resumed = (f"read back {self.read_back} of {len(chunks)} finished chunks"
                       + (f"; continued {', '.join(self.continued)}" if self.continued
                          else ""))
        return RunResult(store.out, escapes, replicas, store.meta, self.conds, notes, curves,
                         resumed)


def _bands(store: RunStore, chunks: list[Chunk], frames: list[pd.DataFrame]):
    """Per-condition curve bands from the chunks' per-replica curves (None without curves)."""
    pairs = [(f, store.chunk_curves(c.index)) for c, f in zip(chunks, frames, strict=True)]
    recorded = [(f, c) for f, c in pairs if c is not None]
    return curve_bands(recorded) if recorded else None


def _read_curves(store: RunStore) -> pd.DataFrame | None:
    path = store.out / CURVES
    return pd.read_csv(path) if path.exists() else None
