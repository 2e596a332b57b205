"""Escape tables from runs logged elsewhere: the monitor's rule applied to tracker logs.

``ingest`` replays each ``LoggedRun``'s series through an ``EscapeMonitor``, step by step,
so a run logged to TensorBoard, MLflow or W&B gets exactly the row the monitor would
have written had it watched the run live (same commitment, censoring and divergence).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.monitor._monitor import EscapeMonitor
from escapestat.table._append import existing_columns
from escapestat.table._records import read_table
from escapestat.trackers import LoggedRun
from escapestat.trackers._run import iso_time
from escapestat.vocab import UNTRAPPED


@dataclass
class IngestResult:
    """What ``ingest`` wrote: rows by status, and the runs that gave no row and why."""

    path: Path
    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "rows": self.rows, "statuses": dict(self.statuses),
                "skipped": [{"run": r, "why": w} for r, w in self.skipped]}


def _run_ids(path: Path) -> set[str]:
    table = read_table(path)
    return set(table["run_id"].astype(str)) if "run_id" in table else set()


def _condition_keys(runs: list[LoggedRun]) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.conditions))
    return list(keys)


def ingest(runs: list[LoggedRun], path: str | os.PathLike, metric: str, threshold: float, *,
           source: str = "tracker", append: bool = False, step_offset: int = 0,
           **criterion) -> IngestResult:
    """Write one escape-table row per run that logged ``metric`` (``EscapeMonitor``'s
    rule, its options in ``criterion``: fallback, direction, commit_steps, fit_metric,
    fit_threshold, fit_fallback, fit_direction, max_steps, record).

    ``step_offset`` is added to every logged step, for loggers whose step is not the
    number of training steps done (Lightning logs at that number minus one: offset 1).
    Runs are replayed in order; every run gets the union of the runs' hyperparameter
    names as condition columns (empty where it had none). Without ``append`` an existing
    table is refused, so nothing written before is touched; with it, a run whose
    ``run_id`` the table already holds is skipped, so ingesting the same logs twice
    never counts a run twice.
    """
    out = Path(path)
    exists = existing_columns(out) is not None
    if exists and not append:
        raise EscapestatError(f"{out} exists; write to a new file, or add --append to "
                              "append these runs to it")
    result = IngestResult(out)
    keys = _condition_keys([r for r in runs if metric in r.series])
    held = _run_ids(out) if exists else set()
    seen: set[str] = set()
    for run in runs:
        if metric not in run.series:
            result.skipped.append((run.name, f"no {metric!r} series"))
            continue
        if run.name in held:
            result.skipped.append((run.name, f"already in {out}"))
            continue
        run_id = run.name
        n = 2
        while run_id in seen:
            run_id, n = f"{run.name}-{n}", n + 1
        seen.add(run_id)
        conditions = {k: run.conditions.get(k) for k in keys}
        monitor = EscapeMonitor(out, metric, threshold, conditions=conditions, run_id=run_id,
                                handle_signals=False, quiet=True, **criterion)
        try:
            for step in run.steps():
                monitor.update(step + step_offset, run.at(step))
        except EscapestatError as exc:
            monitor.discard()
            raise EscapestatError(f"run {run.name}: {exc}") from None
        monitor.started_at = iso_time(run.started) or monitor.started_at
        monitor.ended_at = iso_time(run.ended)
        row = monitor.close(f"ingest {source}")
        if row is None:
            why = ("not in the trap at step 0" if monitor.status == UNTRAPPED else
                   f"{metric!r} never logged at a step ≥ 1")
            result.skipped.append((run.name, why))
            continue
        result.rows += 1
        result.statuses[str(row["status"])] += 1
    return result
