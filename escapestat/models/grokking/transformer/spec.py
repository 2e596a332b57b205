"""``kind = "transformer"``: its [model] keys."""

from __future__ import annotations

from dataclasses import dataclass

from escapestat.models.grokking.spec import GrokkingSpec

#: ``readout`` → classes beyond p.
READOUTS = {"p": 0, "p+1": 1}


@dataclass(frozen=True)
class TransformerSpec(GrokkingSpec):
    """One layer in the style of Nanda et al. (2023): ``d_model``, ``n_heads``, ``d_mlp``."""

    d_model: int = 128
    """Width of the residual stream (a multiple of `n_heads`)."""
    n_heads: int = 4
    """Attention heads."""
    d_mlp: int = 512
    """Hidden units of the MLP block."""
    readout: str = "p"
    """Classes the logits cover: "p" (the answers) or "p+1" (the answers and "=", as Nanda
    et al.'s unembedding over the whole vocabulary)."""

    def check_model(self, bad) -> None:
        if min(self.d_model, self.n_heads, self.d_mlp) < 1 or self.d_model % self.n_heads:
            bad("[model]", "d_model, n_heads and d_mlp must be ≥ 1, d_model a multiple of "
                "n_heads")
        if self.readout not in READOUTS:
            bad("[model] readout", f"must be 'p' or 'p+1', got {self.readout!r}")

    def sizes(self, p: int, batch: int) -> tuple[int, int]:
        d = self.d_model
        return ((p + 3) * d + 4 * d**2 + 2 * d * self.d_mlp,
                batch * 3 * (4 * d + self.d_mlp + self.n_heads * 3))
