"""``kind = "transformer"`` as a replica model: Nanda et al.'s one-layer transformer
(``transformer_ensemble``) on the task."""

from __future__ import annotations

import torch

from escapestat.models.grokking.transformer._ensemble import TransformerEnsemble
from escapestat.models.grokking.transformer.spec import READOUTS
from escapestat.models.grokking.trial import GrokTrial


class TransformerTrial(GrokTrial):
    """R one-layer transformers learning a∘b mod p (C attention kernels on the CPU)."""

    native_kernels = True

    @staticmethod
    def build_network(study, replicas: int, generator: torch.Generator, dtype: torch.dtype,
                      device: torch.device) -> TransformerEnsemble:
        m = study.model
        return TransformerEnsemble(replicas, study.task.p, m.d_model, m.n_heads, m.d_mlp,
                                   m.init_scale, generator=generator, dtype=dtype, device=device,
                                   classes=study.task.p + READOUTS[m.readout])
