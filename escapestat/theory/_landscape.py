"""The one-mode landscape of a deep linear net under L2: critical points, spinodal, barrier.

With balanced, aligned layers each teacher mode of strength s reduces to a scalar layer
amplitude a, end-to-end strength w = a^L, and loss (whitened inputs)

    ℓ(a) = ½ (s − a^L)² + (β L / 2) a².

Non-zero stationary points solve g(a) = a^{L−2} (s − a^L) = β. For L ≥ 3 zero is always a
local minimum; the learned state exists below the spinodal β_sp = max g, and has the same
loss as zero at β_c. Everything here is computed from these formulas, nothing is typed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

from escapestat.errors import EscapestatError

_XTOL = 1e-14


def _check(depth: int, strength: float, beta: float | None = None) -> None:
    if int(depth) != depth or depth < 2:
        raise EscapestatError(f"depth must be an integer ≥ 2, got {depth}")
    if not np.isfinite(strength) or strength <= 0:
        raise EscapestatError(f"strength must be positive, got {strength}")
    if beta is not None and (not np.isfinite(beta) or beta < 0):
        raise EscapestatError(f"beta (L2 strength) must be ≥ 0, got {beta}")


def mode_loss(a, depth: int, strength: float, beta: float):
    """ℓ(a) = ½ (s − a^L)² + (β L / 2) a² for layer amplitude a (array-friendly)."""
    a = np.asarray(a, dtype=float)
    return 0.5 * (strength - a**depth) ** 2 + 0.5 * beta * depth * a**2


def _g(a: float, depth: int, strength: float) -> float:
    return a ** (depth - 2) * (strength - a**depth)


def spinodal_amplitude(depth: int, strength: float) -> float:
    """The amplitude a* maximising g: a*^L = s (L − 2) / (2L − 2) (zero for L = 2)."""
    _check(depth, strength)
    return (strength * (depth - 2) / (2 * depth - 2)) ** (1.0 / depth)


def spinodal(depth: int, strength: float) -> float:
    """β_sp = max_a a^{L−2} (s − a^L): above it only the zero state exists (s for L = 2)."""
    a_star = spinodal_amplitude(depth, strength)
    return float(_g(a_star, depth, strength)) if depth > 2 else float(strength)


def _root(f, lo: float, hi: float, depth: int, strength: float) -> float:
    """Brent's root of f on [lo, hi]; a bracket lost to overflow is an error naming the
    strength (strengths = [1e300, 1] overflowed the mode loss)."""
    try:
        return optimize.brentq(f, lo, hi, xtol=_XTOL)
    except (ValueError, RuntimeError, OverflowError, ZeroDivisionError):
        raise EscapestatError(
            f"strength {strength:g} at depth {depth}: the mode's stationary points cannot be "
            f"located in floating point; give [model] strengths of order 1 (the teacher's "
            f"scale sets only the units)") from None


def stationary_points(
    depth: int, strength: float, beta: float
) -> tuple[float | None, float | None]:
    """Layer amplitudes (saddle, learned) of the non-zero stationary points, None where absent.

    For L = 2 there is no saddle and the learned amplitude is √(s − β) below β = s.
    """
    _check(depth, strength, beta)
    top = strength ** (1.0 / depth)
    if depth == 2:
        return None, (float(np.sqrt(strength - beta)) if beta < strength else None)
    if beta == 0:
        return 0.0, top
    a_star = spinodal_amplitude(depth, strength)
    peak = _g(a_star, depth, strength)
    if beta >= peak:
        return None, None

    def f(a: float) -> float:
        return _g(a, depth, strength) - beta

    saddle = _root(f, 0.0, a_star, depth, strength)
    learned = _root(f, a_star, top, depth, strength)
    return float(saddle), float(learned)


def barrier(depth: int, strength: float, beta: float) -> float | None:
    """ΔE = ℓ(a_saddle) − ℓ(0): the barrier out of the zero state; None where zero is no trap."""
    saddle, _ = stationary_points(depth, strength, beta)
    if depth == 2 or saddle is None:
        return None
    return float(mode_loss(saddle, depth, strength, beta) - mode_loss(0.0, depth, strength, beta))


def critical_beta(depth: int, strength: float) -> float:
    """β_c: the L2 strength at which learned and zero states have equal loss (s for L = 2)."""
    _check(depth, strength)
    if depth == 2:
        return float(strength)
    zero_loss = 0.5 * strength**2

    def gap(beta: float) -> float:
        _, learned = stationary_points(depth, strength, beta)
        return float(mode_loss(learned, depth, strength, beta)) - zero_loss

    beta_sp = spinodal(depth, strength)
    # gap < 0 at β → 0 (learned loss → 0) and > 0 at the spinodal (learned is the inflection).
    return float(_root(gap, 1e-12 * beta_sp, beta_sp * (1 - 1e-12), depth, strength))


@dataclass(frozen=True)
class ModeLandscape:
    """One mode's landscape at one β; ``saddle`` and ``learned`` are end-to-end strengths a^L."""

    depth: int
    strength: float
    beta: float
    beta_c: float
    beta_sp: float
    barrier: float | None
    saddle: float | None
    learned: float | None
    transition: str

    @property
    def phase(self) -> str:
        """Which state is stable: "zero metastable" (a trap), "learned metastable", or only one.

        Depth 2 has a continuous transition: zero is never a trap (learned only below β = s).
        """
        if self.learned is None:
            return "zero only"
        if self.depth == 2:
            return "learned only"
        return "zero metastable" if self.beta < self.beta_c else "learned metastable"

    def as_dict(self) -> dict:
        """The ``escapestat theory --json`` contract."""
        return {
            "depth": self.depth,
            "strength": self.strength,
            "beta": self.beta,
            "beta_c": self.beta_c,
            "beta_sp": self.beta_sp,
            "barrier": self.barrier,
            "saddle": self.saddle,
            "learned": self.learned,
            "transition": self.transition,
            "phase": self.phase,
        }


def landscape(depth: int, strength: float, beta: float) -> ModeLandscape:
    """β_c, β_sp, barrier and stationary strengths of one mode at L2 strength β."""
    _check(depth, strength, beta)
    saddle, learned = stationary_points(depth, strength, beta)
    return ModeLandscape(
        depth=int(depth),
        strength=float(strength),
        beta=float(beta),
        beta_c=critical_beta(depth, strength),
        beta_sp=spinodal(depth, strength),
        barrier=barrier(depth, strength, beta),
        saddle=None if saddle is None else saddle**depth,
        learned=None if learned is None else learned**depth,
        transition="continuous" if depth == 2 else "first-order",
    )


def phase_diagram(depth: int, strengths, betas) -> pd.DataFrame:
    """One row per (strength, β): the landscape and which state is stable or metastable."""
    rows = []
    for s in strengths:
        for b in betas:
            rows.append(landscape(depth, float(s), float(b)).as_dict())
    return pd.DataFrame(rows)
