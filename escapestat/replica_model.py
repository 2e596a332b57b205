"""The replica-model protocol: what the trial engine needs from any batched ensemble.

A model holds R replicas (the leading tensor dimension), already trapped when built. The
engine evaluates every schedule at the top of each step and hands the per-replica values
to ``step``; it reads the order parameter and the finite flags at check steps and keeps
the replicas that are still running. Deep linear nets implement it now
(``linear_model.DeepLinearTrial``); nonlinear ensembles implement the same five members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Hyper:
    """Per-replica hyperparameters at one step, each an [R] tensor (batch size: one int)."""

    lr: torch.Tensor
    weight_decay: torch.Tensor
    temperature: torch.Tensor | None = None  # Langevin T; None for SGD
    batch_size: int | None = None  # minibatch size for this step; None: full data


@runtime_checkable
class ReplicaModel(Protocol):
    """R replicas in one batched model; ``keep`` shrinks every per-replica state in place."""

    @property
    def replicas(self) -> int: ...

    def step(self, t: int, hyper: Hyper) -> None:
        """Take one training step (step index t, counted from the switch into the run)."""

    def order_parameter(self) -> torch.Tensor:
        """[R] escape progress: 0 in the trap, 1 at the learned state."""

    def finite(self) -> torch.Tensor:
        """[R] bool: the replica's state is finite and within the divergence limit."""

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the replicas at positions ``idx`` (in that order)."""
