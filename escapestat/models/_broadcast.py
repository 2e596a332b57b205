"""Per-replica values (a float, or one value per replica) against [R, …] tensors: the one
broadcast rule every update and loss of the models uses."""

from __future__ import annotations

import torch

Scalar = float | torch.Tensor


def per_replica(values: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A float (0-d) or an [R] tensor shaped [R, 1, …], in ``like``'s dtype and device, to
    broadcast over ``like`` [R, …]."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return v if v.dim() == 0 else v.reshape((-1,) + (1,) * (like.dim() - 1))


def replica_vector(values: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A float or an [R] tensor as a contiguous [R] tensor of ``like``'s dtype and device
    (R = ``like.shape[0]``), for kernels that take one value per replica."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return v.expand(like.shape[0]).contiguous()
