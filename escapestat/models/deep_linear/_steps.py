"""The ensemble's two update rules on its moments: the gradients by hand, then the one
copy of SGD and Langevin (Euler–Maruyama) in ``models._integrators``, on every replica at
once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from escapestat.models._broadcast import replica_vector
from escapestat.models._integrators import langevin, sgd
from escapestat.models.base import Hyper
from escapestat.models.deep_linear._replica_ops import Scalar

if TYPE_CHECKING:
    from escapestat.models.deep_linear._ensemble import DeepLinearEnsemble


def sgd_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar
) -> None:
    """W_l ← W_l − lr ∇W_l in place (the minibatch noise is in the moments)."""
    grads = model.gradients(sxx, syx, beta)
    w = model.weights[0]
    sgd(model.weights, grads, Hyper(replica_vector(lr, w), replica_vector(beta, w)))


def langevin_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar,
    temperature: Scalar, generator: torch.Generator | None = None,
) -> None:
    """W_l ← W_l − lr ∇W_l + √(2 lr T) ξ: Euler–Maruyama, stationary law ∝ exp(−loss / T)."""
    grads = model.gradients(sxx, syx, beta)
    w = model.weights[0]
    langevin(model.weights, grads, Hyper(replica_vector(lr, w), replica_vector(beta, w),
                                         replica_vector(temperature, w)), generator)
