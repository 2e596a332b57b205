"""Escape monitoring for a user's own training loop: one escape-table row per run.

The engine's detector (``escapestat.detector``) decides escapes for batched replicas;
``EscapeMonitor`` applies exactly the same rule to one run that you train yourself and
report metrics from, as optuna's ``trial.report`` does::

    with EscapeMonitor("runs/escapes.csv", metric="test_acc", threshold=0.95,
                       fallback=0.9, commit_steps=200, lr=lr, seed=seed) as monitor:
        for step in range(1, max_steps + 1):
            train_one_step()
            if step % 50 == 0:
                monitor.update(step, test_acc=evaluate())

When the run ends (``close()``, the end of the ``with`` block, an exception in it, normal
interpreter exit, SIGTERM or SIGINT) one row is appended to the table: a CSV file shared
by many processes (appends under an exclusive ``flock``), or for ``.parquet`` a folder of
one part file per run, which ``records.read_table`` reads as one table.

This module imports neither torch nor any training framework; metric values may be
Python or numpy numbers or one-element tensors.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.monitor._criterion import (  # noqa: F401
    DIRECTIONS,
    Criterion,
    _Commitment,
    _number,
)
from escapestat.monitor._end_paths import (  # noqa: F401
    _ATEXIT,
    _OPEN,
    _close_all,
    _install_handlers,
    _on_signal,
    _restore_handlers,
    _writing,
)
from escapestat.stats._strata import CONDITION_COLUMNS, SCHEDULE_SUFFIX
from escapestat.table._append import append_row, cell_text, column_mismatch, existing_columns
from escapestat.table._records import _format
from escapestat.trackers import TrackerLog, open_log
from escapestat.vocab import CENSORED, DIVERGED, ESCAPED, RUNNING, UNTRAPPED, Status

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EscapeMonitor:
    """Escape time of one training run that you drive yourself; writes one table row.

    Call ``update(step, **metrics)`` at each evaluation. The escape is the first
    *committed* crossing of ``metric`` past ``threshold`` (``Criterion``): with crossing
    step c, it commits at the first evaluation t ≥ c + ``commit_steps`` that no
    evaluation in [c, t] has been past ``fallback``, and then

        duration = c,  event = 1,  status = "escaped".

    This is the engine's rule (``detector.EscapeDetector``), applied to one run.

    Censoring and divergence:

    - a run that ends undecided is right-censored at the last step at which ``metric``
      was evaluated (capped at ``max_steps``), ``event = 0``, ``status = "censored"``; a
      crossing still pending at the end has not committed and is censored too;
    - with ``max_steps``, a run with no pending crossing is censored at the first
      evaluation at or past ``max_steps`` (``done`` turns true); a pending crossing there
      is decided by the evaluations after the budget, as the engine keeps such a
      replica running: an escape at its crossing step or censored at ``max_steps``;
    - a non-finite value of any metric passed to ``update`` is never an escape: the run
      is ``diverged``, censored at that step (event 0); such values are counted in
      ``nonfinite_updates``. An escape that had committed before stays an escape.

    Steps count training steps done, so durations are > 0. ``step`` must increase from
    one update to the next. An update at step 0 is the state before training: if the
    metric is not on the trapped side of ``fallback`` there (or is not finite) the run is
    ``untrapped``, as in the engine: never at risk, no row. A run ended before any
    evaluation of ``metric`` at a step ≥ 1 writes no row either (there is no time at
    risk; a line on stderr says so, unless ``update`` was never called).

    With ``fit_metric`` the row also records the grokking milestones, with the engine's
    names: ``fit_time`` (the crossing step of the fit metric's first committed crossing
    past ``fit_threshold``, the same commitment rule; a crossing still pending when the
    run is decided or ends counts at its step, as in the engine), ``generalize_time``
    (the escape time, empty when censored) and ``delay = generalize_time − fit_time``.

    The row is written once, when the run ends: at ``close()`` (idempotent), at the end
    of a ``with`` block (also on an exception, which then propagates), at interpreter
    exit (``atexit``) for a monitor never closed, or on SIGTERM/SIGINT (the handlers are
    installed from the main thread at the first update, chain to the handlers that were
    there before and are restored when the last monitor closes). A decided run keeps its
    decision; ``final_<metric>`` columns hold the last values seen before the end.
    SIGKILL and power loss leave no row.

    Parameters
    ----------
    path : str or path-like
        The escape table: ``.csv``/``.tsv`` (appended to) or ``.parquet`` (a folder of
        one part file per run). Columns must match an existing table's exactly.
    metric, threshold, fallback, direction, commit_steps
        The escape ``Criterion`` (``fallback`` defaults to ``threshold``, ``direction`` to
        ``"higher"``, ``commit_steps`` to 200).
    fit_metric, fit_threshold, fit_fallback, fit_direction : optional
        The fit milestone's ``Criterion`` (the same ``commit_steps``; ``fit_direction``
        defaults to ``direction``).
    max_steps : int, optional
        The step budget: censoring is capped there and ``done`` turns true at it.
    record : sequence of str
        Further metrics whose last value is written as ``final_<name>``.
    conditions : mapping, optional
        Condition columns (``lr``, ``batch_size``, ``weight_decay``, ``seed``, any key):
        scalars (numbers, strings, bools, None). Keyword arguments not named above are
        conditions too. Unless one is given, a ``condition`` label is added, as the engine
        writes one: ``"lr=0.01, weight_decay=1"`` over the given conditions that escapestat
        knows as conditions (``strata.CONDITION_COLUMNS``, ``*_schedule``; not ``seed``), so
        ``escapestat report`` groups the runs by it.
    run_id : str, optional
        A unique name for the run (default: a random UUID hex).
    handle_signals : bool
        Install the SIGTERM/SIGINT handlers (default True).
    log : str or TrackerLog, optional
        Also send every update's metrics to a tracker, as run ``run_id``: a
        ``TrackerLog`` or its text, ``tensorboard:DIR`` or ``mlflow:URI``
        (``escapestat.trackers.open_log``). At the end the conditions are logged as
        hyperparameters, and ``escapestat/event`` (1 escaped, 0 not) and
        ``escapestat/duration`` as scalars at the last step. ``escapestat ingest`` reads
        such a log back into the same row.
    quiet : bool
        Do not print the line that says a run writes no row (``ingest`` reports it).

    Attributes
    ----------
    status : str
        ``running`` until decided, then ``escaped``, ``censored``, ``diverged`` or
        ``untrapped``.
    escape_time, fit_time : int or None
        Crossing steps of the committed crossings.
    row : dict or None
        The row written (after the end), None when none was.
    columns : list of str
        The table columns of this run's row, in order.
    """

    def __init__(self, path: str | os.PathLike, metric: str, threshold: float, *,
                 fallback: float | None = None, direction: str = "higher",
                 commit_steps: float = 200, fit_metric: str | None = None,
                 fit_threshold: float | None = None, fit_fallback: float | None = None,
                 fit_direction: str | None = None, max_steps: int | None = None,
                 record=(), conditions: Mapping[str, object] | None = None,
                 run_id: str | None = None, handle_signals: bool = True,
                 log: str | TrackerLog | None = None, quiet: bool = False,
                 **more_conditions):
        self.path = Path(path)
        _format(self.path)  # an unknown suffix is one clear error, now
        self.criterion = Criterion(metric, threshold, fallback, direction, commit_steps)
        self.fit_criterion: Criterion | None = None
        if fit_metric is not None:
            if fit_threshold is None:
                raise EscapestatError(f"fit_metric {fit_metric!r} needs a fit_threshold")
            self.fit_criterion = Criterion(fit_metric, fit_threshold, fit_fallback,
                                           fit_direction or direction, commit_steps)
        elif fit_threshold is not None or fit_fallback is not None:
            raise EscapestatError("fit_threshold/fit_fallback need a fit_metric")
        if max_steps is not None:
            budget = _number(max_steps, "max_steps")
            if not (math.isfinite(budget) and budget > 0):
                raise EscapestatError(f"max_steps must be > 0; got {max_steps!r}")
        self.max_steps = max_steps
        self.run_id = uuid.uuid4().hex if run_id is None else str(run_id)
        if not _RUN_ID.match(self.run_id):
            raise EscapestatError(f"run_id {self.run_id!r}: use letters, digits, '_', '.', '-'")
        self.handle_signals = bool(handle_signals)
        self._recorded = list(dict.fromkeys(
            [metric] + ([fit_metric] if fit_metric else []) + [str(r) for r in record]))
        self.conditions = self._conditions({**dict(conditions or {}), **more_conditions})
        self.columns = list(self._empty_row())
        have = existing_columns(self.path)
        error = None if have is None else column_mismatch(self.path, have, self.columns)
        if error is not None:
            raise error
        self.started_at = _now()
        self.ended_at: str | None = None  # set before close() to keep a known end time
        self.quiet = bool(quiet)
        self.log: TrackerLog | None = open_log(log) if isinstance(log, str) else log
        self._own_log = isinstance(log, str)  # a log passed in is the caller's to close
        self.status = RUNNING
        self.row: dict | None = None
        self.escape_time: int | None = None
        self.fit_time: int | None = None
        self.first_cross_time: int | None = None
        self.last_step: int | None = None
        self._risk_step: int | None = None
        self._end_step: int | None = None
        self.nonfinite_updates, self.closed = 0, False
        self._escape, self._fit = _Commitment(self.criterion), (
            _Commitment(self.fit_criterion) if self.fit_criterion else None)
        self._final: dict[str, float] = {}
        self._pid = os.getpid()

    # -- configuration ---------------------------------------------------------------------
    def _conditions(self, given: dict) -> dict:
        reserved = set(self._empty_row(conditions=False))
        out = {}
        for key, value in given.items():
            if key in reserved:
                raise EscapestatError(f"condition {key!r} clashes with a column the monitor "
                                      "writes; rename it")
            if hasattr(value, "item") and not isinstance(value, str):
                value = value.item()
            if value is not None and not isinstance(value, (int, float, str, bool)):
                raise EscapestatError(f"condition {key!r} must be a number, string, bool or "
                                      f"None; got {type(value).__name__}")
            out[str(key)] = value
        known = [k for k in out if k != "condition" and (
            k in CONDITION_COLUMNS or k.endswith(SCHEDULE_SUFFIX))]
        if known and "condition" not in out:  # as the engine's: report groups by it
            out["condition"] = ", ".join(f"{k}={cell_text(out[k])}" for k in known)
        return out

    def _empty_row(self, conditions: bool = True) -> dict:
        row = dict.fromkeys(["duration", "event", "status", "first_cross_time"])
        if self.fit_criterion is not None:
            row.update(dict.fromkeys(["fit_time", "generalize_time", "delay"]))
        row.update({f"final_{name}": None for name in self._recorded})
        row.update(dict.fromkeys(["nonfinite_updates", "last_step"]))
        if conditions:
            row.update(self.conditions)
        row.update(dict.fromkeys(["run_id", "started_at", "ended_at", "ended_by"]))
        return row

    # -- the loop --------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the run is decided (escaped, censored at ``max_steps``, diverged or
        untrapped): the loop may stop; later updates only refresh ``final_*`` values."""
        return self.status != RUNNING

    @property
    def pending(self) -> bool:
        """True while a crossing awaits commitment."""
        return self.status == RUNNING and self._escape.pending is not None

    def update(self, step: int, metrics: Mapping[str, object] | None = None,
               **more: object) -> None:
        """Report the metrics evaluated after ``step`` training steps.

        ``metrics`` (a mapping) and keyword arguments are merged; the escape rule is
        checked when ``metric`` is among them, the fit rule when ``fit_metric`` is.
        """
        if self.closed:
            raise EscapestatError(f"run {self.run_id}: update() after close()")
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                step = int(step.__index__())
            except (AttributeError, TypeError):
                raise EscapestatError(f"step must be an integer; got {step!r}") from None
        if step < 0 or (self.last_step is not None and step <= self.last_step):
            after = "" if self.last_step is None else f" after step {self.last_step}"
            raise EscapestatError(f"step {step}{after}: steps must be ≥ 0 and increase")
        values = {str(k): _number(v, f"metric {k!r}")
                  for k, v in {**dict(metrics or {}), **more}.items()}
        if self.handle_signals and not self._registered:
            _install_handlers()
        if not self._registered:
            _OPEN[id(self)] = self
            if not self.handle_signals and not _ATEXIT[0]:
                atexit.register(_close_all, "exit")
                _ATEXIT[0] = True
        self.last_step = step
        if self.log is not None and values:
            self.log.scalars(self.run_id, step, values)
        for name in self._recorded:
            if name in values:
                self._final[name] = values[name]
        finite = all(math.isfinite(v) for v in values.values())
        self.nonfinite_updates += not finite
        if self.done:
            return
        name = self.criterion.metric
        if step == 0:
            if not finite or (name in values and not self.criterion.fell_back(values[name])):
                self._decide(UNTRAPPED, None)
                return
        if not finite:
            self._decide(DIVERGED, self._capped(step))
            return
        if self._fit is not None and self._fit.criterion.metric in values:
            if self.fit_time is None and self._fit.check(step, values[self._fit.criterion.metric]):
                self.fit_time = self._fit.time
        if name not in values:
            return
        value = values[name]
        if step > 0:
            self._risk_step = step
        if self.first_cross_time is None and self.criterion.crossed(value):
            self.first_cross_time = step
        if self._escape.check(step, value):
            self.escape_time = self._escape.time
            self._decide(ESCAPED, self.escape_time)
        elif self.max_steps is not None and step >= self.max_steps and not self.pending:
            self._decide(CENSORED, self._capped(step))

    @property
    def _registered(self) -> bool:
        return id(self) in _OPEN

    def _capped(self, step: int) -> int:
        return step if self.max_steps is None else min(step, self.max_steps)

    def _decide(self, status: Status, duration: int | None) -> None:
        self.status, self._end_step = status, duration
        if self._fit is not None and self.fit_time is None and self._fit.pending is not None:
            self.fit_time = self._fit.pending  # the engine's settle: pending counts at its step

    # -- the end ---------------------------------------------------------------------------
    def close(self, ended_by: str = "close") -> dict | None:
        """End the run and write its row (once; later calls do nothing). Returns the row."""
        return self._finish(ended_by)

    def _finish(self, ended_by: str) -> dict | None:
        if self.closed:
            return self.row
        try:
            with _writing():  # a signal now waits until the row is written
                self.closed = True
                _OPEN.pop(id(self), None)
                if self.status == RUNNING:
                    self._decide(CENSORED, None if self._risk_step is None
                                 else self._capped(self._risk_step))
                if self.status == UNTRAPPED or self._end_step is None:
                    self._no_row()
                    return None
                row = self._make_row(ended_by)
                with _writing():
                    append_row(self.path, row)
                self.row = row
                self._log_end(row)
                return row
        finally:
            self._release()

    def discard(self) -> None:
        """End the run without writing a row (e.g. its data were found bad)."""
        self.closed = True
        _OPEN.pop(id(self), None)
        self._release()

    def _release(self) -> None:
        """After the end: close or flush the tracker log; the last open monitor gives the
        signal handlers back."""
        self._end_log()
        if not _OPEN:
            _restore_handlers()

    def _end_log(self) -> None:
        if self.log is None:
            return
        if self._own_log:
            self.log.close()
        else:
            self.log.flush()

    def _log_end(self, row: dict) -> None:
        if self.log is None:
            return
        self.log.hparams(self.run_id, self.conditions)
        self.log.scalars(self.run_id, int(self.last_step or 0), {
            "escapestat/event": float(row["event"]), "escapestat/duration": row["duration"]})

    def _no_row(self) -> None:
        if self.last_step is not None and not self.quiet:
            why = ("it was not in the trap at step 0" if self.status == UNTRAPPED else
                   f"{self.criterion.metric!r} was never evaluated at a step ≥ 1")
            print(f"escapestat: run {self.run_id} writes no escape row: {why}", file=sys.stderr)

    def _make_row(self, ended_by: str) -> dict:
        escaped = self.status == ESCAPED
        nan = float("nan")
        row = self._empty_row()
        assert self._end_step is not None  # _finish writes a row only for a decided duration
        row.update(duration=float(self._end_step), event=int(escaped), status=self.status,
                   first_cross_time=nan if self.first_cross_time is None
                   else float(self.first_cross_time))
        if self.fit_criterion is not None:
            fit = nan if self.fit_time is None else float(self.fit_time)
            # An escaped run has its escape time (``update`` sets both at once).
            generalize = (float(self.escape_time) if escaped and self.escape_time is not None
                          else nan)
            row.update(fit_time=fit, generalize_time=generalize, delay=generalize - fit)
        row.update({f"final_{n}": self._final.get(n, nan) for n in self._recorded})
        row.update(nonfinite_updates=self.nonfinite_updates, last_step=self.last_step,
                   run_id=self.run_id, started_at=self.started_at,
                   ended_at=self.ended_at or _now(),
                   ended_by=ended_by)
        return row

    def __enter__(self) -> EscapeMonitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("close" if exc_type is None else f"exception {exc_type.__name__}")

    def __repr__(self) -> str:
        return (f"EscapeMonitor({self.criterion.metric!r}, status={str(self.status)!r}, "
                f"last_step={self.last_step}, run_id={self.run_id!r})")


__all__ = ["CENSORED", "DIVERGED", "ESCAPED", "RUNNING", "UNTRAPPED", "Criterion",
           "EscapeMonitor", "append_row", "existing_columns"]
