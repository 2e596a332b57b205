"""A finished chunk's table: one row per replica with its survival columns, conditions and
schedules, and the grokking milestones' columns (fit, generalisation, delay)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from escapestat.config._study import Condition, Study
from escapestat.engine._chunks import Chunk
from escapestat.engine._detector import CENSORED, DIVERGED, ESCAPED
from escapestat.vocab import UNFIT

if TYPE_CHECKING:
    from escapestat.engine._loop import _Milestones


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
