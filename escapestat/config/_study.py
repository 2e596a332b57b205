"""Study files (TOML): the schema of a trap-and-escape experiment, loaded and validated.

Every key is checked; an unknown or ill-typed key is one error line that names it
(with a suggestion for a typo). A study expands into *conditions* — one per
(β, lr, batch size, temperature) of its ladder — that the trial engine runs as
replicas of one batched model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from escapestat.config._conditions import Condition, conditions  # noqa: F401
from escapestat.config._model_spec import ModelSpec, linear_trap
from escapestat.config._registry import DEFAULT_KIND, kinds, spec_class
from escapestat.config._schedules import Schedule, parse_ladder
from escapestat.config._sections import (
    DataSpec,
    DynamicsSpec,
    EscapeSpec,
    GradFilterSpec,
    InitSpec,
    OptimizerSpec,
    RunSpec,
    TaskSpec,
    _plain,
)
from escapestat.errors import EscapestatError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def model_keys(kind: str) -> set[str]:
    """The [model] keys of ``kind`` (``kind`` itself belongs to all)."""
    return {f.name for f in dataclasses.fields(spec_class(kind))}


@dataclass(frozen=True)
class Study:
    name: str = "study"
    """Label of the study: the default run and search folder names."""
    description: str = ""
    """Free text; it does not enter the config hash."""
    model: ModelSpec = field(default_factory=lambda: spec_class(DEFAULT_KIND)())
    task: TaskSpec | None = None
    optimizer: OptimizerSpec | None = None
    data: DataSpec = field(default_factory=DataSpec)
    init: InitSpec = field(default_factory=InitSpec)
    dynamics: DynamicsSpec = field(default_factory=DynamicsSpec)
    escape: EscapeSpec = field(default_factory=EscapeSpec)
    run: RunSpec = field(default_factory=RunSpec)

    @property
    def trapped_mode(self) -> int:
        """A deep linear study's trapped mode (``DeepLinearSpec.trapped_index``)."""
        return linear_trap(self.model).trapped_index

    @property
    def widths(self) -> list[int]:
        """A deep linear study's layer widths [d_in, hidden..., d_out]."""
        return linear_trap(self.model).widths

    def as_dict(self) -> dict:
        """Plain data: a constant schedule is its number, a schedule its JSON description."""
        return _plain(self)

    def config_hash(self) -> str:
        """SHA-256 of everything that changes results (the description does not)."""
        payload = self.as_dict()
        payload.pop("description")
        # Only what this kind of model has (so adding keys for other kinds keeps hashes).
        if not self.model.hash_kind:
            payload["model"].pop("kind")
        for key, value in _UNUSED_WHEN_EMPTY.items():
            section, name = key.split(".")
            if payload.get(section) is not None and payload[section].get(name) == value:
                payload[section].pop(name)
        for section in ("task", "optimizer"):
            if payload[section] is None:
                payload.pop(section)
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, **run_overrides) -> Study:
        """A copy with some [run] values replaced (None means keep)."""
        changes = {k: v for k, v in run_overrides.items() if v is not None}
        if not changes:
            return self
        study = dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))
        _check_semantics(study, "command line")
        return study


#: Keys dropped from the config hash at these values (keys added after studies were run).
_UNUSED_WHEN_EMPTY: dict[str, typing.Any]
_UNUSED_WHEN_EMPTY = {"dynamics.grad_filter": None, "dynamics.weight_decay": [],
                      "escape.measure": "escape", "escape.fit_threshold": 0.99,
                      "escape.fit_fallback": 0.9, "init.seed_over_saddle": [],
                      "run.curves": False, "run.hold": False, "task.train_rounding": "round",
                      "model.readout": "p"}

_SECTIONS = {
    "task": TaskSpec,
    "optimizer": OptimizerSpec,
    "data": DataSpec,
    "init": InitSpec,
    "dynamics": DynamicsSpec,
    "escape": EscapeSpec,
    "run": RunSpec,
}
#: ``[search]`` belongs to ``escapestat.search_space``: it shapes a search, not a run, so it
#: is not part of the study read here (nor of its config hash).
_TOP = {"name", "description", "search", "model", *_SECTIONS}


def _convert(value, hint, where: str):
    """Convert a TOML value to the annotated type, or raise naming the key."""
    if hint == tuple[Schedule, ...]:
        return parse_ladder(value, where)
    if hint is GradFilterSpec:
        return GradFilterSpec.parse(value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, where)
    if origin is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
    if hint is bool:
        if not isinstance(value, bool):
            raise EscapestatError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise EscapestatError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EscapestatError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise EscapestatError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in the schema, not user input


def _section(cls, raw, name: str, source: str):
    if not isinstance(raw, dict):
        raise EscapestatError(f"{source}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in allowed:
            raise EscapestatError(
                f"{source}: unknown key {key!r} in [{name}]{did_you_mean(key, allowed)}"
            )
        values[key] = _convert(value, hints[key], f"{source}: [{name}] {key}")
    return cls(**values)


def _check_semantics(study: Study, source: str) -> None:
    """Range and consistency checks, each naming the offending key."""

    def bad(key: str, why: str):
        raise EscapestatError(f"{source}: {key} {why}")

    e, r = study.escape, study.run
    study.model.check(study, bad)
    if not 0 < e.fallback < e.threshold:
        bad("[escape] fallback", "must be between 0 and threshold")
    if e.check_every < 1 or e.commit_steps < 0:
        bad("[escape] check_every", "must be ≥ 1 (and commit_steps ≥ 0)")
    if r.replicas < 1 or r.max_steps < 1 or r.chunk_replicas < 1:
        bad("[run]", "replicas, max_steps and chunk_replicas must be ≥ 1")
    if not 0 <= r.seed < 2**63:
        bad("[run] seed", f"must be a whole number in [0, 2⁶³), got {r.seed}")
    if r.dtype not in ("float32", "float64"):
        bad("[run] dtype", f"must be 'float32' or 'float64', got {r.dtype!r}")


def _model(raw, source: str) -> ModelSpec:
    """The [model] table as its kind's spec; a key of another kind is an error, not ignored."""
    if not isinstance(raw, dict):
        raise EscapestatError(f"{source}: [model] must be a table")
    kind = raw.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or kind not in kinds():
        raise EscapestatError(f"{source}: [model] kind must be one of "
                              f"{', '.join(repr(k) for k in kinds())}, got {kind!r}")
    own = model_keys(kind)
    for key in raw:
        if key != "kind" and key not in own:
            owner = [k for k in kinds() if key in model_keys(k)]
            if owner:
                raise EscapestatError(
                    f"{source}: [model] {key} is for model kind "
                    f"{' or '.join(map(repr, owner))}, not {kind!r}")
            every = set().union(*(model_keys(k) for k in kinds()))
            raise EscapestatError(
                f"{source}: unknown key {key!r} in [model]{did_you_mean(key, every)}")
    return _section(spec_class(kind), {k: v for k, v in raw.items() if k != "kind"},
                    "model", source)


def _task_defaults(raw: dict, spec: ModelSpec, source: str) -> dict:
    """Fill the kind's escape defaults and turn batch_size "full" into the train-set size."""
    raw = {**raw, "escape": {**spec.escape_defaults, **raw.get("escape", {})},
           "dynamics": dict(raw.get("dynamics", {}))}
    sizes = raw["dynamics"].get("batch_size")
    listed = sizes if isinstance(sizes, list) else [sizes]
    if "full" in listed:
        from escapestat.config._task import table_size, train_size

        task = _section(TaskSpec, raw.get("task", {}), "task", source)
        full = train_size(table_size(task.operation, task.p), task.train_fraction,
                          task.train_rounding)
        listed = [full if b == "full" else b for b in listed]
        raw["dynamics"]["batch_size"] = listed if isinstance(sizes, list) else listed[0]
    return raw


def parse_study(text: str, source: str = "study") -> Study:
    """Parse and validate TOML text; errors name the file and the offending key."""
    return study_from_dict(read_toml(text, source), source)


def read_toml(text: str, source: str = "study") -> dict:
    """TOML text as a dict; a syntax error is one line naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EscapestatError(f"{source}: not valid TOML: {exc}") from None


def study_from_dict(raw: dict, source: str = "study") -> Study:
    """A study from its parsed TOML (``[search]``, if present, is left to the search)."""
    raw = copy.deepcopy(raw)
    for key in raw:
        if key == "sweep":
            raise EscapestatError(f"{source}: a [sweep] study: run it with `escapestat sweep "
                                  f"{source}` (hysteresis), not as a trap-and-escape study")
        if key not in _TOP:
            raise EscapestatError(
                f"{source}: unknown top-level key {key!r}{did_you_mean(key, _TOP)}")
    kwargs = {}
    for key in ("name", "description"):
        if key in raw:
            kwargs[key] = _convert(raw[key], str, f"{source}: {key}")
    model = _model(raw.get("model", {}), source)
    if model.learns_task:
        raw = _task_defaults(raw, model, source)
    for name, cls in _SECTIONS.items():
        if name in raw:
            kwargs[name] = _section(cls, raw[name], name, source)
    study = Study(model=model, **kwargs)
    _check_semantics(study, source)
    return study


def load_study(path: str | Path) -> Study:
    """Read a study file from disk."""
    path = Path(path)
    if not path.is_file():
        raise EscapestatError(f"{path}: no such study file")
    return parse_study(path.read_text(encoding="utf-8"), source=str(path))
