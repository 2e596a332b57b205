"""``kind = "mlp"``: its [model] keys."""

from __future__ import annotations

from dataclasses import dataclass

from escapestat.models.grokking.spec import GrokkingSpec


@dataclass(frozen=True)
class MLPSpec(GrokkingSpec):
    """One hidden layer of ``width`` on per-operand embeddings; ``activation`` quadratic,
    relu or gelu."""

    width: int = 128
    """Hidden units of the one hidden layer (the C kernels need a multiple of 16 in
    float32, 8 in float64)."""
    activation: str = "quadratic"
    """`quadratic`, `relu` or `gelu`."""

    def check_model(self, bad) -> None:
        if self.activation not in ("quadratic", "relu", "gelu"):
            bad("[model] activation", f"must be 'quadratic', 'relu' or 'gelu', got "
                f"{self.activation!r}")
        if self.width < 1:
            bad("[model] width", f"must be ≥ 1, got {self.width}")

    def sizes(self, p: int, batch: int) -> tuple[int, int]:
        return 3 * p * self.width, batch * (self.width + p)
