"""Hysteresis sweeps: β ramped up and down across replicas of a deep linear net."""

from __future__ import annotations

from ._hysteresis import (  # noqa: F401
    ModeLoop,
    find_loop,
    jump_betas,
    jump_quantiles,
    mode_loop,
    reference_strength,
)
from ._study import (  # noqa: F401
    SweepSpec,
    SweepStudy,
    load_sweep,
    parse_sweep,
    parse_sweep_study,
    sweep_from_dict,
)
from ._sweep import (  # noqa: F401
    BRANCHES,
    SWEEP_CSV,
    SWEEP_JSON,
    SWEEP_PNG,
    SweepResult,
    run_sweep,
)

__all__ = [
    "reference_strength",
    "jump_betas",
    "jump_quantiles",
    "find_loop",
    "ModeLoop",
    "mode_loop",
    "SweepSpec",
    "SweepStudy",
    "parse_sweep",
    "sweep_from_dict",
    "parse_sweep_study",
    "load_sweep",
    "BRANCHES",
    "SWEEP_CSV",
    "SWEEP_JSON",
    "SWEEP_PNG",
    "SweepResult",
    "run_sweep",
]
