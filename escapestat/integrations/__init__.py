"""Callbacks for training frameworks, each a thin layer over ``escapestat.monitor``.

Nothing here imports a framework; each integration lives in its own module and needs
its library only when imported:

- ``escapestat.integrations.lightning``: ``EscapeCallback``, a PyTorch Lightning
  ``Callback`` (``pip install 'escapestat[lightning]'``; ``pytorch_lightning`` works too);
- ``escapestat.integrations.huggingface``: ``EscapeCallback``, a transformers
  ``TrainerCallback`` (``pip install 'escapestat[huggingface]'``, which brings
  ``transformers[torch]``: the Trainer needs accelerate).

Without its library, importing a module raises ``MissingIntegration`` (both an
``ImportError`` and an ``EscapestatError``) with the line to install it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from escapestat.errors import EscapestatError


class MissingIntegration(EscapestatError, ImportError):
    """A framework integration was imported without its framework installed."""


def import_first(modules: list[str], name: str, pip: str, integration: str):
    """``name`` from the first importable module of ``modules``, else one clear error."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            continue
    raise MissingIntegration(f"{integration} needs {' or '.join(modules)}, which is not "
                             f"installed: pip install {pip}")


def scalar_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric scalars of a framework's metrics dict (tensors of one element included);
    text, bools, lists and larger tensors are left out."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool | str):
            continue
        if hasattr(value, "numel") and value.numel() != 1:
            continue
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        out[str(key)] = number  # non-finite values stay: the monitor counts them
    return out


__all__ = ["MissingIntegration", "import_first", "scalar_metrics"]
