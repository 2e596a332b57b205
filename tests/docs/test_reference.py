"""The generated references (scripts/docs_hooks.py): every study-file key documented from
its field's docstring, every command and option of the CLI listed, markers replaced."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_study_key_is_in_the_reference():
    from escapestat.config import SHAPES, Study, kinds, model_keys

    text = _hooks().study_file()
    sections = [f.name for f in dataclasses.fields(Study)
                if f.name not in ("name", "description", "model")] + ["search", "sweep"]
    for name in sections:
        assert f"## `[{name}]`" in text
    for kind in kinds():
        assert f'### `kind = "{kind}"`' in text
        for key in model_keys(kind):
            assert f"| `{key}` |" in text, (kind, key)
    for key in ("noise", "lr", "temperature", "barrier_over_temperature", "grad_filter",
                "threshold", "commit_steps", "check_every", "replicas", "max_steps", "dtype",
                "trials", "sampler", "objective", "max_final_test_error", "compare_seed",
                "points", "steps_per_point"):
        assert re.search(rf"^\| `{key}` \| [^|]+ \| [^|]+ \| \S", text, re.M), key
    assert "UNDOCUMENTED" not in text
    shapes = _hooks().schedules()
    for shape, cls in SHAPES.items():
        assert f"| `{shape}` | " + ", ".join(f"`{k}`" for k in cls.keys()) in shapes


def test_a_key_without_a_docstring_fails_the_build(tmp_path, monkeypatch):
    hooks = _hooks()
    (tmp_path / "specs_for_docs.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass(frozen=True)\n"
        "class Spec:\n    documented: int = 1\n    \"\"\"A key with its meaning.\"\"\"\n"
        "    bare: int = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from specs_for_docs import Spec

    with pytest.raises(hooks.UndocumentedKey, match=r"Spec\.bare has no docstring"):
        hooks._table(Spec)


def test_defaults_and_types_come_from_the_fields():
    from escapestat.config import EscapeSpec, RunSpec

    hooks = _hooks()
    run = hooks._table(RunSpec)
    assert re.search(r"^\| `max_steps` \| integer \| `40000` \|", run, re.M)
    assert re.search(r'^\| `dtype` \| string \| `"float32"` \|', run, re.M)
    escape = hooks._table(EscapeSpec)
    assert re.search(r"^\| `threshold` \| number \| `0.5` \|", escape, re.M)


def test_the_cli_reference_lists_every_command_and_option():
    import typer

    from escapestat_cli.app import app
    from escapestat_cli.commands import COMMANDS

    text = _hooks().cli()
    for name in COMMANDS:
        assert f"## `escapestat {name}`" in text
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert re.search(rf"^\* `(-\w, )?{opt}\b", text, re.M), (command.name, opt)


def test_markers_are_replaced_and_unknown_ones_fail():
    hooks = _hooks()
    page = "# x\n\n<!-- generated: schedules -->\n"
    assert "| `cosine` |" in hooks.render(page)
    with pytest.raises(KeyError):
        hooks.render("<!-- generated: nothing -->\n")


#: A citation of the project's internal design notes or issue tracker, which readers of
#: the docs, the API reference (docstrings), the CLI help or a benchmark's output lack.
INTERNAL = re.compile(r"design\s*§|design\.md|\bissues?\s+#?\d+|\(#\d+\)", re.IGNORECASE)


def test_nothing_a_reader_sees_cites_internal_notes():
    """Docs, README, CHANGELOG and the sources the API reference, the help and the
    benchmarks' output come from name no design section or issue number."""
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("escapestat", "cli", "benchmarks", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in files
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if INTERNAL.search(line)]
    assert not found, "\n".join(found)
