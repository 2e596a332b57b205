"""Tensor ops over the replica axis R: the replica-last layout whose matmuls run as a few
vector ops over R (small nets on CPU). Per-replica scalars broadcast by ``_broadcast``."""

from __future__ import annotations

import torch

from escapestat.models._broadcast import Scalar  # noqa: F401 (re-exported)


def _replica_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` [R, a, b] with the R entries of each (a, b) adjacent in memory (a view if so)."""
    if t.permute(1, 2, 0).is_contiguous():
        return t
    return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def _vector_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for [R, m, k] @ [R, k, n] as k vector ops over R (replica-last in and out)."""
    at, bt = a.permute(1, 2, 0), b.permute(1, 2, 0)  # [m, k, R], [k, n, R]
    out = at[:, 0].unsqueeze(1) * bt[0]  # [m, 1, R] * [n, R] → [m, n, R]
    for j in range(1, at.shape[1]):
        out.addcmul_(at[:, j].unsqueeze(1), bt[j])
    return out.permute(2, 0, 1)
