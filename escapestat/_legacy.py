"""The flat module paths of escapestat ≤ 0.7 (``escapestat.survival``, ``escapestat.trials``
…), kept working for one release: importing one gives the module at its new place, with a
DeprecationWarning that names it."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Old module (under escapestat) → where it lives now.
MOVED = {
    "records": "table._records", "table_append": "table._append",
    "survival": "stats._survival", "incidence": "stats._incidence",
    "arm_contrast": "stats._contrast", "arrhenius": "stats._arrhenius",
    "frailty": "stats._frailty", "regress": "stats._regress", "strata": "stats._strata",
    "verdict": "stats._verdict", "stability": "stats._stability",
    "summary": "stats._summary", "synthetic": "stats._synthetic", "curves": "stats._curves",
    "study": "config._study", "schedules": "config._schedules",
    "native": "models._native", "threads": "models._threads",
    "optimizers": "models._optimizers", "grad_filter": "models._grad_filter",
    "xent": "models._xent", "integrators": "models._integrators",
    "linear_model": "models.deep_linear.model", "ensemble": "models.deep_linear._ensemble",
    "tasks": "models.deep_linear._tasks", "modular": "models.grokking._modular",
    "mlp_ensemble": "models.grokking.mlp._ensemble",
    "transformer_ensemble": "models.grokking.transformer._ensemble",
    "replica_model": "models.base", "grok_model": "models.grokking.trial",
    "detector": "engine._detector", "trials": "engine._trials", "storage": "engine._storage",
    "memory": "engine._memory",
    "search_identity": "search._identity", "search_sampling": "search._sampling",
    "search_space": "search._space", "search_storage": "search._storage",
    "optimize": "search._optimize", "compare": "search._compare",
    "hysteresis": "sweep._hysteresis", "sweep_study": "sweep._study",
    "report_page": "report._page", "sweep_figure": "report._sweep_figure",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``escapestat.<old>`` to the module now at ``escapestat.<new>``."""

    def find_spec(self, name, path=None, target=None):
        head, _, old = name.partition(".")
        if head == "escapestat" and old in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = "escapestat." + MOVED[spec.name.partition(".")[2]]
        warnings.warn(f"{spec.name} has moved to {new} (or import from its package); the "
                      f"old path is removed in escapestat 0.9", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module is the one at the new path, already executed."""


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        # First: the path finder would take escapestat/native/ (C sources) as a package.
        sys.meta_path.insert(0, _MovedFinder())
