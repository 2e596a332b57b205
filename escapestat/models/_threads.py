"""CPU threads: one for workloads of many tiny batched ops; the fastest count on a busy machine.

A deep linear net of the paper's size takes microseconds of arithmetic per step; with two
intra-op threads each op pays a fork/join, and on a shared 2-core CPU a waiting thread
stalls the step. Measured here (paper-sgd-trap, 900 replicas of 2 → 10 → 10 → 2, 4000
steps, load ≈ 3): 36 s on one thread against 60 s on two; the sweep's paper net took
0.9–1.4 ms per step on one thread against 26–50 ms on two under load ≈ 5.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
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


class ThreadGovernor:
    """Runs a chunk's steps on the CPU thread count that runs them fastest right now.

    Every ``every`` seconds it times a few steps on each candidate count (all threads, half,
    one) and keeps the fastest. Why: on a shared machine each of torch's and the C kernels'
    parallel regions waits for its slowest thread, and a thread that shares its core with
    another process runs at half speed in scheduler slices of milliseconds; one thread on
    the free core is then faster than two. The engine's results do not depend on the
    thread count (``tests/engine/test_threads.py`` compares each model kind's tables at one
    and two threads), so a switch changes only the wall time.
    """

    def __init__(self, threads: int, every: float = 30.0, probe_seconds: float = 0.1,
                 warmup_steps: int = 2, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.candidates = sorted({threads, max(1, threads // 2), 1}, reverse=True)
        self.threads = threads
        self.every, self.probe_seconds = every, probe_seconds
        self._clock, self._set = clock, set_threads
        self._warmup = warmup_steps
        self._probe: list[tuple[int, float, int]] | None = None  # (threads, seconds, steps)
        self._next_probe = -math.inf
        #: (thread count, seconds per step) of each candidate at the last probe
        self.last_probe: list[tuple[int, float]] = []

    def step(self, fn: Callable[[], None]) -> None:
        """Run one step ``fn()`` on the current thread count, probing when it is due."""
        if len(self.candidates) == 1 or self._warmup:
            self._warmup = max(0, self._warmup - 1)
            fn()
            return
        if self._probe is None and self._clock() >= self._next_probe:
            self._probe = []
            self._use(self.candidates[0])
        if self._probe is None:
            fn()
            return
        start = self._clock()
        fn()
        self._record(self._clock() - start)

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self._set(threads)
            self.threads = threads

    def _record(self, took: float) -> None:
        assert self._probe is not None
        if self._probe and self._probe[-1][0] == self.threads:
            threads, seconds, steps = self._probe[-1]
            self._probe[-1] = (threads, seconds + took, steps + 1)
        else:
            self._probe.append((self.threads, took, 1))
        threads, seconds, steps = self._probe[-1]
        if seconds < self.probe_seconds:
            return
        done = len(self._probe)
        if done < len(self.candidates):
            self._use(self.candidates[done])
            return
        self.last_probe = [(t, s / n) for t, s, n in self._probe]
        self._use(min(self.last_probe, key=lambda pair: pair[1])[0])
        self._probe = None
        self._next_probe = self._clock() + self.every
