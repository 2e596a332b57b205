"""The ensemble's two update rules, in place on every replica at once: SGD (its noise is the
minibatch's) and Langevin (Euler–Maruyama at temperature T)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from escapestat.models.deep_linear._replica_ops import Scalar, _per_replica

if TYPE_CHECKING:
    from escapestat.models.deep_linear._ensemble import DeepLinearEnsemble


def sgd_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar
) -> None:
    """W_l ← W_l − lr ∇W_l in place (the minibatch noise is in the moments)."""
    grads = model.gradients(sxx, syx, beta)
    step = _per_replica(lr, grads[0])
    for w, g in zip(model.weights, grads, strict=True):
        w.addcmul_(step, g, value=-1)


def langevin_step(
    model: DeepLinearEnsemble, sxx: torch.Tensor, syx: torch.Tensor, lr: Scalar, beta: Scalar,
    temperature: Scalar, generator: torch.Generator | None = None,
) -> None:
    """W_l ← W_l − lr ∇W_l + √(2 lr T) ξ: Euler–Maruyama, stationary law ∝ exp(−loss / T)."""
    grads = model.gradients(sxx, syx, beta)
    step = _per_replica(lr, grads[0])
    kick = torch.sqrt(2 * step * _per_replica(temperature, grads[0]))
    for w, g in zip(model.weights, grads, strict=True):
        xi = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        w.addcmul_(step, g, value=-1).addcmul_(kick, xi)
