"""A scripted replica model with known escape and divergence hazards (no training).

Each replica draws an escape time ~ Exp(escape_rate) and a divergence time
~ Exp(divergence_rate) at build; its order parameter jumps to 1 at the escape time and
its state turns non-finite at the divergence time, whichever comes first. With known
rates, the engine's bookkeeping (censoring, competing risks, the budget rule) can be
checked against truth.
"""

from __future__ import annotations

import torch

from escapestat.models.base import Hyper, ReplicaModel


class ScriptedEscapes(ReplicaModel):
    """Implements ``ReplicaModel``; times in steps, drawn from the chunk's generator."""

    def __init__(self, replicas: int, escape_rate: float, divergence_rate: float,
                 generator: torch.Generator, device: torch.device | str = "cpu"):
        def exp(rate: float) -> torch.Tensor:
            if rate <= 0:
                return torch.full((replicas,), float("inf"), dtype=torch.float64)
            u = torch.rand(replicas, generator=generator, dtype=torch.float64, device=device)
            return -torch.log1p(-u) / rate

        self.escape_at, self.diverge_at = exp(escape_rate), exp(divergence_rate)
        # Competing risks: whichever comes first; an escaped replica stays finite.
        self.diverge_at[self.escape_at < self.diverge_at] = float("inf")
        self.escape_at[torch.isinf(self.escape_at) | (self.diverge_at < self.escape_at)] = \
            float("inf")
        self.t = 0
        self.steps_taken = torch.zeros(replicas, dtype=torch.long)

    @property
    def replicas(self) -> int:
        return int(self.escape_at.numel())

    def step(self, t: int, hyper: Hyper) -> None:
        assert t == self.t, "the engine must pass consecutive step indices"
        assert hyper.lr.shape == (self.replicas,)
        self.t += 1
        self.steps_taken += 1

    def order_parameter(self) -> torch.Tensor:
        return (self.escape_at <= self.t).to(torch.float64)

    def finite(self) -> torch.Tensor:
        return self.diverge_at > self.t

    def keep(self, idx: torch.Tensor) -> None:
        self.escape_at, self.diverge_at = self.escape_at[idx], self.diverge_at[idx]
        self.steps_taken = self.steps_taken[idx]
