"""CPU threads for workloads of many tiny batched ops.

A deep linear net of the paper's size takes microseconds of arithmetic per step; with two
intra-op threads each op pays a fork/join, and on a shared 2-core CPU a waiting thread
stalls the step. Measured here (paper-sgd-trap, 900 replicas of 2 → 10 → 10 → 2, 4000
steps, load ≈ 3): 36 s on one thread against 60 s on two; the sweep's paper net took
0.9–1.4 ms per step on one thread against 26–50 ms on two under load ≈ 5.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

#: Multiply-adds per step (replicas × Σ layer sizes) below which one thread is faster.
SMALL_WORK = 4_000_000


def small_work(replicas: int, widths: Sequence[int]) -> bool:
    """Whether one step of ``replicas`` deep linear nets is too small to share out."""
    return replicas * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) \
        < SMALL_WORK


@contextmanager
def cpu_threads(threads: int | None, device: torch.device | str) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads (None, or a non-CPU device: unchanged);
    the caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    change = threads if threads is not None and torch.device(device).type == "cpu" else None
    if change is not None:
        torch.set_num_threads(change)
    try:
        yield
    finally:
        if change is not None:
            torch.set_num_threads(before)
