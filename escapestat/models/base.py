"""The replica model: everything the trial engine uses, declared once.

A model holds R replicas (the leading tensor dimension), already trapped when built. The
engine evaluates every schedule at the top of each step and hands the per-replica values
to ``step``; at check steps it reads the order parameter and the finite flags, and keeps
the replicas that are still running (``keep``). Those five are required. The rest are
capabilities with defaults, so the engine never probes a model: milestones with their
commitment rules (a grokking model's fit), per-check curves, values measured at the
budget, values recorded at the switch into the run, whether the run has no noise at all
(full batch), the CPU threads a chunk should use, and whether denormals must be flushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Hyper:
    """Per-replica hyperparameters at one step, each an [R] tensor (batch size: one int)."""

    lr: torch.Tensor
    weight_decay: torch.Tensor
    temperature: torch.Tensor | None = None  # Langevin T; None for SGD
    batch_size: int | None = None  # minibatch size for this step; None: full data


def torch_dtype(study) -> torch.dtype:
    """The study's ``[run] dtype`` as a torch dtype."""
    return torch.float64 if study.run.item_bytes == 8 else torch.float32


class ReplicaModel:
    """R replicas in one batched model; ``keep`` shrinks every per-replica state in place.

    Subclasses are built as ``Model(study, conditions, generator, device, batch_size)``.
    """

    #: CPU runs flush denormals to zero while this model trains (saturated softmax).
    flush_denormals: ClassVar[bool] = False
    #: This model's CPU route is the C kernels (``native``): say so when they are missing.
    native_kernels: ClassVar[bool] = False
    #: Names of the per-check curves ``curve_values`` returns.
    curve_names: tuple[str, ...] = ()
    #: Milestones (name → ``detector.EscapeRule``) that ``milestones`` feeds.
    milestone_rules: dict[str, Any] = {}
    #: No noise of any kind: full-batch gradient descent at a constant batch size.
    full_batch: bool = False
    #: Per replica, values recorded at the switch into the run (before any leaves).
    switch_values: dict[str, Any] = {}

    @property
    def replicas(self) -> int:
        raise NotImplementedError

    def step(self, t: int, hyper: Hyper) -> None:
        """Take one training step (step index t, counted from the switch into the run)."""
        raise NotImplementedError

    def order_parameter(self) -> torch.Tensor:
        """[R] escape progress: 0 in the trap, 1 at the learned state."""
        raise NotImplementedError

    def finite(self) -> torch.Tensor:
        """[R] bool: the replica's state is finite and within the divergence limit."""
        raise NotImplementedError

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the replicas at positions ``idx`` (in that order)."""
        raise NotImplementedError

    def milestones(self) -> dict[str, torch.Tensor]:
        """[R] values of the milestones in ``milestone_rules``, at a check."""
        return {}

    def curve_values(self) -> dict[str, torch.Tensor]:
        """[R] values of the curves in ``curve_names``, at a check."""
        return {}

    def final_values(self) -> dict[str, torch.Tensor]:
        """[R] values measured at the budget when replicas are held to it (``hold``)."""
        return {}

    @classmethod
    def cpu_threads(cls, study, replicas: int) -> int | None:
        """CPU threads for a chunk of ``replicas`` (None: the process's setting)."""
        return None
