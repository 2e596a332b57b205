"""Grokfast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by
Amplifying Slow Gradients"): add λ times a low-pass filtered gradient to the gradient.

They act on a list of per-replica gradients, one tensor [R, ...] per parameter, with
the replicas as the leading dimension; the filter state is per replica (replica r's
state only ever sees replica r's gradients) and ``keep(idx)`` keeps a subset of them.
The conventions follow the paper's reference code (the ``gradfilter_ema`` and
``gradfilter_ma`` functions of ironjr/grokfast):

- EMA: the average starts as the first gradient, so the first output is (1 + λ)·g;
- MA: the window holds the current gradient too, and gradients pass unchanged until
  the window is full (the reference's default ``warmup=True``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import overload

import torch

from escapestat.config._grad_filter import (
    KINDS,
    check_alpha,
    check_grad_filter,
    check_lamb,
    check_window,
)


def _positions(idx, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(idx, dtype=torch.long, device=device)


class EmaFilter:
    """Grokfast-EMA: h ← α·h + (1 − α)·g (h = g at the first call); returns g + λ·h.

    Parameters
    ----------
    alpha : float
        Momentum of the average, 0 ≤ α < 1 (the paper uses 0.98).
    lamb : float
        Amplification λ ≥ 0 of the slow component (the paper uses 2.0).
    """

    kind = "ema"

    def __init__(self, alpha: float, lamb: float):
        self.alpha = check_alpha(alpha)
        self.lamb = check_lamb(lamb)
        self.reset()

    def reset(self) -> None:
        """Forget the state (a fresh run)."""
        self._avg: list[torch.Tensor] | None = None
        self._out: list[torch.Tensor] | None = None

    def __call__(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The filtered gradients, in buffers of the filter's own (overwritten next call:
        fresh ones of megabytes each step cost more in page faults than the arithmetic)."""
        if self._avg is None:
            self._avg = [g.detach().clone() for g in grads]
        else:
            for h, g in zip(self._avg, grads, strict=True):
                h.lerp_(g, 1.0 - self.alpha)  # α·h + (1 − α)·g in one op
        if self._out is None:
            self._out = [torch.empty_like(h) for h in self._avg]
        for o, g, h in zip(self._out, grads, self._avg, strict=True):
            torch.add(g, h, alpha=self.lamb, out=o)
        return list(self._out)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the replicas at positions ``idx`` (1-D long tensor), in that order."""
        if self._avg is not None:
            self._avg = [h[_positions(idx, h.device)] for h in self._avg]
        self._out = None

    def describe(self) -> str:
        return json.dumps({"kind": self.kind, "alpha": self.alpha, "lamb": self.lamb},
                          separators=(",", ":"))


class MovingAverageFilter:
    """Grokfast-MA: returns g + λ·mean(last ``window`` gradients, g included), once
    ``window`` gradients have been seen; before that, g unchanged.

    State is a ring buffer [window, R, ...] per parameter and a running sum, updated in
    O(1) per step and recomputed from the buffer each time the ring wraps, so rounding
    errors cannot accumulate. Every replica is filtered at every call, so the warm-up
    count is shared; ``keep`` keeps it.

    Parameters
    ----------
    window : int
        Number of gradients averaged, ≥ 1 (the paper uses 100).
    lamb : float
        Amplification λ ≥ 0 of the slow component (the paper uses 5.0).
    """

    kind = "ma"

    def __init__(self, window: int, lamb: float):
        self.window = check_window(window)
        self.lamb = check_lamb(lamb)
        self.reset()

    def reset(self) -> None:
        """Forget the state (a fresh run)."""
        self._ring: list[torch.Tensor] | None = None
        self._sum: list[torch.Tensor] = []
        self._seen = 0

    def __call__(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._ring is None:
            self._ring = [g.new_zeros((self.window, *g.shape)) for g in grads]
            self._sum = [torch.zeros_like(g) for g in grads]
        slot = self._seen % self.window
        for ring, total, g in zip(self._ring, self._sum, grads, strict=True):
            total.sub_(ring[slot]).add_(g)  # the slot holds zeros until the ring is full
            ring[slot].copy_(g)
        self._seen += 1
        if self._seen % self.window == 0:  # wrapped: resum exactly, dropping rounding drift
            for ring, total in zip(self._ring, self._sum, strict=True):
                torch.sum(ring, dim=0, out=total)
        if self._seen < self.window:
            return list(grads)
        scale = self.lamb / self.window
        return [torch.add(g, s, alpha=scale) for g, s in zip(grads, self._sum, strict=True)]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the replicas at positions ``idx`` (1-D long tensor), in that order."""
        if self._ring is not None:
            self._ring = [r[:, _positions(idx, r.device)] for r in self._ring]
            self._sum = [s[_positions(idx, s.device)] for s in self._sum]

    def describe(self) -> str:
        return json.dumps({"kind": self.kind, "window": self.window, "lamb": self.lamb},
                          separators=(",", ":"))


GradFilter = EmaFilter | MovingAverageFilter
#: kind → (its filter, its keys in the order ``config`` checks them).
_KINDS: dict[str, tuple[type[GradFilter], Sequence[str]]] = {
    "ema": (EmaFilter, KINDS["ema"][1]), "ma": (MovingAverageFilter, KINDS["ma"][1])}


def build_grad_filter(spec: dict) -> GradFilter:
    """A fresh filter (it holds per-replica state) from a table ``config`` has checked."""
    return parse_grad_filter(spec, "[dynamics] grad_filter")


@overload
def parse_grad_filter(spec: dict, where: str) -> GradFilter: ...


@overload
def parse_grad_filter(spec: None, where: str) -> None: ...


def parse_grad_filter(spec: dict | None, where: str) -> GradFilter | None:
    """A fresh filter from ``{kind = "ema", alpha, lamb}`` or ``{kind = "ma", window,
    lamb}``; None for no filter. Errors are one line naming ``where`` and the key (the
    table is checked by ``config._grad_filter.check_grad_filter``)."""
    if spec is None:
        return None
    check_grad_filter(spec, where)
    cls, keys = _KINDS[spec["kind"]]
    return cls(*(spec[k] for k in keys))
