"""What every grokking network reports per replica: whether its parameters are finite, and
its accuracy on a split (evaluated a chunk of pairs at a time)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def finite_replicas(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """[R] bool: every parameter [R, ...] of the replica is finite."""
    first = params[0]
    ok = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    for p in params:
        ok &= torch.isfinite(p).reshape(first.shape[0], -1).all(1)
    return ok


@torch.no_grad()
def chunked_accuracy(logits: Callable[[torch.Tensor], torch.Tensor], pairs: torch.Tensor,
                     labels: torch.Tensor, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-replica fraction [R] of ``pairs`` [R, N, 2] whose argmax of ``logits(pairs)``
    [R, n, classes] is ``labels`` [R, N], ``chunk`` pairs per replica at a time."""
    right = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
    for start in range(0, labels.shape[1], chunk):
        guess = logits(pairs[:, start:start + chunk]).argmax(-1)
        right += (guess == labels[:, start:start + chunk]).sum(1)
    return right.to(dtype) / labels.shape[1]
