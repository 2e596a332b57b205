"""``run --log``: a finished run's escapes and per-check curves sent to a tracker.

One tracker run per condition (``condition-<index>``): its conditions as hyperparameters,
and as scalars over the steps: ``escaped`` (the fraction of its replicas escaped by then,
from the survival table), ``diverged`` (the fraction diverged), and for models that
record curves the median and 10/90% quantiles of each curve per check. Sent once the
run's tables are complete, so a run resumed, read back or run on a cluster logs the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from escapestat.stats._strata import condition_columns
from escapestat.trackers import TrackerLog
from escapestat.vocab import DIVERGED, ESCAPED


def _conditions(rows: pd.DataFrame) -> dict[str, object]:
    """The condition's columns (``condition_columns``), as plain values, empty ones left out."""
    out: dict[str, object] = {}
    for col in condition_columns(rows, exclude=("condition",)):
        value = rows[col].iloc[0]
        value = value.item() if isinstance(value, np.generic) else value
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[col] = value
    return out


def _fraction_by(durations: np.ndarray, n: int, steps: np.ndarray) -> np.ndarray:
    """The fraction of ``n`` replicas whose duration is ≤ each step."""
    return np.searchsorted(np.sort(durations), steps, side="right") / n


def log_run(escapes: pd.DataFrame, curves: pd.DataFrame | None, budget: int,
            log: TrackerLog) -> list[str]:
    """Send each condition's escapes and curves to ``log``; returns the run names used."""
    names = []
    for cond, rows in escapes.groupby("condition", sort=True):
        name = f"condition-{int(cond)}"
        names.append(name)
        log.hparams(name, {"condition": int(cond), **_conditions(rows)})
        n = len(rows)
        status = rows["status"].astype(str).to_numpy()
        duration = rows["duration"].to_numpy(dtype=float)
        steps = np.array(sorted({0, int(budget), *duration.astype(int).tolist()}))
        escaped = _fraction_by(duration[status == ESCAPED], n, steps)
        diverged = _fraction_by(duration[status == DIVERGED], n, steps)
        for step, e, d in zip(steps.tolist(), escaped.tolist(), diverged.tolist(), strict=True):
            log.scalars(name, step, {"escaped": e, "diverged": d})
        if curves is not None and len(curves):
            mine = curves[curves["condition"] == cond]
            for step, at in mine.groupby("step", sort=True):
                values: dict[str, float] = {}
                for _, r in at.iterrows():
                    for q in ("median", "q10", "q90"):
                        if np.isfinite(r[q]):
                            values[f"{r['metric']}/{q}"] = float(r[q])
                if values:
                    log.scalars(name, int(step), values)
    log.close()
    return names
