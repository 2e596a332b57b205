"""What a wheel ships: every package of the tree (a missing one installs without error and
fails only at import)."""

from __future__ import annotations

import sys

from testdata import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = ROOT


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "escapestat").rglob("__init__.py")}
    assert listed == found | {"escapestat_cli"}


def test_old_flat_paths_import_with_a_warning():
    """0.7's ``escapestat.trials`` & co. are the modules at their new places, for a release,
    each with a DeprecationWarning naming the new path (``escapestat/_legacy.py``); the
    C sources folder ``escapestat/native/`` must not shadow ``escapestat.native``."""
    import importlib
    import warnings

    from escapestat._legacy import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(f"escapestat.{old}", None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(f"escapestat.{old}")
        assert module is importlib.import_module(f"escapestat.{new}")
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   for w in caught), old
    from escapestat.models import _native
    assert importlib.import_module("escapestat.native").kernels is _native.kernels
