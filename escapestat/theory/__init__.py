"""The landscape of one teacher mode of a deep linear net: stationary points, barriers,
critical L2 strengths."""

from __future__ import annotations

from ._landscape import (  # noqa: F401
    ModeLandscape,
    barrier,
    critical_beta,
    landscape,
    mode_loss,
    phase_diagram,
    spinodal,
    spinodal_amplitude,
    stationary_points,
)

__all__ = [
    "mode_loss",
    "spinodal_amplitude",
    "spinodal",
    "stationary_points",
    "barrier",
    "critical_beta",
    "ModeLandscape",
    "landscape",
    "phase_diagram",
]
