"""The grokking replica models (``models.grokking``); kept for the old import path."""

from .models.grokking.trial import GrokTrial, build_optimizer

__all__ = ["GrokTrial", "build_optimizer"]
