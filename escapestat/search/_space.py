"""A study file's ``[search]`` table: what to vary, how to search, and what to compare against.

Parameters are dotted paths into the study (``dynamics.lr``, ``dynamics.weight_decay.start``,
``dynamics.weight_decay.shape``) with a range (``low``, ``high``, ``log``, ``step``) or
``choices``. A schedule whose ``shape`` is searched is sampled define-by-run: the shape
first, then only the searched keys that shape has, so a constant weight decay never
carries a meaningless ``steps``. Where two shapes share a key name with different
meanings (cosine's ``start`` is a value, pulse's a step), ``schedule@shape.key``
(``dynamics.weight_decay@pulse.start``) searches it for that shape only. Every path,
range and baseline is checked when the file is read, by building the study it would
give: a typo is one error line naming the path.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna

from escapestat.config._registry import task_kinds
from escapestat.config._schedules import SHAPES
from escapestat.config._study import Study, conditions, read_toml, study_from_dict
from escapestat.errors import EscapestatError, did_you_mean
from escapestat.search._spec import (  # noqa: F401 (re-exported)
    _PARAM_KEYS,
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    SEARCHABLE,
    Param,
    SearchSpec,
)


def _fail(source: str, what: str) -> EscapestatError:
    return EscapestatError(f"{source}: [search] {what}")


def _parse_param(path: str, spec, source: str) -> Param:
    where = f"space {path!r}"
    section = path.split(".", 1)[0]
    if "." not in path or section not in SEARCHABLE:
        hint = did_you_mean(section, SEARCHABLE)
        raise _fail(source, f"{where}: a path starts with one of {', '.join(SEARCHABLE)} "
                            f"and names a key, e.g. 'dynamics.lr'{hint}")
    if not isinstance(spec, dict):
        raise _fail(source, f"{where} must be a table with low/high or choices, got {spec!r}")
    for key in spec:
        if key not in _PARAM_KEYS:
            raise _fail(source, f"{where}: unknown key {key!r}{did_you_mean(key, _PARAM_KEYS)}; "
                                f"keys are {', '.join(_PARAM_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise _fail(source, f"{where}: choices is a non-empty list, without low/high")
        return Param(path, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise _fail(source, f"{where} needs low and high (or choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _fail(source, f"{where}: {name} must be a finite number, got {v!r}")
    if not low < high:
        raise _fail(source, f"{where}: low ({low}) must be < high ({high})")
    if not isinstance(log, bool):
        raise _fail(source, f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise _fail(source, f"{where}: a log range needs low > 0, got {low}")
    if log and step:
        raise _fail(source, f"{where}: log and step cannot be used together")
    if step is not None and not 0 < step <= high - low:
        raise _fail(source, f"{where}: step ({step}) must be > 0 and at most the range "
                            f"high − low ({high - low:g})")
    return Param(path, low, high, log, step)


def _set(node: dict, path: str, value: Any, where: str) -> None:
    """Set ``path`` in nested dicts; a number on the way (a constant schedule) becomes
    ``{shape = "constant", value = …}`` so that its keys can be set."""
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
        elif isinstance(nxt, (int, float)) and not isinstance(nxt, bool):
            nxt = {"shape": "constant", "value": nxt}
        elif isinstance(nxt, list):
            raise EscapestatError(f"{where}: {part!r} is a ladder (a list) in the study; a "
                                  f"searched study has one condition: give it one value")
        elif not isinstance(nxt, dict):
            raise EscapestatError(f"{where}: {part!r} holds {nxt!r}, which has no keys")
        node[part] = nxt
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _prune_shape_keys(root: dict, parent: str) -> None:
    """Drop the keys that the schedule table at ``parent`` does not have under its shape
    (left from the base study when an override changed the shape)."""
    node: Any = root
    for part in parent.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    shape = node.get("shape") if isinstance(node, dict) else None
    if isinstance(shape, str) and shape in SHAPES:
        for key in [k for k in node if k != "shape" and k not in SHAPES[shape].keys()]:
            del node[key]


def apply_overrides(raw: dict, overrides: dict[str, Any], where: str = "search") -> dict:
    """The study dict with each dotted path set, shallowest first; schedule tables keep
    only their shape's keys."""
    out = copy.deepcopy(raw)
    out.pop("search", None)
    for path in sorted(overrides, key=lambda p: p.count(".")):
        _set(out, path, overrides[path], f"{where} {path!r}")
    for parent in {p.rpartition(".")[0] for p in overrides if p.count(".") >= 2}:
        _prune_shape_keys(out, parent)
    return out


def build_study(raw: dict, overrides: dict[str, Any], source: str,
                where: str = "search") -> Study:
    """The one-condition study that ``overrides`` give, or one error line naming them."""
    study = study_from_dict(apply_overrides(raw, overrides, f"{source}: [{where}]"),
                            f"{source}: [{where}]")
    n = len(conditions(study))
    if n != 1:
        raise EscapestatError(f"{source}: [{where}] gives {n} conditions (a ladder); a "
                              f"searched study has one condition: give each ladder one value")
    return study


def suggest(spec: SearchSpec, trial: optuna.trial.BaseTrial,
            constant_only: bool = False) -> dict[str, Any]:
    """The trial's overrides, define-by-run: a searched shape first, then its keys.

    ``constant_only`` fixes every searched shape to ``constant`` (the constant-only search
    that the best schedule must beat), so only their ``value`` keys are sampled.
    """
    values: dict[str, Any] = {}
    shapes = spec.shape_params
    for p in shapes.values():
        values[p.path] = "constant" if constant_only else p.suggest(trial)
    for p in spec.space:
        if p.key == "shape":
            continue
        if p.parent in shapes and not p.applies(values[shapes[p.parent].path]):
            continue
        values[p.path] = p.suggest(trial)
    return {spec.param(k).target: v for k, v in values.items()}


def _shape_cases(spec: SearchSpec) -> list[dict[str, Any]]:
    """Override sets covering every searched shape and every range's ends."""
    shapes = spec.shape_params
    cases: list[dict[str, Any]]
    if not shapes:
        cases = [{}]
    else:
        cases = []
        for p in shapes.values():
            cases += [{p.path: shape} for shape in p.corners()]
        cases += [{p.path: "constant" for p in shapes.values()}]
    out = []
    for base in cases:
        for end in (0, -1):
            case = dict(base)
            for p in spec.space:
                if p.key == "shape":
                    continue
                shape = base.get(f"{p.parent}.shape")
                if p.parent in shapes and (shape is None or not p.applies(shape)):
                    continue
                case[p.target] = p.corners()[end]
            out.append(case)
    for p in spec.space:  # every choice of a plain categorical
        if p.choices is not None and p.key != "shape":
            out += [dict(out[0], **{p.target: c}) for c in p.choices]
    return out


def parse_search(raw: dict, source: str = "study") -> SearchSpec:
    """The ``[search]`` table of a parsed study file, checked against the study itself."""
    table = raw.get("search")
    if not isinstance(table, dict):
        raise EscapestatError(f"{source}: no [search] table: add one to search this study "
                              f"(see the README's 'escapestat optimize')")
    known = {f for f in SearchSpec.__dataclass_fields__}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise _fail(source, f"unknown key {key!r}{did_you_mean(key, known)}")
        kwargs[key] = value
    space = kwargs.pop("space", {})
    baselines = kwargs.pop("baselines", {})
    if not isinstance(space, dict) or not space:
        raise _fail(source, "needs a [search.space] table with at least one parameter")
    if not isinstance(baselines, dict) or not all(isinstance(v, dict) for v in baselines.values()):
        raise _fail(source, "[search.baselines] holds tables of dotted paths, e.g. "
                            "default = {\"dynamics.lr\" = 1e-3}")
    _check_scalars(kwargs, source)
    spec = SearchSpec(space=tuple(_parse_param(k, v, source) for k, v in space.items()),
                      baselines={k: dict(v) for k, v in baselines.items()}, **kwargs)
    for p in spec.space:
        if p.only_for is not None and (p.parent not in spec.shape_params
                                       or p.only_for not in SHAPES):
            raise _fail(source, f"space {p.path!r}: '@{p.only_for}' needs a known shape and "
                                f"{p.parent + '.shape'!r} in the space")
        if p.key == "shape":
            bad = [c for c in p.choices or () if c not in SHAPES]
            if p.choices is None or bad:
                raise _fail(source, f"space {p.path!r}: choices must be schedule shapes "
                                    f"({', '.join(SHAPES)}), got {bad or 'a range'}")
    for case in _shape_cases(spec):
        _check_whole_numbers(spec, raw, case, source)  # first: a fractional end is named too
        build_study(raw, case, source, "search.space")
    for name, overrides in spec.baselines.items():
        for path in overrides:
            if path.split(".", 1)[0] not in SEARCHABLE:
                raise _fail(source, f"baselines.{name}: {path!r} is not in "
                                    f"{', '.join(SEARCHABLE)}")
        build_study(raw, overrides, source, f"search.baselines.{name}")
    study = study_from_dict({k: v for k, v in raw.items() if k != "search"}, source)
    if spec.compare_seed is not None and spec.compare_seed == study.run.seed:
        raise _fail(source, f"compare_seed {spec.compare_seed} is the search's run.seed; "
                            f"compare re-runs arms on seeds never used in the search")
    if spec.max_final_test_error is not None and not study.model.learns_task:
        raise _fail(source, "max_final_test_error needs a grokking model (model kind "
                            f"{' or '.join(map(repr, task_kinds()))})")
    if spec.max_final_loss is not None and study.model.learns_task:
        raise _fail(source, "max_final_loss needs the linear trap (a model without a "
                            "[task]); grokking models use max_final_test_error")
    return spec


def _fractional(p: Param) -> float | None:
    """A value a float range can sample that is not a whole number, if it has one.

    On a grid ``low + k·step`` two neighbours are both whole only if ``low`` and ``step``
    are, and then every point is: so ``low`` and the next point decide, and a long grid
    (``{low = 1, high = 1e9, step = 1.0}``) is never walked. ``step ≤ high − low`` (checked
    when the range was read) puts the next point inside the range.
    """
    low, high = p.low, p.high
    assert low is not None and high is not None  # a range: the parser sets both
    if p.step is None:
        v = low + 0.4937 * (high - low)
        return v if not float(v).is_integer() else v + (high - low) / 10
    return next((v for v in (low, low + p.step) if not float(v).is_integer()), None)


def _whole_near(v: float, p: Param) -> int:
    """A whole number next to ``v``, inside ``p``'s range where the range holds one."""
    up = math.ceil(v)
    assert p.high is not None  # a range: the parser sets both ends
    return up if up <= p.high else math.floor(v)


def _check_whole_numbers(spec: SearchSpec, raw: dict, case: dict[str, Any],
                         source: str) -> None:
    """A float range on a key that takes whole numbers (a batch size, a schedule's
    ``steps``, a pulse's ``start``, a model's ``width``) would sample 147.9 and fail every
    such trial: refuse it at load, naming the path.

    Which keys take whole numbers is the study's own typing, asked by example: the study
    is built with a fraction from the range and with a whole number next to it, the rest
    of the case alike. Only when the fraction is refused as not an integer / not whole
    and the whole number builds is the range to blame (another key's error is its own).
    """
    for p in spec.space:
        is_float = not (isinstance(p.low, int) and isinstance(p.high, int)
                        and not isinstance(p.step, float))
        shape = case.get(f"{p.parent}.shape")
        shadowed = p.only_for is None and shape is not None and any(  # ``@shape`` wins
            q.target == p.target and q.only_for == shape for q in spec.space)
        if p.choices is not None or p.target not in case or not is_float or shadowed:
            continue
        v = _fractional(p)
        if v is None:
            continue
        try:
            build_study(raw, {**case, p.target: v}, source, "search.space")
        except EscapestatError as exc:
            if "integer" not in str(exc) and "whole" not in str(exc):
                raise
            try:
                build_study(raw, {**case, p.target: _whole_near(v, p)}, source, "search.space")
            except EscapestatError:
                continue  # another key's error: its own check or the case's build names it
            raise _fail(source, f"space {p.path!r} is a float range, but the key takes "
                                f"whole numbers (it would sample {v:g}); give low, high "
                                f"and step as integers") from None


def _check_scalars(kwargs: dict, source: str) -> None:
    for key, allowed in (("sampler", SAMPLERS), ("objective", OBJECTIVES),
                         ("pruner", PRUNERS)):
        if key in kwargs and kwargs[key] not in allowed:
            raise _fail(source, f"{key} {kwargs[key]!r} is not one of {', '.join(allowed)}"
                                f"{did_you_mean(str(kwargs[key]), allowed)}")
    for key in ("trials", "checkpoints", "top", "compare_replicas"):
        v = kwargs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _fail(source, f"{key} must be a whole number ≥ 1, got {v!r}")
    for key in ("seed", "compare_seed"):
        v = kwargs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise _fail(source, f"{key} must be a whole number ≥ 0, got {v!r}")
    v = kwargs.get("max_final_test_error")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or not 0 < v <= 1):
        raise _fail(source, f"max_final_test_error must be in (0, 1], got {v!r}")
    v = kwargs.get("max_final_loss")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                          or not 0 < v < float("inf")):
        raise _fail(source, f"max_final_loss must be a number > 0, got {v!r}")
    v = kwargs.get("constant_search")
    if v is not None and not isinstance(v, bool):
        raise _fail(source, f"constant_search must be true or false, got {v!r}")


def load_search(text: str, source: str = "study") -> tuple[dict, SearchSpec]:
    """The raw study dict and its checked ``[search]``."""
    raw = read_toml(text, source)
    return raw, parse_search(raw, source)
