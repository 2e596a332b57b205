"""``kind = "transformer2"``: its [model] keys."""

from __future__ import annotations

from dataclasses import dataclass

from escapestat.models.grokking.spec import GrokkingSpec


@dataclass(frozen=True)
class Transformer2Spec(GrokkingSpec):
    """``n_layers`` pre-LayerNorm decoder blocks on [a, ∘, b, =] (Power et al. 2022;
    Grokfast's baseline): ``d_model`` 128, ``n_heads`` 4, ``n_layers`` 2, ``d_mlp`` 512."""

    d_model: int = 128
    """Width of the residual stream (a multiple of `n_heads`)."""
    n_heads: int = 4
    """Causal attention heads per block."""
    n_layers: int = 2
    """Pre-LayerNorm decoder blocks."""
    d_mlp: int = 512
    """Hidden units of each block's GELU MLP."""

    def check_model(self, bad) -> None:
        if min(self.d_model, self.n_heads, self.n_layers, self.d_mlp) < 1 or (
                self.d_model % self.n_heads):
            bad("[model]", "d_model, n_heads, n_layers and d_mlp must be ≥ 1, d_model a "
                "multiple of n_heads")

    def sizes(self, p: int, batch: int) -> tuple[int, int]:
        d, layers = self.d_model, self.n_layers
        params = (p + 6) * d + p * d + layers * (4 * d * d + 2 * d * self.d_mlp + 9 * d)
        acts = batch * 4 * layers * (8 * d + 2 * self.d_mlp + 4 * self.n_heads)
        return params, acts
