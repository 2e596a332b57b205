"""A study's ladder expanded into conditions: the schedules (β or weight decay, lr,
temperature or batch size) one block of replicas runs at, in file order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from escapestat.config._model_spec import linear_trap
from escapestat.config._schedules import Constant, Schedule
from escapestat.config._sections import _plain
from escapestat.errors import EscapestatError

if TYPE_CHECKING:
    from escapestat.config._study import Study


@dataclass(frozen=True)
class Condition:
    """One point of the ladder: the schedules a block of replicas is run at.

    ``temperature`` is the Langevin T(t); for SGD it is None and the reported temperature
    is lr / batch_size. ``barrier`` is theory's ΔE(β) out of the trapped mode's zero
    state, for a constant β only.
    """

    beta: Schedule
    lr: Schedule
    temperature: Schedule | None
    batch_size: Schedule | None  # None for Langevin (full data)
    barrier: float | None
    seed_over_saddle: float | None = None  # seeded amplitude b₀ / a_saddle ([init])

    @property
    def reported_temperature(self) -> float:
        """T at the first step: Langevin T(0), or lr(0) / B(0) for SGD."""
        if self.temperature is not None:
            return self.temperature.value(0)
        assert self.batch_size is not None  # SGD: no T, a batch size
        return self.lr.value(0) / self.batch_size.value(0)

    @property
    def temperature_is_constant(self) -> bool:
        if self.temperature is not None:
            return self.temperature.is_constant
        assert self.batch_size is not None  # SGD: no T, a batch size
        return self.lr.is_constant and self.batch_size.is_constant

    def as_dict(self) -> dict:
        return _plain(self)


def conditions(study: Study) -> list[Condition]:
    """Expand the study's ladder into conditions (Cartesian product, in file order)."""
    from escapestat.theory._landscape import barrier, critical_beta

    m, y = study.model, study.dynamics
    if m.learns_task:  # weight decay in the β slot; no theory barrier
        return [Condition(wd, lr, None, b, None)
                for wd, lr, b in itertools.product(y.weight_decay, y.lr, y.batch_size)]
    trap = linear_trap(m)
    s = trap.strengths[study.trapped_mode]
    betas = y.beta or tuple(Constant(f * critical_beta(trap.depth, s))
                            for f in y.beta_over_beta_c)
    seeds = study.init.seed_over_saddle or (None,)
    out = []
    for beta, seed in itertools.product(betas, seeds):
        dE = barrier(trap.depth, s, beta.value(0)) if beta.is_constant else None
        if y.noise == "langevin":
            if y.temperature:
                temps = y.temperature
            elif dE is None or dE <= 0:
                raise EscapestatError(
                    f"[dynamics] barrier_over_temperature: at beta = {beta.describe()} the "
                    f"trapped mode (strength {s:g}) has no barrier; give temperature instead"
                )
            else:
                temps = tuple(Constant(dE / x) for x in y.barrier_over_temperature)
            for lr, t in itertools.product(y.lr, temps):
                out.append(Condition(beta, lr, t, None, dE, seed))
        else:
            for lr, b in itertools.product(y.lr, y.batch_size):
                out.append(Condition(beta, lr, None, b, dE, seed))
    return out
