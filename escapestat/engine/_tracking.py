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

from escapestat.stats._strata import CONDITION_COLUMNS, SCHEDULE_SUFFIX
from escapestat.trackers import TrackerLog
from escapestat.vocab import DIVERGED, ESCAPED


def _conditions(rows: pd.DataFrame) -> dict[str, object]:
    first = rows.iloc[0]
    out: dict[str, object] = {}
    for col in rows.columns:
        if col == "condition" or not (col in CONDITION_COLUMNS or col.endswith(SCHEDULE_SUFFIX)):
            continue
        value = first[col]
        if isinstance(value, (np.generic,)):
            value = value.item()
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        out[col] = value
    return out


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
        steps = sorted({0, int(budget), *duration.astype(int).tolist()})
        for step in steps:
            log.scalars(name, step, {
                "escaped": float(((status == ESCAPED) & (duration <= step)).sum() / n),
                "diverged": float(((status == DIVERGED) & (duration <= step)).sum() / n)})
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
