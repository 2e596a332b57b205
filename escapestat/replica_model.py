"""The replica model's base class and per-step hyperparameters (``models.base``)."""

from .models.base import Hyper, ReplicaModel

__all__ = ["Hyper", "ReplicaModel"]
