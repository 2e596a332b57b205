"""One arm of ``compare``, as it crosses into the CLI, the report and ``compare.json``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

Interval = tuple[float | None, float | None] | list | None


@dataclass(frozen=True)
class ArmComparison:
    """An arm's outcome and its contrasts; ``as_dict()`` is its row of ``compare.json``.

    Against the default, the best constant and (a scheduled best trial) the best feasible
    of its own ablations: the ratio of incidence medians with a bootstrap CI, the same in
    wall-clock time, a log-rank p, the Weibull-AFT time ratio with its CI, the smallest
    detectable ratio and, where a median is not reached, the side the ratio is bounded
    on. ``None`` where a contrast does not apply.
    """

    arm: str
    source: str
    params: dict[str, Any]
    n: int
    events: int
    diverged: int
    median: float | None
    median_ci: Interval
    escaped_fraction: float
    diverged_fraction: float
    censored_fraction: float
    final_test_error: float | None
    final_train_error: float | None
    final_loss: float | None
    rmst: float
    seconds_per_step: float
    feasible: bool
    ratio_vs_default: float | None
    ratio_vs_default_ci: Interval
    wall_ratio_vs_default: float | None
    logrank_p_vs_default: float | None
    time_ratio_vs_default: float | None
    time_ratio_vs_default_ci: Interval
    detectable_vs_default: float | None
    ratio_vs_default_bound: list | None
    ratio_vs_best_constant: float | None
    ratio_vs_best_constant_ci: Interval
    wall_ratio_vs_best_constant: float | None
    logrank_p_vs_best_constant: float | None
    time_ratio_vs_best_constant: float | None
    time_ratio_vs_best_constant_ci: Interval
    detectable_vs_best_constant: float | None
    ratio_vs_best_constant_bound: list | None
    logrank_p: float | None
    ablations: list[str] | None
    ablation_best: str | None
    ratio_vs_ablation: float | None
    ratio_vs_ablation_ci: Interval
    wall_ratio_vs_ablation: float | None
    logrank_p_vs_ablation: float | None
    time_ratio_vs_ablation: float | None
    time_ratio_vs_ablation_ci: Interval
    detectable_vs_ablation: float | None
    ratio_vs_ablation_bound: list | None
    schedule_verdict: str | None

    def as_dict(self) -> dict[str, Any]:
        """The fields in declaration order (``compare.json``'s key order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
