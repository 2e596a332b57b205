"""Model kinds: ``[model] kind`` → its torch-free spec and its replica-model class.

One line per kind, both as "module:Class" so that reading a study never imports torch;
the model class is imported only when a run builds it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from escapestat.errors import EscapestatError


@dataclass(frozen=True)
class Entry:
    spec: str  # "module:Class" of the ModelSpec subclass (torch-free)
    model: str  # "module:Class" of the ReplicaModel subclass


_P = "escapestat.models."
MODELS: dict[str, Entry] = {
    "deep_linear": Entry(_P + "deep_linear.spec:DeepLinearSpec", "escapestat.models.deep_linear.model:DeepLinearTrial"),  # noqa: E501
    "mlp": Entry(_P + "grokking.mlp.spec:MLPSpec", _P + "grokking.mlp.model:MLPTrial"),
    "transformer": Entry(_P + "grokking.transformer.spec:TransformerSpec", _P + "grokking.transformer.model:TransformerTrial"),  # noqa: E501
    "transformer2": Entry(_P + "grokking.transformer2.spec:Transformer2Spec", _P + "grokking.transformer2.model:Transformer2Trial"),  # noqa: E501
}
DEFAULT_KIND = "deep_linear"


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def kinds() -> list[str]:
    return list(MODELS)


def kind_of(cls) -> str:
    """The registered kind whose spec is ``cls`` ("" for a class the registry does not name)."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    return next((kind for kind, entry in MODELS.items() if entry.spec == path), "")


def spec_class(kind: str):
    """The ``ModelSpec`` subclass of ``kind``."""
    if kind not in MODELS:
        raise EscapestatError(f"must be one of {', '.join(repr(k) for k in MODELS)}, "
                              f"got {kind!r}")
    return _load(MODELS[kind].spec)


def model_class(kind: str):
    """The ``ReplicaModel`` subclass that runs ``kind`` (imports torch)."""
    spec_class(kind)
    return _load(MODELS[kind].model)


def task_kinds() -> list[str]:
    """The kinds that learn a modular-arithmetic task (the grokking models)."""
    return [k for k in MODELS if spec_class(k).learns_task]
