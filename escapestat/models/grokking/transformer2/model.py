"""``kind = "transformer2"`` as a replica model: the two-layer decoder (``network``)."""

from __future__ import annotations

import torch

from escapestat.models.grokking.transformer2.network import Transformer2Ensemble
from escapestat.models.grokking.trial import GrokTrial


class Transformer2Trial(GrokTrial):
    """R two-layer transformers learning a∘b mod p (autograd; no C kernel)."""

    @staticmethod
    def build_network(study, replicas: int, generator: torch.Generator, dtype: torch.dtype,
                      device: torch.device) -> Transformer2Ensemble:
        m = study.model
        return Transformer2Ensemble(replicas, study.task.p, m.d_model, m.n_heads, m.n_layers,
                                    m.d_mlp, m.init_scale, generator=generator, dtype=dtype,
                                    device=device)
