"""The escape rule for one run (``Criterion``) and its pending crossing (``_Commitment``):
the engine detector's committed-crossing rule, torch-free, for ``EscapeMonitor``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from escapestat.errors import EscapestatError, did_you_mean

DIRECTIONS = ("higher", "lower")


def _number(value, what: str) -> float:
    """A metric or option value as a float: numbers, numpy scalars, one-element tensors."""
    if isinstance(value, bool):
        raise EscapestatError(f"{what} must be a number, not a bool ({value!r})")
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        raise EscapestatError(f"{what} must be a number; got {value!r}") from None


@dataclass(frozen=True)
class Criterion:
    """A committed crossing of one metric: the engine's escape rule for a single run.

    The run *crosses* at the first evaluation with the metric on the good side of
    ``threshold`` (≥ for ``direction="higher"``, ≤ for ``"lower"``). The crossing is
    *pending* until ``commit_steps`` steps have passed with no evaluation past
    ``fallback`` on the bad side; then it commits, and its time is the **crossing step**.
    A fall-back forgets the crossing; a later crossing starts afresh.

    Parameters
    ----------
    metric : str
        Name of the metric as passed to ``EscapeMonitor.update``.
    threshold : float
        Level whose crossing is an escape.
    fallback : float, optional
        Level whose crossing back cancels a pending crossing; on the bad side of
        ``threshold`` or equal to it (the default: any step back over the threshold).
    direction : {"higher", "lower"}
        Whether larger metric values are better (accuracy) or smaller ones (loss, error).
    commit_steps : int or float
        How many steps a crossing must hold, > 0 (the engine's default is 200).
    """

    metric: str
    threshold: float
    fallback: float | None = None
    direction: str = "higher"
    commit_steps: float = 200

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise EscapestatError(f"the metric name must be a non-empty string; got "
                                  f"{self.metric!r}")
        if self.direction not in DIRECTIONS:
            raise EscapestatError(f"{self.metric}: direction must be 'higher' or 'lower'; got "
                                  f"{self.direction!r}{did_you_mean(self.direction, DIRECTIONS)}")
        threshold = _number(self.threshold, f"{self.metric}: threshold")
        fallback = threshold if self.fallback is None else _number(
            self.fallback, f"{self.metric}: fallback")
        commit = _number(self.commit_steps, f"{self.metric}: commit_steps")
        if not (math.isfinite(threshold) and math.isfinite(fallback)):
            raise EscapestatError(f"{self.metric}: threshold and fallback must be finite")
        if not (math.isfinite(commit) and commit > 0):
            raise EscapestatError(f"{self.metric}: commit_steps must be > 0; got "
                                  f"{self.commit_steps!r}")
        if self.sign * fallback > self.sign * threshold:
            side = "above" if self.direction == "higher" else "below"
            raise EscapestatError(
                f"{self.metric}: fallback {fallback:g} is {side} the threshold {threshold:g}; "
                f"with direction {self.direction!r} it must be on the other side (or equal)")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "commit_steps", commit)

    @property
    def sign(self) -> int:
        return 1 if self.direction == "higher" else -1

    def crossed(self, value: float) -> bool:
        return self.sign * value >= self.sign * self.threshold

    def fell_back(self, value: float) -> bool:
        assert self.fallback is not None  # __post_init__ sets it (the threshold by default)
        return self.sign * value < self.sign * self.fallback


class _Commitment:
    """One metric's pending crossing; ``check`` mirrors ``detector.EscapeDetector.check``."""

    def __init__(self, criterion: Criterion):
        self.criterion = criterion
        self.pending: int | None = None  # the step of the crossing awaiting commitment
        self.time: int | None = None  # the committed crossing's step

    def check(self, step: int, value: float) -> bool:
        """True when the crossing commits at this evaluation (its time is ``self.time``)."""
        c = self.criterion
        if self.pending is None and c.crossed(value):
            self.pending = step
        if c.fell_back(value):
            self.pending = None
        if self.pending is not None and step - self.pending >= c.commit_steps:
            self.time = self.pending
            return True
        return False
