"""``kind = "mlp"`` as a replica model: the MLP ensemble (``mlp_ensemble``) on the task."""

from __future__ import annotations

import torch

from escapestat.models.grokking.mlp._ensemble import MLPEnsemble
from escapestat.models.grokking.trial import GrokTrial


class MLPTrial(GrokTrial):
    """R MLPs learning a∘b mod p (C kernels on the CPU)."""

    native_kernels = True

    @staticmethod
    def build_network(study, replicas: int, generator: torch.Generator, dtype: torch.dtype,
                      device: torch.device) -> MLPEnsemble:
        m = study.model
        return MLPEnsemble.random(replicas, study.task.p, m.width, m.activation, m.init_scale,
                                  generator=generator, dtype=dtype, device=device)
