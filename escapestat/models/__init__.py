"""Replica models (torch): ``base`` declares what the engine uses; one folder per kind
(``deep_linear``, ``grokking/mlp``, ``grokking/transformer``, ``grokking/transformer2``),
each with its torch-free ``spec.py`` and its ``model.py``; ``config._registry`` maps a
``[model] kind`` to both. The optimisers, the Grokfast filters, the float32-safe
cross-entropy and the C kernels sit beside them."""


def __getattr__(name: str):
    """``cross_entropy`` (for a user's own loop) and the base classes, imported on use so
    that ``escapestat.models`` stays cheap to import."""
    if name == "cross_entropy":
        from escapestat.models._xent import cross_entropy

        return cross_entropy
    if name in ("Hyper", "ReplicaModel"):
        from escapestat.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'escapestat.models' has no attribute {name!r}")
