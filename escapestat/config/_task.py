"""The ``[task]`` table's arithmetic without torch: which operations exist, how many pairs
a table has and how many of them train (the tensors are ``models.grokking._modular``)."""

from __future__ import annotations

#: The operations a∘b mod p by name (``div``: b ≠ 0, p prime; ``poly``: a² + ab + b²).
OPERATION_NAMES = ("add", "sub", "mul", "div", "poly")


def train_size(n_pairs: int, train_fraction: float) -> int:
    """n_train = round(f · N), at least 1 and at most N − 1 (the rest is the test set)."""
    return min(max(round(train_fraction * n_pairs), 1), n_pairs - 1)


def table_size(operation: str, p: int) -> int:
    """Rows of the table a∘b mod p: p² pairs, p(p − 1) for division (b ≠ 0)."""
    return p * (p - 1) if operation == "div" else p * p
