"""Modular-arithmetic tasks for grokking: tables of index pairs, per-replica splits and batches.

A task is c = a ∘ b mod p over all valid pairs (a, b) with a, b ∈ {0, …, p − 1}:

=========  ===================  ==========================================
name       c                    pairs
=========  ===================  ==========================================
``add``    a + b                all p²
``sub``    a − b                all p²
``mul``    a · b                all p²
``div``    a · b⁻¹              b ≠ 0: p(p − 1); p must be prime (b⁻¹ = b^(p−2))
``poly``   a² + a·b + b²        all p²
=========  ===================  ==========================================

Every replica gets its own random train/test split of the table (``make_splits``) and,
optionally, its own label noise on its training labels (``noisy_labels``). Data stay
indices: a split is an [R, n] tensor of row numbers into the one shared table, and pairs
are gathered per minibatch (``MinibatchPairs``), never expanded into one-hot matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from escapestat.config._task import OPERATION_NAMES, table_size, train_size  # noqa: F401
from escapestat.errors import EscapestatError
from escapestat.models.deep_linear._ensemble import permutations

_Op = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _div(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    inverse = torch.tensor([pow(x, p - 2, p) if x else 0 for x in range(p)], device=b.device)
    return a * inverse[b] % p


#: The operations by name: c = f(a, b, p), on long tensors a, b of equal shape.
OPERATIONS: dict[str, _Op] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: a * b % p,
    "div": _div,
    "poly": lambda a, b, p: (a * a + a * b + b * b) % p,
}
assert tuple(OPERATIONS) == OPERATION_NAMES


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _check_operation(operation: str, p: int) -> None:
    if operation not in OPERATIONS:
        raise EscapestatError(
            f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}"
        )
    if isinstance(p, bool) or not isinstance(p, int) or p < 3:
        raise EscapestatError(f"modulus p must be an integer ≥ 3, got {p!r}")
    if operation == "div" and not _is_prime(p):
        raise EscapestatError(f"operation 'div' needs a prime modulus, got p = {p}")


def modular_table(operation: str, p: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All valid pairs of ``operation`` mod p and their results.

    Returns
    -------
    pairs : [N, 2] long
        (a, b) in row-major order (a slow, b fast); b starts at 1 for ``div``.
    labels : [N] long
        c = a ∘ b mod p.
    """
    _check_operation(operation, p)
    values = torch.arange(p, device=device)
    a, b = torch.meshgrid(values, values[1:] if operation == "div" else values, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    return torch.stack([a, b], dim=1), OPERATIONS[operation](a, b, p)


def _check_fraction(name: str, value: float, low_open: bool) -> float:
    value = float(value)
    ok = (0 < value < 1) if low_open else (0 <= value <= 1)
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1]"
        raise EscapestatError(f"{name} must be in {interval}, got {value:g}")
    return value


@dataclass
class ModularSplits:
    """Each replica's rows of one table: ``train`` [R, n_train] and ``test`` [R, n_test].

    Row r of ``train`` and of ``test`` are disjoint and together hold every table row once.
    """

    train: torch.Tensor
    test: torch.Tensor

    @property
    def replicas(self) -> int:
        return int(self.train.shape[0])

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order)."""
        self.train, self.test = self.train[idx], self.test[idx]


def make_splits(n_pairs: int, replicas: int, train_fraction: float,
                generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", rounding: str = "round") -> ModularSplits:
    """An independent random split of ``n_pairs`` table rows per replica.

    Each replica draws its own uniform permutation; its first n_train = round(f · N) rows
    (``rounding`` "floor": int(f · N); at least 1, at most N − 1) are its training set,
    sorted, and the rest its test set.
    """
    f = _check_fraction("train_fraction", train_fraction, low_open=True)
    if n_pairs < 2:
        raise EscapestatError(f"a split needs at least 2 pairs, got {n_pairs}")
    if replicas < 1:
        raise EscapestatError(f"replicas must be at least 1, got {replicas}")
    n_train = train_size(n_pairs, f, rounding)
    perm = permutations(replicas, n_pairs, generator, device)
    return ModularSplits(perm[:, :n_train].sort(dim=1).values,
                         perm[:, n_train:].sort(dim=1).values)


def noisy_labels(labels: torch.Tensor, fraction: float, classes: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``labels`` [R, n] with round(fraction · n) entries per replica relabelled.

    Each replica's relabelled positions are a uniform random subset, and each gets a
    class drawn uniformly from {0, …, classes − 1} — which may, with probability
    1/classes, be the true one (the usual "random labels" convention).
    """
    fraction = _check_fraction("label_noise", fraction, low_open=False)
    r, n = labels.shape
    k = round(fraction * n)
    if k == 0:
        return labels.clone()
    keys = torch.rand(r, n, generator=generator, device=labels.device)
    where = keys.argsort(dim=1)[:, :k]
    new = torch.randint(0, classes, (r, k), generator=generator, device=labels.device)
    return labels.clone().scatter_(1, where, new)


@dataclass
class ModularTask:
    """One operation's table with every replica's split and (possibly noisy) training labels.

    ``pairs`` [N, 2] and ``labels`` [N] are the shared table; ``splits`` holds each
    replica's rows; ``train_labels`` [R, n_train] are the labels the replicas train on.
    Test labels are always the clean ones.
    """

    operation: str
    p: int
    pairs: torch.Tensor
    labels: torch.Tensor
    splits: ModularSplits
    train_labels: torch.Tensor

    @property
    def replicas(self) -> int:
        return self.splits.replicas

    def train_pairs(self) -> torch.Tensor:
        """[R, n_train, 2] each replica's training pairs (gathered on call)."""
        return self.pairs[self.splits.train]

    def test_pairs(self) -> torch.Tensor:
        """[R, n_test, 2] each replica's test pairs (gathered on call)."""
        return self.pairs[self.splits.test]

    def test_labels(self) -> torch.Tensor:
        """[R, n_test] each replica's clean test labels (gathered on call)."""
        return self.labels[self.splits.test]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, only the replicas at positions ``idx`` (1-D integers, in that order)."""
        idx = idx.to(self.train_labels.device)
        self.splits.keep(idx)
        self.train_labels = self.train_labels[idx]


def make_task(operation: str, p: int, replicas: int, train_fraction: float,
              label_noise: float = 0.0, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", rounding: str = "round") -> ModularTask:
    """The table of ``operation`` mod p, split per replica (``rounding``: see
    ``make_splits``), with optional training-label noise."""
    pairs, labels = modular_table(operation, p, device)
    splits = make_splits(len(labels), replicas, train_fraction, generator, device, rounding)
    train_labels = noisy_labels(labels[splits.train], label_noise, p, generator)
    return ModularTask(operation, p, pairs, labels, splits, train_labels)


class MinibatchPairs:
    """Minibatches without replacement from each replica's own training split.

    The same epoch rule as ``ensemble.MinibatchSampler``: each epoch every replica draws
    its own permutation of its training rows, and a call takes its next B rows; when fewer
    than B remain the call gets those (the epoch's last, smaller batch) and the next call
    reshuffles. A batch size ≥ n_train is full batch: every training pair, in stored
    order, drawing nothing.
    """

    def __init__(self, task: ModularTask, batch_size: int,
                 generator: torch.Generator | None = None):
        if batch_size < 1:
            raise EscapestatError(f"batch size must be at least 1, got {batch_size}")
        self.task, self.batch_size, self.generator = task, int(batch_size), generator
        self.n = int(task.splits.train.shape[1])
        self._rows: torch.Tensor | None = None  # this epoch's table rows, in order, [R, n]
        self._labels: torch.Tensor | None = None
        self._pos = self.n
        self._full: tuple[torch.Tensor, torch.Tensor] | None = None

    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairs [R, b, 2], labels [R, b]) for every replica's next minibatch."""
        b = self.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise EscapestatError(f"batch size must be at least 1, got {b}")
        if b >= self.n:
            if self._full is None:
                self._full = (self.task.train_pairs(), self.task.train_labels)
            return self._full
        if self._pos >= self.n:
            self._shuffle()
        rows, labels = self._rows, self._labels
        assert rows is not None and labels is not None  # drawn by _shuffle at the epoch's start
        pos, self._pos = self._pos, min(self._pos + b, self.n)
        return self.task.pairs[rows[:, pos:self._pos]], labels[:, pos:self._pos]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep, in place, the replicas at ``idx``; the task's owner keeps the task itself."""
        idx = idx.to(self.task.pairs.device)
        if self._rows is not None and self._labels is not None:  # drawn together (_shuffle)
            self._rows, self._labels = self._rows[idx], self._labels[idx]
        self._full = None

    def _shuffle(self) -> None:
        task = self.task
        perm = permutations(task.replicas, self.n, self.generator, task.pairs.device)
        self._rows = task.splits.train.gather(1, perm)
        self._labels = task.train_labels.gather(1, perm)
        self._pos = 0
