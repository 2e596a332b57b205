"""Jumps and loops from a hysteresis sweep's recorded strengths: pure functions of arrays.

**Learned or not.** A replica's mode counts as learned while its strength is above
``threshold`` × w_ref, with w_ref the smallest learned strength there is
(``reference_strength``): the spinodal's w* = s (L − 2) / (2L − 2) for L ≥ 3, where the
learned branch runs from ≈ s down to w* and zero sits at 0; for L = 2, whose learned
strength s − β falls continuously to 0, the learned strength at the sweep's lowest β.
Half of s would not do: for L = 3 the learned branch passes s/2 exactly at β_c (in
general w(β_c) = s (L − 2)/(L − 1)), so the continuous decline would read as a jump.

**Jumps.** A jump is the crossing after which the replica stays on the other side for
the rest of the branch (a commitment rule: a transient crossing is not counted), at β
interpolated linearly between the two grid points around it (``jump_betas``). Per mode
the result is the median over replicas with the 10–90% spread, a replica that never
jumps counting as beyond the end of the sweep (``jump_quantiles``).

**Loops.** A loop is found when the median up jump lies more than one grid step above
the median down jump, or when the mode drops out and never relearns: an open loop
(``find_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from escapestat.theory._landscape import (
    barrier,
    critical_beta,
    spinodal,
    spinodal_amplitude,
    stationary_points,
)


def reference_strength(depth: int, strength: float, beta_low: float) -> float:
    """w_ref: the spinodal strength w* for L ≥ 3; the learned strength at beta_low for L = 2."""
    if depth == 2:
        learned = stationary_points(depth, strength, beta_low)[1]
        assert learned is not None  # the sweep's checks put beta_low below every spinodal
        return float(learned**2)
    return float(spinodal_amplitude(depth, strength) ** depth)


def jump_betas(betas, values, threshold: float, rising: bool) -> np.ndarray:
    """Where each replica settles across ``threshold``, interpolated between grid points.

    ``betas`` [P] in the order visited, ``values`` [P, R] the recorded strengths. Falling
    (``rising`` False, the up branch): the first point from which the value stays ≤
    threshold to the end of the branch; rising (the down branch): stays > threshold. The
    β is interpolated linearly between that point, i, and the one before, where

        β* = β[i−1] + (β[i] − β[i−1]) · (v[i−1] − θ) / (v[i−1] − v[i]).

    A replica already across at the first point gets that point's β; one that never
    settles across gets +inf (falling) or −inf (rising): beyond the end of the sweep.
    A replica with a NaN value (diverged) gets NaN.
    """
    b = np.asarray(betas, dtype=float)
    v = np.asarray(values, dtype=float)
    across = v > threshold if rising else v <= threshold
    # settled[i]: across at i and at every later point of the branch.
    settled = np.flip(np.logical_and.accumulate(np.flip(across, 0), axis=0), 0)
    out = np.full(v.shape[1], -np.inf if rising else np.inf)
    cols = np.flatnonzero(settled[-1])
    first = np.argmax(settled[:, cols], axis=0)
    out[cols[first == 0]] = b[0]
    c, i = cols[first > 0], first[first > 0]
    before, after = v[i - 1, c], v[i, c]
    out[c] = b[i - 1] + (b[i] - b[i - 1]) * (before - threshold) / (before - after)
    out[np.isnan(v).any(axis=0)] = np.nan
    return out


def jump_quantiles(jumps: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(median, q10, q90) over replicas of jump βs (NaN: left out); ±inf counts as beyond
    the sweep, so a quantile that lands there is None."""
    x = jumps[~np.isnan(jumps)]
    if x.size == 0:
        return None, None, None
    out = [float(np.quantile(x, q, method="inverted_cdf")) for q in (0.5, 0.1, 0.9)]
    med, q10, q90 = (v if np.isfinite(v) else None for v in out)
    return med, q10, q90


def find_loop(up: np.ndarray, down: np.ndarray, grid_step: float) -> tuple[float | None, bool]:
    """(width, loop) from per-replica up- and down-jump βs: a loop when the median up jump
    lies more than one grid step above the median down jump, or when the mode dropped out
    and did not relearn (an open loop: width None)."""
    u, d = jump_quantiles(up)[0], jump_quantiles(down)[0]
    if u is None:
        return None, False
    if d is None:
        return None, True
    return u - d, u - d > grid_step


@dataclass(frozen=True)
class ModeLoop:
    """One mode's hysteresis loop: theory's β_c and β_sp beside the measured jumps.

    Jumps are medians over replicas with their 10–90% spread; ``dropped`` and
    ``relearned`` are the fractions of replicas that jumped on each branch (of those
    that dropped, for ``relearned``). ``down_barrier_over_t`` is theory's barrier out of
    zero at the measured down jump over the Langevin temperature: the ΔE/T at which the
    noise relearned the mode within the dwell.
    """

    mode: int
    strength: float
    beta_c: float
    beta_sp: float
    reference: float
    threshold: float
    up_jump: float | None
    up_jump_q10: float | None
    up_jump_q90: float | None
    down_jump: float | None
    down_jump_q10: float | None
    down_jump_q90: float | None
    dropped: float
    relearned: float
    width: float | None
    loop: bool
    closed: bool
    down_barrier_over_t: float | None = None

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def mode_loop(mode: int, depth: int, strength: float, betas: np.ndarray, values: np.ndarray,
              *, beta_low: float, threshold: float, grid_step: float,
              temperature: float | None = None) -> ModeLoop:
    """One mode's loop from ``betas`` [2, P] (up, then down, in the order visited) and its
    recorded strengths ``values`` [2, P, R]."""
    ref = reference_strength(depth, strength, beta_low)
    theta = threshold * ref
    up = jump_betas(betas[0], values[0], theta, rising=False)
    down = jump_betas(betas[1], values[1], theta, rising=True)
    down = np.where(np.isposinf(up), np.nan, down)  # never dropped: cannot relearn
    width, loop = find_loop(up, down, grid_step)
    (u, u10, u90), (d, d10, d90) = jump_quantiles(up), jump_quantiles(down)
    gap_over_t = None
    if depth > 2 and temperature and d is not None:
        gap = barrier(depth, strength, d)
        gap_over_t = None if gap is None else gap / temperature
    return ModeLoop(
        mode=mode, strength=float(strength), beta_c=critical_beta(depth, strength),
        beta_sp=spinodal(depth, strength), reference=ref, threshold=theta,
        up_jump=u, up_jump_q10=u10, up_jump_q90=u90,
        down_jump=d, down_jump_q10=d10, down_jump_q90=d90,
        dropped=_fraction(up), relearned=_fraction(down),
        width=width, loop=loop, closed=d is not None,
        down_barrier_over_t=gap_over_t,
    )


def _fraction(jumps: np.ndarray) -> float:
    """The fraction of replicas (NaN: left out) that jumped within the sweep."""
    x = jumps[~np.isnan(jumps)]
    return float(np.isfinite(x).mean()) if x.size else 0.0
