"""Schedules of the step index t (lr, weight decay/β, temperature, ...) as frozen values.

A study file gives a plain number (a constant) or a table with a ``shape`` key; a list
of either is a ladder, one condition each. Every schedule is a pure function of the
step, ``value(t)`` with t = 0 the first step of the run (nanoGPT's ``get_lr(it)``), and
describes itself as canonical compact JSON, which ``parse_schedule`` reads back.
``ReplicaSchedules`` turns one schedule per replica into an ``[R]`` tensor per step.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from escapestat.errors import EscapestatError, FieldError, build_keyed, did_you_mean


class _Invalid(FieldError):
    """A bad field of a schedule; ``parse_schedule`` re-raises it naming where it was."""

    def __init__(self, shape: str, key: str, why: str):
        super().__init__(f"{shape} schedule", key, why)


def _number(shape: str, key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(shape, key, f"must be a number, got {v!r}")
    if not math.isfinite(v):
        raise _Invalid(shape, key, f"must be finite, got {v!r}")
    return float(v)


def _integer(shape: str, key: str, v) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Invalid(shape, key, f"must be an integer, got {v!r}")
    return v


def _items(convert):
    def many(shape: str, key: str, v) -> tuple:
        if not isinstance(v, (list, tuple)):
            raise _Invalid(shape, key, f"must be a list, got {v!r}")
        return tuple(convert(shape, f"{key}[{i}]", x) for i, x in enumerate(v))

    return many


# Field annotations (strings under postponed evaluation) → converter.
_CONVERT = {"float": _number, "int": _integer,
            "tuple[float, ...]": _items(_number), "tuple[int, ...]": _items(_integer)}


@dataclass(frozen=True)
class Schedule:
    """Base of every shape: a frozen value object with ``value(t)`` for t = 0, 1, 2, ...

    Fields are converted (an int where a number is meant becomes a float) and
    range-checked on construction, so a schedule that exists is valid. ``min_value`` and
    ``max_value`` are the infimum and supremum over t ≥ 0; ``positive`` says whether
    every value is > 0 (the infimum of ``log`` is a limit, never reached).
    """

    shape: ClassVar[str] = ""
    # TOML key → field name, where the key would shadow the method ``value(t)``.
    _alias: ClassVar[dict[str, str]] = {}

    @classmethod
    def keys(cls) -> list[str]:
        """The study-file keys of this shape, in order (besides ``shape``)."""
        back = {f: k for k, f in cls._alias.items()}
        return [back.get(f.name, f.name) for f in dataclasses.fields(cls)]

    def __post_init__(self):
        for key, f in zip(self.keys(), dataclasses.fields(self), strict=True):
            # The annotation is its text (postponed evaluation), a key of _CONVERT.
            value = _CONVERT[cast(str, f.type)](self.shape, key, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Range checks, each a ``_need(self, key, ok, why)``."""

    def value(self, t: int) -> float:
        raise NotImplementedError

    @property
    def min_value(self) -> float:
        raise NotImplementedError

    @property
    def max_value(self) -> float:
        raise NotImplementedError

    @property
    def is_constant(self) -> bool:
        return self.min_value == self.max_value

    @property
    def positive(self) -> bool:
        """True when value(t) > 0 for every t ≥ 0 (to validate e.g. lr > 0)."""
        return self.min_value > 0

    def describe(self) -> str:
        """Canonical compact JSON: the shape, then the keys in declaration order."""
        d: dict[str, Any] = {"shape": self.shape}
        for key, f in zip(self.keys(), dataclasses.fields(self), strict=True):
            v = getattr(self, f.name)
            d[key] = list(v) if isinstance(v, tuple) else v
        return json.dumps(d, separators=(",", ":"))

    def label(self) -> str:
        """``"constant"`` for a schedule that never changes, else ``describe()``."""
        return "constant" if self.is_constant else self.describe()


def _need(schedule: Schedule, key: str, ok: bool, why: str) -> None:
    if not ok:
        raise _Invalid(schedule.shape, key, why)


@dataclass(frozen=True)
class Constant(Schedule):
    """value(t) = value (study key ``value``, field ``level``)."""

    shape: ClassVar[str] = "constant"
    _alias: ClassVar[dict[str, str]] = {"value": "level"}
    level: float

    def value(self, t: int) -> float:
        return self.level

    min_value = max_value = property(lambda self: self.level)


@dataclass(frozen=True)
class Steps(Schedule):
    """Piecewise constant: values[0] for t < at[0], values[i] for at[i−1] ≤ t < at[i]."""

    shape: ClassVar[str] = "steps"
    values: tuple[float, ...]
    at: tuple[int, ...]

    def _check(self):
        _need(self, "values", len(self.values) == len(self.at) + 1,
              f"must have one more entry than at ({len(self.at) + 1}), got {len(self.values)}")
        _need(self, "at", all(a >= 1 for a in self.at), "must be steps ≥ 1")
        _need(self, "at", all(a < b for a, b in itertools.pairwise(self.at)),
              "must be strictly increasing")

    def value(self, t: int) -> float:
        return self.values[bisect.bisect_right(self.at, t)]

    min_value = property(lambda self: min(self.values))
    max_value = property(lambda self: max(self.values))


@dataclass(frozen=True)
class _Anneal(Schedule):
    """From ``start`` at t = 0 to ``end`` at t = steps; ``end`` holds afterwards."""

    start: float
    end: float
    steps: int

    def _check(self):
        _need(self, "steps", self.steps >= 1, f"must be ≥ 1, got {self.steps}")

    def value(self, t: int) -> float:
        return self.end if t >= self.steps else self._between(t / self.steps)

    def _between(self, x: float) -> float:
        raise NotImplementedError

    min_value = property(lambda self: min(self.start, self.end))
    max_value = property(lambda self: max(self.start, self.end))


@dataclass(frozen=True)
class Linear(_Anneal):
    """start + (end − start)·t/steps, then end."""

    shape: ClassVar[str] = "linear"

    def _between(self, x: float) -> float:
        return self.start + (self.end - self.start) * x


@dataclass(frozen=True)
class Exponential(_Anneal):
    """Geometric interpolation start·(end/start)^(t/steps), then end; start, end > 0."""

    shape: ClassVar[str] = "exponential"

    def _check(self):
        super()._check()
        for key in ("start", "end"):
            _need(self, key, getattr(self, key) > 0, f"must be > 0, got {getattr(self, key)}")

    def _between(self, x: float) -> float:
        return self.start * (self.end / self.start) ** x


@dataclass(frozen=True)
class Cosine(_Anneal):
    """end + (start − end)·(1 + cos(π·t/steps))/2, then end."""

    shape: ClassVar[str] = "cosine"

    def _between(self, x: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * x))


@dataclass(frozen=True)
class Warmup(Schedule):
    """value·min(1, (t + 1)/steps): value/steps at t = 0 (not 0, which wastes a step),
    value from t = steps − 1 on. Study keys ``value``, ``steps``."""

    shape: ClassVar[str] = "warmup"
    _alias: ClassVar[dict[str, str]] = {"value": "level"}
    level: float
    steps: int

    def _check(self):
        _need(self, "steps", self.steps >= 1, f"must be ≥ 1, got {self.steps}")

    def value(self, t: int) -> float:
        return self.level * min(1.0, (t + 1) / self.steps)

    min_value = property(lambda self: min(self.level, self.level / self.steps))
    max_value = property(lambda self: max(self.level, self.level / self.steps))


@dataclass(frozen=True)
class Pulse(Schedule):
    """base·factor for start ≤ t < start + length, base otherwise."""

    shape: ClassVar[str] = "pulse"
    base: float
    factor: float
    start: int
    length: int

    def _check(self):
        _need(self, "start", self.start >= 0, f"must be ≥ 0, got {self.start}")
        _need(self, "length", self.length >= 1, f"must be ≥ 1, got {self.length}")

    def value(self, t: int) -> float:
        inside = self.start <= t < self.start + self.length
        return self.base * self.factor if inside else self.base

    min_value = property(lambda self: min(self.base, self.base * self.factor))
    max_value = property(lambda self: max(self.base, self.base * self.factor))


@dataclass(frozen=True)
class Logarithmic(Schedule):
    """c / log(e + t/t0), the classic annealing schedule: c at t = 0, → 0 as t → ∞."""

    shape: ClassVar[str] = "log"
    c: float
    t0: float

    def _check(self):
        _need(self, "t0", self.t0 > 0, f"must be > 0, got {self.t0}")

    def value(self, t: int) -> float:
        return self.c / math.log(math.e + t / self.t0)

    min_value = property(lambda self: min(self.c, 0.0))
    max_value = property(lambda self: max(self.c, 0.0))
    positive = property(lambda self: self.c > 0)

    @property
    def is_constant(self) -> bool:
        return self.c == 0


@dataclass(frozen=True)
class Cyclic(Schedule):
    """Cosine annealing with warm restarts: high at the start of each period, falling
    towards low, back to high every ``period`` steps. With s = t mod period:
    low + (high − low)·(1 + cos(π·s/period))/2."""

    shape: ClassVar[str] = "cyclic"
    low: float
    high: float
    period: int

    def _check(self):
        _need(self, "period", self.period >= 1, f"must be ≥ 1, got {self.period}")
        _need(self, "high", self.high >= self.low, f"must be ≥ low ({self.low}), got {self.high}")

    def value(self, t: int) -> float:
        s = (t % self.period) / self.period
        return self.low + (self.high - self.low) * 0.5 * (1.0 + math.cos(math.pi * s))

    min_value = property(lambda self: self.value(self.period - 1))  # the last step of a period
    max_value = property(lambda self: self.high)


SHAPES: dict[str, type[Schedule]] = {
    cls.shape: cls
    for cls in (Constant, Steps, Linear, Exponential, Cosine, Warmup, Pulse, Logarithmic, Cyclic)
}


def parse_schedule(spec, where: str) -> Schedule:
    """A schedule from a TOML value: a number is a constant, a table names its ``shape``.

    Errors are one line naming ``where`` and the key, e.g.
    ``study.toml: [dynamics] lr.steps must be ≥ 1, got 0``.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        try:
            return Constant(spec)
        except _Invalid as exc:
            raise EscapestatError(f"{where} {exc.why}") from None
    if not isinstance(spec, dict):
        raise EscapestatError(
            f"{where} must be a number or a table with a 'shape' key, got {spec!r}")
    shapes = ", ".join(SHAPES)
    if "shape" not in spec:
        raise EscapestatError(f"{where} needs a 'shape' key (one of {shapes})")
    shape = spec["shape"]
    if shape not in SHAPES:
        raise EscapestatError(
            f"{where}.shape: unknown shape {shape!r}{did_you_mean(str(shape), SHAPES)}; "
            f"shapes are {shapes}")
    return build_keyed(SHAPES[shape], SHAPES[shape].keys(), spec, where, "shape")


def parse_ladder(spec, where: str) -> tuple[Schedule, ...]:
    """A ladder: a list of numbers/tables (one condition each), or a single one."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise EscapestatError(f"{where} must not be an empty list")
        return tuple(parse_schedule(s, f"{where}[{i}]") for i, s in enumerate(spec))
    return (parse_schedule(spec, where),)
