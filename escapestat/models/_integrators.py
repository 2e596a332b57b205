"""Update rules over per-replica parameter lists: plain SGD and Langevin (Euler–Maruyama).

Each takes the parameters and their gradients as lists of [R, ...] tensors (the model
supplies only gradients, with its L2 term already in them) and the step's per-replica
``Hyper`` values, and updates the parameters in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from escapestat.models._broadcast import per_replica
from escapestat.models.base import Hyper


def sgd(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], hyper: Hyper,
        generator: torch.Generator | None = None) -> None:
    """θ ← θ − lr ∇θ (the minibatch noise is in the gradients)."""
    for p, g in zip(params, grads, strict=True):
        p.addcmul_(per_replica(hyper.lr, p), g, value=-1)


def langevin(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], hyper: Hyper,
             generator: torch.Generator | None = None) -> None:
    """θ ← θ − lr ∇θ + √(2 lr T) ξ: stationary law ∝ exp(−loss / T) for small lr."""
    assert hyper.temperature is not None  # Langevin steps always carry T
    kick = torch.sqrt(2 * hyper.lr * hyper.temperature)
    for p, g in zip(params, grads, strict=True):
        xi = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device)
        p.addcmul_(per_replica(hyper.lr, p), g, value=-1).addcmul_(per_replica(kick, p), xi)


INTEGRATORS = {"sgd": sgd, "langevin": langevin}


def select_integrator(noise: str):
    """The update rule for a study's ``[dynamics] noise``, chosen once at build time."""
    return INTEGRATORS[noise]
