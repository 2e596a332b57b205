"""Modular-arithmetic tables, per-replica splits, label noise and minibatches."""

from __future__ import annotations

import pytest
import torch

from escapestat.errors import EscapestatError
from escapestat.models.grokking._modular import (
    OPERATIONS,
    MinibatchPairs,
    make_splits,
    make_task,
    modular_table,
    noisy_labels,
)


def brute_force(operation: str, p: int) -> dict[tuple[int, int], int]:
    """c for every valid (a, b), by plain integer loops (division by search, not Fermat)."""
    table = {}
    for a in range(p):
        for b in range(p):
            if operation == "add":
                table[a, b] = (a + b) % p
            elif operation == "sub":
                table[a, b] = (a - b) % p
            elif operation == "mul":
                table[a, b] = (a * b) % p
            elif operation == "poly":
                table[a, b] = (a * a + a * b + b * b) % p
            elif b:  # div: the c with c·b ≡ a
                table[a, b] = next(c for c in range(p) if (c * b) % p == a)
    return table


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("p", [5, 7, 11])
def test_table_matches_brute_force(operation, p):
    pairs, labels = modular_table(operation, p)
    got = {(int(a), int(b)): int(c) for (a, b), c in zip(pairs.tolist(), labels, strict=True)}
    assert got == brute_force(operation, p)
    assert len(got) == len(labels)  # no pair twice
    assert pairs.dtype == labels.dtype == torch.long


def test_composite_modulus_is_fine_except_for_division():
    for op in ("add", "sub", "mul", "poly"):
        assert modular_table(op, 6)[1].numel() == 36
    with pytest.raises(EscapestatError, match="prime"):
        modular_table("div", 6)


@pytest.mark.parametrize("call, match", [
    (lambda: modular_table("pow", 7), "add, sub, mul, div, poly"),
    (lambda: modular_table("add", 2), "p must be an integer ≥ 3"),
    (lambda: modular_table("add", 7.0), "p must be an integer ≥ 3"),
    (lambda: make_splits(49, 2, 0.0), r"train_fraction must be in \(0, 1\)"),
    (lambda: make_splits(49, 2, 1.0), r"train_fraction must be in \(0, 1\)"),
    (lambda: make_task("add", 7, 2, 0.5, label_noise=1.5), r"label_noise must be in \[0, 1\]"),
    (lambda: make_splits(49, 0, 0.5), "replicas must be at least 1"),
])
def test_bad_inputs_are_one_line_errors(call, match):
    with pytest.raises(EscapestatError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_splits_are_disjoint_cover_every_pair_and_differ_per_replica():
    n, r = 49, 6
    s = make_splits(n, r, 0.3, torch.Generator().manual_seed(0))
    assert s.train.shape == (r, round(0.3 * n)) and s.test.shape == (r, n - round(0.3 * n))
    for train, test in zip(s.train, s.test, strict=True):
        assert sorted(train.tolist() + test.tolist()) == list(range(n))
    assert len({tuple(t.tolist()) for t in s.train}) == r  # each replica its own split


def test_same_seed_same_splits_other_seed_other_splits():
    def split(seed):
        return make_splits(49, 4, 0.5, torch.Generator().manual_seed(seed))

    assert torch.equal(split(3).train, split(3).train)
    assert not torch.equal(split(3).train, split(4).train)


def test_extreme_fractions_keep_one_pair_on_each_side():
    assert make_splits(49, 2, 0.001).train.shape[1] == 1
    assert make_splits(49, 2, 0.999).test.shape[1] == 1


def test_label_noise_relabels_the_stated_fraction_of_train_labels_only():
    g = torch.Generator().manual_seed(1)
    task = make_task("add", 23, 64, 0.5, label_noise=0.2, generator=g)
    clean = task.labels[task.splits.train]
    changed = (task.train_labels != clean).float()
    k = round(0.2 * clean.shape[1])
    assert int(changed.sum(1).max()) <= k
    # A relabelled entry keeps its class with probability 1/p.
    assert changed.sum(1).mean().item() == pytest.approx(k * (1 - 1 / 23), rel=0.05)
    assert len({tuple(row.tolist()) for row in changed}) > 1  # per replica
    assert torch.equal(task.test_labels(), task.labels[task.splits.test])


def test_no_label_noise_means_clean_labels():
    task = make_task("mul", 7, 3, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(task.train_labels, task.labels[task.splits.train])
    assert torch.equal(noisy_labels(task.train_labels, 0.0, 7), task.train_labels)


def table_rows(task, pairs):
    """Table row of each pair (add: row = a·p + b)."""
    return pairs[..., 0] * task.p + pairs[..., 1]


def test_minibatches_cover_each_replica_split_once_per_epoch():
    g = torch.Generator().manual_seed(5)
    task = make_task("add", 7, 5, 0.5, generator=g)  # 24 training pairs
    batches = MinibatchPairs(task, 10, g)
    orders = []
    for _ in range(2):  # two epochs: 10 + 10 + 4
        parts = [batches.next_batch() for _ in range(3)]
        assert [p.shape[1] for p, _ in parts] == [10, 10, 4]
        rows = torch.cat([table_rows(task, p) for p, _ in parts], dim=1)
        assert torch.equal(rows.sort(1).values, task.splits.train)
        labels = torch.cat([y for _, y in parts], dim=1)
        assert torch.equal(labels, task.labels[rows])
        orders.append(rows)
    assert not torch.equal(orders[0], orders[1])  # reshuffled each epoch
    first = table_rows(task, parts[0][0])
    assert len({tuple(row.tolist()) for row in first}) == 5  # own order per replica


def test_full_batch_and_keep():
    g = torch.Generator().manual_seed(6)
    task = make_task("sub", 7, 4, 0.5, label_noise=0.5, generator=g)
    pairs, labels = MinibatchPairs(task, 100, g).next_batch()
    assert torch.equal(table_rows(task, pairs), task.splits.train)
    assert torch.equal(labels, task.train_labels)
    batches = MinibatchPairs(task, 5, g)
    batches.next_batch()
    idx = torch.tensor([3, 1])
    before = (task.splits.train[idx], task.train_labels[idx])
    task.keep(idx)
    batches.keep(idx)
    assert torch.equal(task.splits.train, before[0]) and torch.equal(task.train_labels, before[1])
    pairs, labels = batches.next_batch()
    assert pairs.shape == (2, 5, 2)
    for r in range(2):  # the kept replicas' batches still come from their own splits
        assert set(table_rows(task, pairs[r]).tolist()) <= set(task.splits.train[r].tolist())
