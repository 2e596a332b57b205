"""AdamW and SGD for R replicas at once, with per-replica lr and weight decay.

Parameters are a list of tensors [R, ...] (replica first), updated in place; ``step``
takes their gradients (a list alike) and the step's lr and weight decay as [R] tensors
(or floats). Each replica's update is exactly torch.optim's for that replica alone
(up to rounding); the step count is shared, since all replicas step together.

The optimizer state sits in flat buffers (``pack``: one parameter's chunk after
another). On the CPU, AdamW's whole update (decay, moments, step) is one pass of a C
kernel (``native.py``) over parameters, gradients and moments, with each replica's lr
and decay. Elsewhere, or without the kernels, the moment update is one pass of torch's
fused AdamW kernel over the whole buffer (a few whole-buffer ops where that kernel is
missing) and the per-replica scalings run once per parameter; gradients that are
consecutive chunks of one buffer (a model that ``pack``s its gradient buffers) are read
in place, others are concatenated once per step.

``decay_mask`` flags which parameters get weight decay (default: all of them, as
``torch.optim.AdamW(model.parameters(), weight_decay=…)`` does, and as the grokking
literature — Power et al., Nanda et al. — trains).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from escapestat.errors import EscapestatError
from escapestat.models import _native as native
from escapestat.models._broadcast import per_replica, replica_vector


def pack(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` laid out one after another in one new buffer (``flat_view``).

    The copies are plain tensors on that buffer's storage (not autograd views of it), so
    ``keep_packed_`` can move them to a smaller buffer and free this one.
    """
    first = tensors[0]
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=first.dtype, device=first.device)
    out, offset = [], 0
    for t in tensors:
        chunk = torch.empty(0, dtype=first.dtype, device=first.device)
        chunk.set_(flat.untyped_storage(), offset, t.shape, ())  # no strides: contiguous
        out.append(chunk.copy_(t))
        offset += t.numel()
    return out


def flat_view(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One 1-D view over ``tensors`` if they are consecutive contiguous chunks of one storage."""
    first = tensors[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (not t.is_contiguous() or t.dtype != first.dtype
                or t.untyped_storage().data_ptr() != storage or t.storage_offset() != offset):
            return None
        offset += t.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


def keep_packed_(tensors: Sequence[torch.Tensor], idx: torch.Tensor) -> None:
    """Keep rows ``idx`` of each tensor, in place: same tensor objects, a new packed buffer."""
    for t, kept in zip(tensors, pack([t[idx] for t in tensors]), strict=True):
        t.set_(kept.untyped_storage(), kept.storage_offset(), kept.shape, kept.stride())


def _packed_view(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``flat_view`` of tensors that ``pack`` laid out (one buffer, so never None)."""
    flat = flat_view(tensors)
    assert flat is not None  # pack's chunks are consecutive and contiguous
    return flat


class _Fused:
    """Flat state buffers shaped like ``params``, and the flat-gradient plumbing."""

    def __init__(self, params: Sequence[torch.Tensor], decay_mask: Sequence[bool] | None,
                 buffers: int):
        self.params = list(params)
        if not self.params:
            raise EscapestatError("an optimizer needs at least one parameter tensor")
        self.decay_mask = [True] * len(self.params) if decay_mask is None else list(decay_mask)
        if len(self.decay_mask) != len(self.params):
            raise EscapestatError(f"decay_mask has {len(self.decay_mask)} entries for "
                                  f"{len(self.params)} parameters")
        self.steps = 0
        self._gathered: torch.Tensor | None = None
        self._state = [pack([torch.zeros_like(p) for p in self.params]) for _ in range(buffers)]

    def _flat(self, k: int) -> torch.Tensor:
        return _packed_view(self._state[k])

    def _flat_grads(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(grads) != len(self.params):
            raise EscapestatError(f"{len(grads)} gradients for {len(self.params)} parameters")
        flat = flat_view(grads)
        if flat is not None:
            return flat
        # Gradients in separate tensors (autograd's) are gathered into one buffer kept from
        # step to step: a fresh one of tens of MB is fresh pages, and their faults cost more
        # than the copy (measured: 8 of 13 ms per step, transformer at R 64).
        size = sum(g.numel() for g in grads)
        if self._gathered is None or self._gathered.numel() != size:
            self._gathered = grads[0].new_empty(size)
        return torch.cat([g.reshape(-1) for g in grads], out=self._gathered)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the state of the replicas at ``idx`` (1-D integers, in that order).

        The parameters belong to the model: its ``keep`` shrinks the same tensor objects
        in place (``keep_packed_``), so this optimizer sees them shrunk too.
        """
        idx = idx.to(self.params[0].device)
        for buffers in self._state:
            keep_packed_(buffers, idx)


class AdamW(_Fused):
    """Per replica, torch.optim.AdamW (no amsgrad):

    .. math::

        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,
        θ ← θ (1 − η λ) − η (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

    with η (lr) and λ (weight decay) per replica, and the decay only on parameters
    flagged in ``decay_mask``. ``betas`` defaults to (0.9, 0.98), the grokking
    literature's choice (torch's default β₂ is 0.999).
    """

    def __init__(self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, decay_mask: Sequence[bool] | None = None):
        super().__init__(params, decay_mask, buffers=2)  # m, v
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self._fused = hasattr(torch, "_fused_adamw_")
        self._count = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        self._direction: list[torch.Tensor] | None = None  # the torch route's update
        #: "native" (the C kernel) or "torch"; the kernel wherever it can run.
        self.backend = "native" if native.usable(self.params[0]) else "torch"

    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor | float,
             weight_decay: torch.Tensor | float) -> None:
        if len(grads) != len(self.params):
            raise EscapestatError(f"{len(grads)} gradients for {len(self.params)} parameters")
        self.steps += 1
        first = self.params[0]
        if self.backend == "native":
            exp_avg, exp_avg_sq = self._state
            native.required().adamw(
                self.params, [g.contiguous() for g in grads], exp_avg, exp_avg_sq,
                replica_vector(lr, first), replica_vector(weight_decay, first),
                self.decay_mask, self.betas, self.eps, self.steps)
            return
        g = self._flat_grads(grads)
        if self._direction is None or self._direction[0].shape != first.shape:
            self._direction = pack([torch.zeros_like(p) for p in self.params])
        self._minus_direction(g, self._flat(0), self._flat(1), _packed_view(self._direction))
        lr = torch.as_tensor(lr, dtype=first.dtype, device=first.device)
        shrink = 1 - lr * torch.as_tensor(weight_decay, dtype=first.dtype, device=first.device)
        for p, minus, decay in zip(self.params, self._direction, self.decay_mask, strict=True):
            if decay:
                p.mul_(per_replica(shrink, p))
            p.addcmul_(per_replica(lr, p), minus)

    def _minus_direction(self, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                         u: torch.Tensor) -> None:
        """Update the moments m, v with g and set u ← −m̂ / (√v̂ + ε), all flat."""
        b1, b2 = self.betas
        if self._fused:
            # torch's own fused AdamW kernel (one pass), run with lr 1 and decay 1 on u as
            # the "parameter": u ← u (1 − 1·1) − m̂ / (√v̂ + ε), whatever finite u held
            # (last step's u is non-finite only where m or v already is).
            self._count.fill_(self.steps)
            try:
                torch._fused_adamw_([u], [g], [m], [v], [], [self._count], lr=1.0, beta1=b1,
                                    beta2=b2, weight_decay=1.0, eps=self.eps, amsgrad=False,
                                    maximize=False)
                return
            except (RuntimeError, NotImplementedError):  # no kernel for this device or dtype
                self._fused = False
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        root2 = math.sqrt(1 - b2**self.steps)
        torch.sqrt(v, out=u).div_(root2).add_(self.eps)
        torch.div(m, u, out=u).mul_(-1 / (1 - b1**self.steps))


class Adam(AdamW):
    """Per replica, torch.optim.Adam (no amsgrad) with coupled L2, as Grokfast's baseline:

    .. math::

        g ← g + λ θ,   m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,
        θ ← θ − η (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

    λ only on parameters flagged in ``decay_mask``; the torch route (no C kernel).
    """

    def __init__(self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, decay_mask: Sequence[bool] | None = None):
        super().__init__(params, betas, eps, decay_mask)
        self.backend = "torch"

    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor | float,
             weight_decay: torch.Tensor | float) -> None:
        if len(grads) != len(self.params):
            raise EscapestatError(f"{len(grads)} gradients for {len(self.params)} parameters")
        self.steps += 1
        first = self.params[0]
        grads = [g + per_replica(weight_decay, p) * p if decay else g
                 for g, p, decay in zip(grads, self.params, self.decay_mask, strict=True)]
        if self._direction is None or self._direction[0].shape != first.shape:
            self._direction = pack([torch.zeros_like(p) for p in self.params])
        self._minus_direction(self._flat_grads(grads), self._flat(0), self._flat(1),
                              _packed_view(self._direction))
        for p, minus in zip(self.params, self._direction, strict=True):
            p.addcmul_(per_replica(lr, p), minus)


class SGD(_Fused):
    """Per replica, torch.optim.SGD (no dampening, no Nesterov):

    .. math::

        d = g + λ θ,   b ← μ b + d  (b = d at the first step),   θ ← θ − η b

    with η (lr) and λ (weight decay, an L2 term in the gradient) per replica, λ only on
    parameters flagged in ``decay_mask``; μ = 0 is plain SGD.
    """

    def __init__(self, params: Sequence[torch.Tensor], momentum: float = 0.0,
                 decay_mask: Sequence[bool] | None = None):
        super().__init__(params, decay_mask, buffers=1)
        self.momentum = float(momentum)

    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor | float,
             weight_decay: torch.Tensor | float) -> None:
        g = self._flat_grads(grads)
        buf = self._flat(0)
        if self.steps == 0 or self.momentum == 0:
            buf.copy_(g)
        else:
            buf.mul_(self.momentum).add_(g)
        self.steps += 1
        for p, b, decay in zip(self.params, self._state[0], self.decay_mask, strict=True):
            if decay:
                b.addcmul_(per_replica(weight_decay, p), p)
            p.addcmul_(per_replica(lr, p), b, value=-1)
