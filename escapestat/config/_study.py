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
import itertools
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from escapestat.config._grad_filter import check_grad_filter
from escapestat.config._model_spec import ModelSpec
from escapestat.config._registry import DEFAULT_KIND, kinds, spec_class
from escapestat.config._schedules import Constant, Schedule, parse_ladder
from escapestat.errors import EscapestatError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def model_keys(kind: str) -> set[str]:
    """The [model] keys of ``kind`` (``kind`` itself belongs to all)."""
    return {f.name for f in dataclasses.fields(spec_class(kind))}


@dataclass(frozen=True)
class TaskSpec:
    """Modular arithmetic a∘b mod p for the grokking models: each replica its own split."""

    operation: str = "add"
    p: int = 23
    train_fraction: float = 0.7
    label_noise: float = 0.0


@dataclass(frozen=True)
class OptimizerSpec:
    """The grokking models' optimizer: ``adamw`` (decoupled decay), ``adam`` (coupled L2,
    as Grokfast's baseline) or ``sgd`` (momentum, L2)."""

    kind: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass(frozen=True)
class DataSpec:
    """Where the data term's moments come from.

    ``population``: the exact population loss ½‖A − P‖² (whitened inputs, no sampling);
    ``fixed``: a training set of ``n_train`` samples per replica, minibatches drawn
    without replacement each epoch, and a held-out test set; ``fresh``: new samples every step.
    """

    kind: str = "population"
    n_train: int = 512
    n_test: int = 512
    label_noise: float = 0.0


@dataclass(frozen=True)
class InitSpec:
    """How replicas are put into the trap.

    ``aligned``: the structured trapped start — learned modes at their fixed point at
    β_run, the trapped mode at zero, plus N(0, noise²) on every weight. ``trained``: the
    paper's protocol — random init of scale ``scale``, ``trap_steps`` of full-batch
    gradient descent at ``beta_trap`` with ``trap_lr``; replicas whose trapped mode is
    not below the fall-back level at the switch are reported as untrapped and excluded.
    ``random``: the random init alone, no trap (learning from scratch, e.g. the sparse
    sub-sampling curve). ``seed_over_saddle``, a ladder (one condition each): after the
    trap, give the trapped mode a layer amplitude b₀ = this × the saddle's amplitude at
    β_run along hidden directions the learned modes do not use — the control that tells a
    deterministic roll-off (escape iff b₀ is past the saddle) from activated escape.
    """

    kind: str = "aligned"
    noise: float = 1e-3
    scale: float = 1.0
    beta_trap: float | None = None
    trap_steps: int = 3000
    trap_lr: float = 0.05
    seed_over_saddle: tuple[float, ...] = ()


@dataclass(frozen=True)
class GradFilterSpec:
    """A validated Grokfast filter spec (``{kind = "ema", alpha, lamb}`` or ``"ma"``)."""

    items: tuple[tuple[str, object], ...]

    @classmethod
    def parse(cls, raw, where: str) -> GradFilterSpec:
        if not isinstance(raw, dict):
            raise EscapestatError(f"{where} must be a table such as "
                                  '{kind = "ema", alpha = 0.98, lamb = 2.0}')
        check_grad_filter(raw, where)  # the filter itself is built per chunk (models)
        return cls(tuple(sorted(raw.items())))

    def as_dict(self) -> dict:
        return dict(self.items)


@dataclass(frozen=True)
class DynamicsSpec:
    """The noise model and the ladder of conditions (their Cartesian product is run).

    Langevin: gradient step plus √(2·lr·T) Gaussian noise, exact temperature T, given as
    ``temperature`` or as ``barrier_over_temperature`` (T = ΔE(β)/x). SGD: minibatch
    noise, reported temperature T = lr / batch_size. β is ``beta`` or ``beta_over_beta_c``.
    ``lr``, ``beta``, ``temperature`` and ``batch_size`` are ladders of schedules: a number
    is a constant, a table a schedule of the step (``schedules``), a list of either a
    ladder. ``grad_filter`` is an optional Grokfast filter (``grad_filter``).
    """

    noise: str = "langevin"
    lr: tuple[Schedule, ...] = (Constant(0.25),)
    batch_size: tuple[Schedule, ...] = ()
    temperature: tuple[Schedule, ...] = ()
    barrier_over_temperature: tuple[float, ...] = ()
    beta: tuple[Schedule, ...] = ()
    beta_over_beta_c: tuple[float, ...] = ()
    weight_decay: tuple[Schedule, ...] = ()
    grad_filter: GradFilterSpec | None = None


@dataclass(frozen=True)
class EscapeSpec:
    """Escape = the order parameter crosses ``threshold`` and does not fall back below
    ``fallback`` within ``commit_steps``.

    ``mode``: the trapped mode's end-to-end strength as a fraction of its learned value;
    ``test_error``: the fraction of the way test error has fallen from the trapped plateau
    to the learned state's level (threshold 0.5 is the midpoint). For the grokking models
    the order parameter is test accuracy (``threshold`` 0.95 by default there) and train
    accuracy marks the fit (``fit_threshold``, ``fit_fallback``); ``measure`` puts the
    generalisation time (``generalize``) or the delay after the fit (``delay``) into
    ``duration``.
    """

    order_parameter: str = "mode"
    threshold: float = 0.5
    fallback: float = 0.25
    commit_steps: int = 200
    check_every: int = 10
    measure: str = "escape"
    fit_threshold: float = 0.99
    fit_fallback: float = 0.9


@dataclass(frozen=True)
class RunSpec:
    """Replicas per condition, the step budget (right-censoring), seeds and numerics."""

    replicas: int = 256
    max_steps: int = 40_000
    seed: int = 0
    chunk_replicas: int = 4096
    dtype: str = "float32"
    divergence_limit: float = 1e4
    curves: bool = False  # deep linear nets: record per-check curves (grokking models always)
    hold: bool = False  # escaped replicas train on to the budget (curves show the whole run)

    @property
    def item_bytes(self) -> int:
        """Bytes per number of ``dtype`` (the one place the dtype's name is read)."""
        return 8 if self.dtype == "float64" else 4


@dataclass(frozen=True)
class Study:
    name: str = "study"
    description: str = ""
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
        return self.model.trapped_index

    @property
    def widths(self) -> list[int]:
        """A deep linear study's layer widths [d_in, hidden..., d_out]."""
        return self.model.widths

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


def _plain(obj, key: str = ""):
    if isinstance(obj, Schedule):
        if not obj.is_constant:
            return json.loads(obj.describe())
        value = obj.value(0)
        return int(value) if key == "batch_size" else value
    if isinstance(obj, GradFilterSpec):
        return obj.as_dict()
    if isinstance(obj, ModelSpec):
        return {"kind": obj.kind, **{f.name: _plain(getattr(obj, f.name), f.name)
                                     for f in dataclasses.fields(obj)}}
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name), f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v, key) for v in obj]
    return obj


#: Keys dropped from the config hash at these values (keys added after studies were run).
_UNUSED_WHEN_EMPTY = {"dynamics.grad_filter": None, "dynamics.weight_decay": [],
                      "escape.measure": "escape", "escape.fit_threshold": 0.99,
                      "escape.fit_fallback": 0.9, "init.seed_over_saddle": [],
                      "run.curves": False, "run.hold": False}

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
        full = train_size(table_size(task.operation, task.p), task.train_fraction)
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
        return self.lr.value(0) / self.batch_size.value(0)

    @property
    def temperature_is_constant(self) -> bool:
        if self.temperature is not None:
            return self.temperature.is_constant
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
    s = m.strengths[study.trapped_mode]
    betas = y.beta or tuple(Constant(f * critical_beta(m.depth, s)) for f in y.beta_over_beta_c)
    seeds = study.init.seed_over_saddle or (None,)
    out = []
    for beta, seed in itertools.product(betas, seeds):
        dE = barrier(m.depth, s, beta.value(0)) if beta.is_constant else None
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
