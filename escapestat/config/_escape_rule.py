"""The commitment rule of an escape, as values (the detector applies it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EscapeRule:
    """Thresholds of the commitment rule (fractions of the way to the learned state)."""

    threshold: float = 0.5
    fallback: float = 0.25
    commit_steps: int = 200
