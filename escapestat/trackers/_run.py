"""One logged training run as a tracker holds it: named scalar series and hyperparameters."""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from escapestat.errors import EscapestatError


@dataclass
class LoggedRun:
    """A run read from a tracker.

    ``series`` maps a metric asked for to {step: value} (steps as logged; a step logged
    twice keeps its last value); ``logged`` names every scalar the run logged, asked for
    or not; ``conditions`` are the run's hyperparameters as scalars; ``started`` and
    ``ended`` the first and last wall-clock times seen (seconds since the epoch).
    """

    name: str
    conditions: dict[str, object] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)
    started: float | None = None
    ended: float | None = None

    def add(self, metric: str, step: int, value: float, wall_time: float | None = None) -> None:
        """One logged point (a later point at the same step replaces the earlier one)."""
        self.series.setdefault(metric, {})[int(step)] = float(value)
        if wall_time is not None and math.isfinite(wall_time):
            self.started = wall_time if self.started is None else min(self.started, wall_time)
            self.ended = wall_time if self.ended is None else max(self.ended, wall_time)

    def steps(self) -> list[int]:
        """Every step at which any series was logged, in order."""
        return sorted({s for points in self.series.values() for s in points})

    def at(self, step: int) -> dict[str, float]:
        """The values logged at ``step``, by metric."""
        return {m: points[step] for m, points in self.series.items() if step in points}


def iso_time(seconds: float | None) -> str | None:
    """Seconds since the epoch as the tables' ISO text (UTC, whole seconds)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def condition_value(value: object) -> object:
    """A hyperparameter as a table cell: numbers stay numbers (integral floats become
    ints: trackers store 32 as 32.0), text that reads as a number or bool becomes one
    (MLflow keeps every parameter as text), other scalars stay; lists and dicts become
    their JSON text."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, str):
        text = value.strip()
        if text in ("True", "true", "False", "false"):
            return text in ("True", "true")
        if _NUMBER.match(text):
            number = float(text)
            if re.match(r"^[+-]?\d+$", text):
                return int(text)
            return number
        return value
    return json.dumps(value, sort_keys=True, default=str)


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """Nested hyperparameters as ``outer.inner`` keys; keys starting with ``_`` (a
    tracker's own, such as W&B's ``_wandb``) are left out."""
    out: dict[str, object] = {}
    for key, value in params.items():
        key = str(key)
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = condition_value(value)
    return out


_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def run_name(name: str) -> str:
    """A tracker's run name as a table ``run_id``: letters, digits, ``_ . -`` only."""
    text = _BAD.sub("-", str(name)).strip("-._") or "run"
    return text[:128]


def require(module: str, extra: str, who: str):
    """Import ``module`` or raise one clear error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EscapestatError(f"{who} needs the {module.split('.')[0]} package, which is not "
                              f"installed: pip install 'escapestat[{extra}]'") from None
