"""A study's replicas laid out in chunks: each one batched model with its own seed, so a
chunk's result is fixed by (study, chunk index) and a killed run resumes chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from escapestat.config._study import Condition, Study
from escapestat.engine._memory import check_memory
from escapestat.errors import EscapestatError


def _batch_key(cond: Condition) -> tuple:
    """Chunks share one batch-size schedule; constants sort by size (keeps chunk seeds)."""
    b = cond.batch_size
    if b is None:
        return (0, 0.0, "")
    return (0 if b.is_constant else 1, b.value(0) if b.is_constant else 0.0, b.describe())


@dataclass(frozen=True)
class Chunk:
    """A block of replicas run as one batched model: which condition and replica each is."""

    index: int
    condition: tuple[int, ...]
    replica: tuple[int, ...]

    def seed(self, study_seed: int) -> int:
        """Independent per-chunk seed derived from the study seed (SeedSequence spawning)."""
        return int(np.random.SeedSequence([study_seed, self.index]).generate_state(1)[0])


def plan_chunks(study: Study, conds: list[Condition]) -> list[Chunk]:
    """Replica-major layout so every chunk spans the ladder; one batch-size schedule per chunk.

    A study whose plan or largest chunk cannot fit in memory is refused first (``memory``).
    """
    check_memory(study, len(conds))
    chunks: list[Chunk] = []
    for key in sorted({_batch_key(c) for c in conds}):
        ids = [i for i, c in enumerate(conds) if _batch_key(c) == key]
        pairs = [(c, r) for r in range(study.run.replicas) for c in ids]
        step = study.run.chunk_replicas
        for start in range(0, len(pairs), step):
            block = pairs[start : start + step]
            chunks.append(Chunk(len(chunks), *map(tuple, zip(*block, strict=True))))
    return chunks


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EscapestatError("--device cuda: no CUDA device is available here")
    if device not in ("cpu", "cuda"):
        raise EscapestatError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


