"""Schedules evaluated per step: one value per replica as an [R] tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from escapestat.config._schedules import Schedule


class ReplicaSchedules:
    """One schedule per replica, evaluated as an ``[R]`` tensor at each step.

    Each distinct schedule (equal values count as one) is evaluated once per call in
    Python and scattered to its replicas through a precomputed index; when every
    schedule is constant, ``at`` returns one cached tensor (never modify it in place).
    """

    def __init__(self, schedules: Sequence[Schedule], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.dtype, self.device = dtype, torch.device(device)
        self._set(tuple(schedules))

    def _set(self, schedules: tuple[Schedule, ...]) -> None:
        self.schedules = schedules
        position: dict[Schedule, int] = {}
        index = [position.setdefault(s, len(position)) for s in schedules]
        self._distinct = tuple(position)
        self._index = torch.tensor(index, dtype=torch.long, device=self.device)
        self.is_constant = all(s.is_constant for s in self._distinct)
        self._cached = self._evaluate(0) if self.is_constant else None

    def _evaluate(self, t: int) -> torch.Tensor:
        values = torch.tensor([s.value(t) for s in self._distinct], dtype=self.dtype)
        return values.to(self.device)[self._index]  # one small host→device copy

    def __len__(self) -> int:
        return len(self.schedules)

    def at(self, t: int) -> torch.Tensor:
        """Every replica's value at step t, shape [R]."""
        return self._cached if self._cached is not None else self._evaluate(t)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the replicas at positions ``idx`` (1-D long tensor), in that order."""
        # idx.tolist() is a host sync on GPU; keep() runs only when replicas leave.
        self._set(tuple(self.schedules[i] for i in torch.as_tensor(idx).tolist()))

    def labels(self) -> list[str]:
        """Per replica: ``"constant"`` or the schedule's JSON (for the survival table)."""
        return [s.label() for s in self.schedules]
