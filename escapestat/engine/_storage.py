"""Run directories: ``run.json``, the study as run, finished chunks, the final tables.

The contract (like an optuna storage's): a finished chunk is written once, atomically,
with a sidecar saying where and with what it ran, and is never rewritten; reading back a
complete run writes nothing; a directory holding a different study (config hash) is
refused whatever the flags; an unfinished run continues only with ``resume`` (one that
finished no chunk — a failed start — is simply started again); one process at a time
writes a directory (``locked``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from escapestat.errors import EscapestatError
from escapestat.models import _native as native
from escapestat.table._records import atomic_write, write_json, write_table
from escapestat.vocab import (  # noqa: F401  (the names of a run directory, re-exported)
    CHUNK_DIR,
    CURVES,
    ESCAPES,
    LOCK,
    LOCK_PID,
    PARTIAL,
    REPLICAS,
    RUN_JSON,
    STUDY_TOML,
    SWEEP_CSV,
    SWEEP_JSON,
    SWEEP_PNG,
)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    import lifelines
    import statsmodels

    from escapestat import __version__

    return {"escapestat": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "lifelines": lifelines.__version__, "statsmodels": statsmodels.__version__,
            "python": platform.python_version()}


def device_text(device: torch.device) -> str:
    """What a run ran on: the GPU's name, or the CPU threads and, once a model has loaded
    them, the C kernels (native.py), whose rounding differs from torch's ops."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    kernels = native.loaded()
    extra = f", {kernels.describe()}" if kernels is not None else ""
    return f"cpu ({torch.get_num_threads()} threads{extra})"


def _save_npz(tmp: str, arrays: Mapping[str, Any]) -> None:
    with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(handle, **arrays)


class RunStore:
    """One run directory. ``open`` checks what is there; chunks and tables go through here."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.meta_path = self.out / RUN_JSON
        self.meta: dict = {}

    def chunk_path(self, index: int) -> Path:
        return self.out / CHUNK_DIR / f"chunk-{index:05d}.csv"

    def partial_path(self, index: int) -> Path:
        """Where an unfinished chunk keeps its mid-chunk state (``ChunkCheckpoint``)."""
        return self.out / CHUNK_DIR / f"chunk-{index:05d}{PARTIAL}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory for this process (an OS file lock, released if it dies): a
        second run on the same --out is refused with the holder's pid, not run twice."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.out / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                pid = (self.out / LOCK_PID).read_text(encoding="utf-8").strip() or "?"
            except OSError:
                pid = "?"
            raise EscapestatError(f"{self.out} is being written by another escapestat process "
                                  f"(pid {pid}); wait for it to end or choose another --out"
                                  ) from None
        try:
            (self.out / LOCK_PID).write_text(str(os.getpid()), encoding="utf-8")
            yield
        finally:
            lock.release()

    def _chunks_on_disk(self) -> int:
        """Finished chunks and chunks with a mid-chunk state: work a rerun would lose."""
        return sum(1 for _ in (self.out / CHUNK_DIR).glob("chunk-*.csv")) + sum(
            1 for _ in (self.out / CHUNK_DIR).glob(f"chunk-*{PARTIAL}"))

    def open(self, config_hash: str, resume: bool) -> bool:
        """Check the directory for this study; True when it holds its complete run."""
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EscapestatError(f"{self.meta_path}: unreadable ({exc})") from None
            if meta.get("status") != "complete" and not self._chunks_on_disk():
                return False  # a start that finished nothing (it failed): begin again
            if meta.get("config_hash") != config_hash:
                raise EscapestatError(
                    f"{self.out} holds a run of a different study (config hash "
                    f"{meta.get('config_hash')} ≠ {config_hash}); choose another --out")
            if meta.get("status") == "complete" and self._tables_exist():
                self.meta = meta
                return True
            if not resume:
                partial = sum(1 for _ in (self.out / CHUNK_DIR).glob(f"chunk-*{PARTIAL}"))
                inside = f", {partial} stopped inside" if partial else ""
                raise EscapestatError(
                    f"{self.out} already holds an unfinished run of this study "
                    f"({meta.get('chunks_done', '?')}/{meta.get('chunks_total', '?')} chunks"
                    f"{inside}); pass --resume to continue it or choose another --out")
            self.meta = meta
        elif resume and self.out.exists() and any(
                p.name not in (LOCK, LOCK_PID) for p in self.out.iterdir()):
            raise EscapestatError(f"{self.out} has no {RUN_JSON} to resume from")
        return False

    def _tables_exist(self) -> bool:
        return (self.out / REPLICAS).exists() and (self.out / ESCAPES).exists()

    def start(self, meta: dict, study_text: str | None) -> None:
        """Begin or continue writing: the study file and run.json (status running)."""
        (self.out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
        if study_text is not None:
            path = self.out / STUDY_TOML
            if not path.exists() or path.read_text(encoding="utf-8") != study_text:
                path.write_text(study_text, encoding="utf-8")
        started = self.meta.get("started")
        self.meta = {**meta, "status": "running", "started": started or now()}
        if started:
            self.meta["resumed"] = [*self.meta.get("resumed", []), now()]
        write_json(self.meta, self.meta_path)

    def finished_chunk(self, index: int) -> pd.DataFrame | None:
        """A finished chunk's table as written, or None."""
        path = self.chunk_path(index)
        return pd.read_csv(path) if path.exists() else None

    def chunk_info(self, index: int) -> dict:
        """Where and with what a finished chunk ran (its sidecar); {} if it has none."""
        path = self.chunk_path(index).with_suffix(".json")
        if not path.exists():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def write_chunk(self, index: int, frame: pd.DataFrame, info: dict,
                    curves: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Write a finished chunk (sidecar and curves first, then the table that marks it done)."""
        path = self.chunk_path(index)
        write_json(info, path.with_suffix(".json"))
        if curves is not None:
            atomic_write(path.with_suffix(".npz"), lambda tmp: _save_npz(tmp, curves))
        write_table(frame, path)
        self.meta["chunks_done"] = self.meta.get("chunks_done", 0) + 1
        write_json(self.meta, self.meta_path)
        return pd.read_csv(path)  # identical whether run now or resumed later

    def chunk_curves(self, index: int) -> dict[str, np.ndarray] | None:
        """A finished chunk's per-replica curves ("step" [C], metric [C, replicas]), or None."""
        path = self.chunk_path(index).with_suffix(".npz")
        if not path.exists():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def complete(self, replicas: pd.DataFrame, escapes: pd.DataFrame, notes: list[str],
                 curves: pd.DataFrame | None = None) -> None:
        write_table(replicas, self.out / REPLICAS)
        write_table(escapes, self.out / ESCAPES)
        if curves is not None:
            write_table(curves, self.out / CURVES)
        self.meta.update(status="complete", finished=now(), notes=notes)
        write_json(self.meta, self.meta_path)


class ChunkCheckpoint:
    """A chunk's mid-chunk state, saved atomically every ``every`` seconds at a check, so
    a killed run continues inside the chunk, byte-identical to an uninterrupted one.

    The state is the whole training loop (model weights and optimiser moments, the random
    generator, detector, schedules, curves so far) pickled by ``torch.save``; ``identity``
    (config hash, chunk, seed, versions, device, dtype) must match for it to be used, else
    the chunk starts over. Only files this run directory wrote are ever loaded.
    """

    def __init__(self, path: Path, every: float, identity: dict):
        self.path, self.every, self.identity = Path(path), float(every), identity
        self._last = time.monotonic()
        self.resumed_from: int | None = None  # the step a loaded state was saved at

    def load(self, device: torch.device) -> dict | None:
        """The saved state if it is this chunk's, on ``device``; None otherwise."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location=device, weights_only=False)
        except Exception:  # a state from another torch, or cut short: start the chunk over
            return None
        if not isinstance(saved, dict) or saved.get("identity") != self.identity:
            return None
        self.resumed_from = int(saved["state"]["t"])
        return saved["state"]

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> None:
        atomic_write(self.path, lambda tmp: torch.save(
            {"identity": self.identity, "state": state}, tmp))
        self._last = time.monotonic()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
