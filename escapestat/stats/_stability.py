"""Whether a trap that held every replica to the budget is stable or still moving.

No escape within the budget shows a trap only if the run also shows the state stable:
a grokking net whose test accuracy is 0.58 and rising at the budget has not been
trapped, it has not been run long enough. The engine records each replica's order
parameter q at the first check past half the budget and where the replica was decided
(``order_parameter_mid``/``_mid_step``/``_end``); from them, per condition:

- **still moving**: q rose toward the threshold over the last half (one-sided Wilcoxon
  signed-rank p < 0.05) fast enough that, continued linearly, its median reaches the
  threshold within ``REACH_FACTOR`` budgets; the projected step says what budget would
  decide it;
- **stable**: no significant rise, or one so slow that the threshold lies beyond
  ``REACH_FACTOR`` budgets: the trap held, and "absorbing" is earned.

Without these columns (a table measured elsewhere, an older run) nothing shows either,
and no escape is only "not reached within the budget".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

Q_MID, Q_MID_STEP, Q_END = ("order_parameter_mid", "order_parameter_mid_step",
                            "order_parameter_end")
LEVEL = 0.05
REACH_FACTOR = 10  # a rise that reaches the threshold within this many budgets is "moving"


@dataclass(frozen=True)
class Trend:
    """How the order parameter of a condition's censored replicas moved over the last half."""

    n: int
    q_end: float  # median q where the replicas were censored
    change: float  # median of q_end − q_mid
    steps: float  # median steps between the two checks
    pvalue: float  # one-sided Wilcoxon signed-rank: q rose
    threshold: float
    end: float  # the last step (the budget)

    @property
    def reach(self) -> float:
        """Step at which the median q reaches the threshold at its last-half drift (∞ when
        it does not rise)."""
        if self.q_end >= self.threshold:
            return self.end
        if not self.change > 0:
            return math.inf
        return self.end + (self.threshold - self.q_end) * self.steps / self.change

    @property
    def moving(self) -> bool:
        return self.pvalue < LEVEL and self.reach <= REACH_FACTOR * self.end

    def suggested_budget(self) -> int:
        """A budget that would decide it: 1.5× the projected step, to two significant
        figures (grokking curves steepen, so the linear projection is conservative)."""
        x = 1.5 * self.reach
        scale = 10 ** max(int(math.floor(math.log10(x))) - 1, 0)
        return int(math.ceil(x / scale) * scale)

    def describe(self) -> str:
        """The evidence in words, for a verdict's reason."""
        move = (f"the order parameter went {self.q_end - self.change:.3g} → {self.q_end:.3g} "
                f"(median) over the last {self.steps:,.0f} steps, Wilcoxon p {self.pvalue:.2g}")
        if self.moving:
            return (f"{move}: still rising, at that rate it reaches {self.threshold:g} near "
                    f"step {self.reach:,.0f}; rerun with --max-steps {self.suggested_budget():,}")
        if self.pvalue < LEVEL and math.isfinite(self.reach):
            return (f"{move}: a drift that reaches {self.threshold:g} only near step "
                    f"{self.reach:,.0f}, > {REACH_FACTOR}× the budget")
        return f"{move}: no rise"


def trend(rows: pd.DataFrame, threshold: float | None, end: float | None = None) -> Trend | None:
    """The trend of ``rows``' censored replicas, or None when the run did not record it."""
    if threshold is None or not {Q_MID, Q_MID_STEP, Q_END} <= set(rows.columns):
        return None
    part = rows[rows["event"] == 0]
    mid, step, last = (part[c].to_numpy(dtype=float) for c in (Q_MID, Q_MID_STEP, Q_END))
    durations = part["duration"].to_numpy(dtype=float)
    ok = np.isfinite(mid) & np.isfinite(step) & np.isfinite(last) & (durations > step)
    if not ok.any():
        return None
    diff = last[ok] - mid[ok]
    if np.all(diff == 0):
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.wilcoxon(diff, alternative="greater").pvalue)
    budget = float(end) if end is not None else float(durations.max())
    return Trend(int(ok.sum()), float(np.median(last[ok])), float(np.median(diff)),
                 float(np.median(durations[ok] - step[ok])), p, float(threshold), budget)
