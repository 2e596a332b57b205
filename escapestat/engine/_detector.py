"""Escape detection for [R] order parameters: crossing, commitment, fall-back, budget, divergence.

Model-agnostic and free of training: the engine (and a user's own loop) feeds it each
replica's order parameter q (0 in the trap, 1 at the learned state) and a finite flag at
check steps t. The rules:

- a replica *crosses* at the first check with q ≥ ``threshold``; the crossing is
  *pending* until it has held for ``commit_steps`` (then it is an **escape at the
  crossing step**) or q falls back below ``fallback`` (then the crossing is forgotten
  and a later crossing starts afresh);
- at the budget ``max_steps`` a replica with no pending crossing is **censored** there;
  one with a pending crossing keeps running (at most ``commit_steps`` past the budget)
  until it commits (an escape at its crossing step, which is ≤ the budget) or falls
  back (censored at the budget) — so no escape is counted that did not commit, and no
  committed one is lost;
- a replica whose state or q is not finite is **diverged**: a competing risk, censored
  at the step it diverged (at most the budget); a crossing that already committed is
  an escape regardless of what follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from escapestat.config._escape_rule import EscapeRule  # noqa: F401  (re-exported)
from escapestat.vocab import CENSORED, DIVERGED, ESCAPED, UNTRAPPED  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Decisions:
    """What one check decided, per replica of the current active set ([R] tensors)."""

    escaped: torch.Tensor  # committed: an escape at ``time``
    censored: torch.Tensor  # reached the budget trapped (or fell back after it)
    diverged: torch.Tensor  # non-finite: censored at ``time``, status diverged
    time: torch.Tensor  # float64 durations for the decided replicas

    @property
    def done(self) -> torch.Tensor:
        return self.escaped | self.censored | self.diverged


class EscapeDetector:
    """Per-replica commitment state of the active set; ``check`` decides, ``keep`` shrinks."""

    def __init__(self, rule: EscapeRule, max_steps: int, replicas: int,
                 device: torch.device | str = "cpu"):
        self.rule, self.max_steps = rule, int(max_steps)
        self.pending = torch.full((replicas,), -1, dtype=torch.long, device=device)

    def untrapped(self, q: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """Replicas not in the trap at the start: q not below the fall-back level, or not finite."""
        return ~(q < self.rule.fallback) | ~finite | ~torch.isfinite(q)

    def any_pending(self) -> bool:
        return bool((self.pending >= 0).any())  # host sync

    def check(self, step: int, q: torch.Tensor, finite: torch.Tensor) -> Decisions:
        """Apply the rules at check step ``step`` to order parameters ``q`` [R]."""
        rule = self.rule
        ok = finite & torch.isfinite(q)
        crossing = (self.pending < 0) & ok & (q >= rule.threshold)
        pending = torch.where(crossing, torch.full_like(self.pending, step), self.pending)
        pending = torch.where(ok & (q < rule.fallback), torch.full_like(pending, -1), pending)
        escaped = ok & (pending >= 0) & (step - pending >= rule.commit_steps)
        diverged = ~ok
        over = step >= self.max_steps
        censored = ok & ~escaped & (pending < 0) & over
        self.pending = pending
        budget = float(self.max_steps)
        time = torch.full(q.shape, min(float(step), budget), dtype=torch.float64,
                          device=q.device)
        time = torch.where(escaped, pending.to(torch.float64), time)
        return Decisions(escaped, censored, diverged, time)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the replicas at positions ``idx`` (in that order)."""
        self.pending = self.pending[idx]
