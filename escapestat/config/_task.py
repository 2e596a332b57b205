"""The ``[task]`` table's arithmetic without torch: which operations exist, how many pairs
a table has and how many of them train (the tensors are ``models.grokking._modular``)."""

from __future__ import annotations

#: The operations a∘b mod p by name (``div``: b ≠ 0, p prime; ``poly``: a² + ab + b²).
OPERATION_NAMES = ("add", "sub", "mul", "div", "poly")


#: How n_train = f · N is made whole: ``round`` (the default) or ``floor`` (Python's
#: ``int(f · N)``, as in Nanda et al.'s code).
TRAIN_ROUNDINGS = ("round", "floor")


def train_size(n_pairs: int, train_fraction: float, rounding: str = "round") -> int:
    """n_train = round(f · N) (``rounding`` "floor": int(f · N)), at least 1 and at most
    N − 1 (the rest is the test set)."""
    whole = int(train_fraction * n_pairs) if rounding == "floor" else round(
        train_fraction * n_pairs)
    return min(max(whole, 1), n_pairs - 1)


def table_size(operation: str, p: int) -> int:
    """Rows of the table a∘b mod p: p² pairs, p(p − 1) for division (b ≠ 0)."""
    return p * (p - 1) if operation == "div" else p * p
