"""Sweep study files: the ``[sweep]`` table (a β staircase) beside a study's [model], [data],
[dynamics] and [run], validated with one error line that names the key.

The rest of the file is checked by ``study`` itself: β is the sweep's, so the study
checks see a placeholder β; keys that mean nothing in a sweep (a trapped mode, a β ladder,
a step budget, whole [init]/[escape]/[search] tables) are refused, not ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np

from escapestat.config._study import Study, read_toml, study_from_dict
from escapestat.errors import EscapestatError, did_you_mean
from escapestat.models.deep_linear.spec import DeepLinearSpec
from escapestat.theory._landscape import spinodal, stationary_points


@dataclass(frozen=True)
class SweepSpec:
    """The ``[sweep]`` table: a β staircase up from ``beta_low`` to ``beta_high`` on
    ``points`` evenly spaced values, then back down on the same values, ``steps_per_point``
    steps on each, after ``settle_steps`` at ``beta_low`` (default: one plateau).

    ``average_last``: the fraction of each plateau whose mean strength is recorded;
    ``threshold``: the learned/zero boundary as a fraction of w_ref
    (``hysteresis.reference_strength``); ``init_noise``: std of the Gaussian noise added
    to every weight of the learned start.
    """

    beta_low: float
    """The lowest β of the staircase (where the sweep starts and ends)."""
    beta_high: float
    """The highest β of the staircase."""
    points: int = 30
    """Evenly spaced β values, swept up and then down."""
    steps_per_point: int = 500
    """Training steps on each β plateau."""
    settle_steps: int | None = None
    """Steps at `beta_low` before the sweep (default: one plateau)."""
    average_last: float = 0.5
    """The fraction of each plateau whose mean strength is recorded."""
    threshold: float = 0.5
    """The learned/zero boundary, as a fraction of the reference strength w_ref."""
    init_noise: float = 1e-3
    """Standard deviation of the Gaussian noise on every weight of the learned start."""

    @property
    def grid(self) -> np.ndarray:
        """The up branch's β values; the down branch visits them in reverse."""
        return np.linspace(self.beta_low, self.beta_high, self.points)

    @property
    def grid_step(self) -> float:
        return (self.beta_high - self.beta_low) / (self.points - 1)

    @property
    def settle(self) -> int:
        return self.steps_per_point if self.settle_steps is None else self.settle_steps

    @property
    def total_steps(self) -> int:
        return self.settle + 2 * self.points * self.steps_per_point

    def plateaus(self) -> list[tuple[str | None, int, float, int]]:
        """The β staircase as (branch, point, β, steps): the settling plateau at beta_low
        (branch None), then the up branch, then the down branch on the same β values."""
        grid = [float(b) for b in self.grid]
        out: list[tuple[str | None, int, float, int]] = (
            [(None, 0, self.beta_low, self.settle)] if self.settle else [])
        for branch, betas in (("up", grid), ("down", grid[::-1])):
            out += [(branch, p, b, self.steps_per_point) for p, b in enumerate(betas)]
        return out


@dataclass(frozen=True)
class SweepStudy:
    """A sweep study file: ``[sweep]`` plus the study's [model], [data], [dynamics], [run]."""

    study: Study
    sweep: SweepSpec

    @property
    def noise(self) -> str:
        return self.study.dynamics.noise

    @property
    def lr(self) -> float:
        return self.study.dynamics.lr[0].value(0)

    @property
    def temperature(self) -> float | None:
        """Langevin T; None for SGD (whose reported T is lr / batch_size)."""
        y = self.study.dynamics
        return y.temperature[0].value(0) if y.noise == "langevin" else None

    @property
    def batch_size(self) -> int | None:
        y = self.study.dynamics
        return int(y.batch_size[0].value(0)) if y.batch_size else None


#: What a sweep study may hold; the rest of a trap study (a trap, an escape rule, a search)
#: means nothing here.
_SWEEP_TOP = {"name", "description", "sweep", "model", "data", "dynamics", "run"}
_NOT_HERE = {
    "model": {"trapped_mode": "a sweep follows every mode"},
    "dynamics": {"beta": "the sweep sets beta ([sweep] beta_low … beta_high)",
                 "beta_over_beta_c": "the sweep sets beta ([sweep] beta_low … beta_high)",
                 "barrier_over_temperature": "the barrier changes along the sweep; give "
                 "temperature"},
    "run": {"max_steps": "the sweep's length is settle_steps + 2 × points × steps_per_point",
            "chunk_replicas": "a sweep runs all replicas as one batch"},
}


_NO_MEANING = {"init", "escape", "search", "task", "optimizer"}
_INTEGERS = {"points", "steps_per_point", "settle_steps"}
_REQUIRED = ("beta_low", "beta_high")


def _value(key: str, v, source: str) -> float | int:
    """A [sweep] number: an integer for the step and point counts, finite either way."""
    if key in _INTEGERS and isinstance(v, float) and v.is_integer():
        v = int(v)
    if key in _INTEGERS and (isinstance(v, bool) or not isinstance(v, int)):
        raise EscapestatError(f"{source}: [sweep] {key} must be an integer, got {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise EscapestatError(f"{source}: [sweep] {key} must be a finite number, got {v!r}")
    return v if key in _INTEGERS else float(v)


def parse_sweep(raw, source: str = "study") -> SweepSpec:
    """The ``[sweep]`` table, validated: each error one line naming the key."""
    if not isinstance(raw, dict):
        raise EscapestatError(f"{source}: [sweep] must be a table")
    names = [f.name for f in fields(SweepSpec)]
    for key in raw:
        if key not in names:
            raise EscapestatError(
                f"{source}: unknown key {key!r} in [sweep]{did_you_mean(key, names)}")
    for key in _REQUIRED:
        if key not in raw:
            raise EscapestatError(f"{source}: [sweep] {key} is required")
    values: dict[str, Any] = {k: _value(k, v, source) for k, v in raw.items()}
    spec = SweepSpec(**values)

    def bad(key: str, why: str):
        raise EscapestatError(f"{source}: [sweep] {key} {why}")

    if spec.beta_low < 0:
        bad("beta_low", f"must be ≥ 0, got {spec.beta_low:g}")
    if spec.beta_high <= spec.beta_low:
        bad("beta_high", f"must be above beta_low ({spec.beta_high:g} ≤ {spec.beta_low:g})")
    if spec.points < 3:
        bad("points", f"must be at least 3, got {spec.points}")
    if spec.steps_per_point < 1:
        bad("steps_per_point", f"must be at least 1, got {spec.steps_per_point}")
    if spec.settle < 0:
        bad("settle_steps", f"must be ≥ 0, got {spec.settle}")
    if not 0 < spec.average_last <= 1:
        bad("average_last", f"must be in (0, 1], got {spec.average_last:g}")
    if not 0 < spec.threshold < 1:
        bad("threshold", f"must be in (0, 1), got {spec.threshold:g}")
    if spec.init_noise < 0:
        bad("init_noise", f"must be ≥ 0, got {spec.init_noise:g}")
    return spec


def sweep_from_dict(raw: dict, source: str = "study") -> SweepStudy:
    """A sweep study from parsed TOML: ``[sweep]`` here, the other sections by ``study``."""
    for key in raw:
        if key in _NO_MEANING:
            raise EscapestatError(f"{source}: [{key}] has no meaning in a sweep study (a sweep "
                                  "has no trap, escape rule or search); remove it")
        if key not in _SWEEP_TOP:
            raise EscapestatError(
                f"{source}: unknown top-level key {key!r}{did_you_mean(key, _SWEEP_TOP)}")
    if "sweep" not in raw:
        raise EscapestatError(f"{source}: no [sweep] table; a sweep study needs at least "
                              "[sweep] beta_low and beta_high")
    spec = parse_sweep(raw["sweep"], source)
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for section, keys in _NOT_HERE.items():
        table = base.get(section)
        if not isinstance(table, dict):
            continue
        for key in keys:
            if key in table:
                raise EscapestatError(f"{source}: [{section}] {key} is not used by a sweep: "
                                      f"{keys[key]}")
    model, dynamics = base.get("model", {}), base.get("dynamics", {})
    if isinstance(model, dict) and model.get("kind", "deep_linear") != "deep_linear":
        raise EscapestatError(f"{source}: [model] kind must be 'deep_linear' for a sweep, "
                              f"got {model['kind']!r}")
    if isinstance(dynamics, dict):
        if dynamics.get("noise", "langevin") == "langevin" and "temperature" not in dynamics:
            raise EscapestatError(f"{source}: [dynamics] temperature is required for Langevin "
                                  "noise (the default)")
        # β is the sweep's; the study checks see a placeholder and check the rest.
        base["dynamics"] = {**dynamics, "beta": spec.beta_low}
    study = study_from_dict(base, source)
    y = study.dynamics
    for key in ("lr", "temperature", "batch_size"):
        ladder = getattr(y, key)
        if len(ladder) > 1 or (ladder and not ladder[0].is_constant):
            raise EscapestatError(f"{source}: [dynamics] {key} must be one number in a sweep "
                                  "(β is the one thing that changes)")
    if y.grad_filter is not None:
        raise EscapestatError(f"{source}: [dynamics] grad_filter is not supported by a sweep")
    m = cast(DeepLinearSpec, study.model)  # the kind is deep_linear (checked above)
    for k, s in enumerate(m.strengths):
        if stationary_points(m.depth, s, spec.beta_low)[1] is None:
            raise EscapestatError(
                f"{source}: [sweep] beta_low = {spec.beta_low:g} is above mode {k}'s spinodal "
                f"β_sp = {spinodal(m.depth, s):.4g} (strength {s:g}): it has no learned state "
                "to start in")
    return SweepStudy(study, spec)


def parse_sweep_study(text: str, source: str = "study") -> SweepStudy:
    """Parse and validate a sweep study's TOML text."""
    return sweep_from_dict(read_toml(text, source), source)


def load_sweep(path: str | Path) -> SweepStudy:
    """Read a sweep study file from disk."""
    path = Path(path)
    if not path.is_file():
        raise EscapestatError(f"{path}: no such study file")
    return parse_sweep_study(path.read_text(encoding="utf-8"), source=str(path))
