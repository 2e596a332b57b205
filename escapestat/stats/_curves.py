"""Learning curves per condition: the median and 10–90% band over replicas at each check.

The engine records each replica's curve values (train and test accuracy for the grokking
models) at every check; a replica decided earlier carries its last value forward, so
the band at step t describes every replica of the condition, not just those still
running. Researchers want the grokking curve beside the escape statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.5, 0.9)


def curve_bands(chunks: list[tuple[pd.DataFrame, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """One row per (condition, step, metric): n, q10, median, q90, over all its replicas.

    ``chunks`` pairs each chunk's replica table (in the curves' column order) with its
    curves; chunks of one run share their check steps until each one's last replica
    leaves, and later steps carry every replica's last value.
    """
    per_condition: dict[int, dict[str, list[np.ndarray]]] = {}
    steps = np.unique(np.concatenate([c["step"] for _, c in chunks]))
    for table, curves in chunks:
        # Align this chunk on the common steps (its replicas' values held after it ended).
        where = np.searchsorted(curves["step"], steps, side="right") - 1
        for cond in np.unique(table["condition"]):
            cols = np.flatnonzero(table["condition"].to_numpy() == cond)
            slot = per_condition.setdefault(int(cond), {})
            for metric, values in curves.items():
                if metric != "step":
                    slot.setdefault(metric, []).append(values[np.maximum(where, 0)][:, cols])
    rows = []
    for cond, metrics in sorted(per_condition.items()):
        for metric, parts in metrics.items():
            values = np.concatenate(parts, axis=1)
            lo, mid, hi = np.nanquantile(values, QUANTILES, axis=1)
            rows.append(pd.DataFrame({"condition": cond, "metric": metric, "step": steps,
                                      "n": np.isfinite(values).sum(axis=1), "q10": lo,
                                      "median": mid, "q90": hi}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
