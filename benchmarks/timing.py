"""Shared timing for the benchmarks: interleaved blocks, median seconds per call.

Contenders are timed in turn (a, b, c, a, b, c, …) so that drift on a shared machine
hits all alike; CUDA is synchronised around each block.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

Contenders = dict[str, tuple[Callable[[], None], int]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(contenders: Contenders, repeats: int, device: torch.device,
            clock: Callable[[], float] = time.perf_counter,
            warmup_calls: int | None = None) -> dict[str, float]:
    """Median seconds per call of each (fn, calls per block) over ``repeats`` timed blocks.

    Before timing, each fn runs ``min(calls, warmup_calls)`` times (a whole block when
    ``warmup_calls`` is None) untimed.
    """
    for fn, calls in contenders.values():
        for _ in range(calls if warmup_calls is None else min(calls, warmup_calls)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (fn, calls) in contenders.items():
            sync(device)
            start = clock()
            for _ in range(calls):
                fn()
            sync(device)
            times[name].append((clock() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def pick_device(name: str, parser) -> torch.device:
    """``auto`` → CUDA when present, else the CPU; ``cuda`` without one is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    return torch.device(name)


def mark(ok: bool) -> str:
    """How a figure stands against its target, as the benchmarks print it."""
    return "met" if ok else "MISSED"
