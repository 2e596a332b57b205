"""MkDocs hooks: the study-file and CLI references, generated from the code at build time.

A page asks for a generated block with a marker line, ``<!-- generated: NAME -->``
(NAME: ``study-file``, ``schedules``, ``cli``). The study-file reference reads the config
dataclasses — every key, its type and default from the fields, its meaning from the
field's docstring — so it cannot drift; a key without a docstring fails the build.
Run as a script, it prints one block: ``python scripts/docs_hooks.py study-file``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
import typing
from functools import cache
from pathlib import Path

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


class UndocumentedKey(Exception):
    """A study-file key whose field has no docstring."""


@cache
def _griffe_class(cls):
    import griffe

    module = griffe.load(cls.__module__, resolve_aliases=False)
    return module[cls.__qualname__]


def _field_doc(cls, name: str) -> str:
    for klass in cls.__mro__:
        if name not in getattr(klass, "__dataclass_fields__", {}):
            continue
        try:
            member = _griffe_class(klass).members.get(name)
        except KeyError:
            continue
        if member is not None and member.docstring is not None:
            return _markdown(member.docstring.value)
    raise UndocumentedKey(f"{cls.__module__}.{cls.__qualname__}.{name} has no docstring "
                          "(the study-file reference is generated from it)")


def _markdown(doc: str) -> str:
    """One table cell from a docstring: one line, reStructuredText's ``x`` as `x`."""
    return " ".join(doc.split()).replace("``", "`")


def _type_name(hint) -> str:
    from escapestat.config import GradFilterSpec, Schedule

    if hint == tuple[Schedule, ...]:
        return "number, schedule or list"
    if hint is GradFilterSpec:
        return "table"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner)
    if origin is tuple:
        return f"list of {_type_name(args[0])}s"
    if origin is dict:
        return "table"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _default(f: dataclasses.Field, overrides: dict) -> str:
    from escapestat.config import Schedule

    if f.name in overrides:
        value = overrides[f.name]
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None or value in ((), {}, ""):
        return "—"
    if isinstance(value, tuple) and all(isinstance(v, Schedule) for v in value):
        value = [v.value(0) if v.is_constant else v.describe() for v in value]
        value = value[0] if len(value) == 1 else value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                for v in value) + "]`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _table(cls, *, skip=(), overrides: dict | None = None) -> str:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | "
                    f"{_default(f, overrides or {})} | {_field_doc(cls, f.name)} |")
    return "\n".join(rows)


def _summary(cls) -> str:
    return _markdown((cls.__doc__ or "").strip().split("\n\n")[0])


def study_file() -> str:
    """Every study-file section and key, with type, default and meaning."""
    from escapestat.config import (
        DataSpec,
        DynamicsSpec,
        EscapeSpec,
        InitSpec,
        OptimizerSpec,
        RunSpec,
        Study,
        TaskSpec,
        kinds,
        spec_class,
    )
    from escapestat.search import SearchSpec
    from escapestat.sweep import SweepSpec

    out = ["## Top level", "", _table(Study, skip={f.name for f in dataclasses.fields(Study)}
                                      - {"name", "description"}), ""]
    out += ["## `[model]`", "", "`kind` chooses the model; each kind has its own keys "
            f"(a key of another kind is an error). Kinds: {', '.join(f'`{k}`' for k in kinds())}.",
            ""]
    for kind in kinds():
        spec = spec_class(kind)
        out += [f"### `kind = \"{kind}\"`", "", _summary(spec), ""]
        if spec.escape_defaults:
            changed = ", ".join(f"`{k} = {json.dumps(v)}`"
                                for k, v in spec.escape_defaults.items())
            out += [f"With this kind, `[escape]` defaults to {changed}.", ""]
        out += [_table(spec), ""]
    sections = [("task", TaskSpec, "grokking models only"),
                ("optimizer", OptimizerSpec, "grokking models only"),
                ("data", DataSpec, "deep linear nets"), ("init", InitSpec, "deep linear nets"),
                ("dynamics", DynamicsSpec, ""), ("escape", EscapeSpec, ""), ("run", RunSpec, ""),
                ("search", SearchSpec, "read by `optimize` and `compare`; not part of the "
                 "run's config hash"),
                ("sweep", SweepSpec, "sweep files, read by `escapestat sweep`")]
    for name, cls, where in sections:
        out += [f"## `[{name}]`" + (f" ({where})" if where else ""), "", _summary(cls), "",
                _table(cls), ""]
    return "\n".join(out)


def schedules() -> str:
    """The schedule shapes with their keys, from the schedule classes."""
    from escapestat.config import SHAPES

    rows = ["| shape | keys | value at step t |", "|---|---|---|"]
    for shape, cls in SHAPES.items():
        keys = ", ".join(f"`{k}`" for k in cls.keys())
        rows.append(f"| `{shape}` | {keys} | {_markdown(cls.__doc__ or '')} |")
    return "\n".join(rows)


def cli() -> str:
    """Every command with its arguments and options, from the Typer app."""
    import click
    import typer
    from typer.cli import get_docs_for_click

    from escapestat_cli.app import app

    command = typer.main.get_command(app)
    ctx = click.Context(command, info_name="escapestat")
    text = get_docs_for_click(obj=command, ctx=ctx, name="escapestat")
    return re.sub(r"^# .*\n", "", text, count=1)


BLOCKS = {"study-file": study_file, "schedules": schedules, "cli": cli}


def render(markdown: str) -> str:
    """Replace each marker line by its generated block."""
    return MARKER.sub(lambda m: BLOCKS[m.group(1)](), markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' signature)
    return render(markdown)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(BLOCKS[sys.argv[1]]())
