"""The escape rules, pinned by scripted order-parameter sequences (no training).

Each test drives ``EscapeDetector`` the way the engine does — a check every 10 steps,
finished replicas leaving — and checks the status and duration it assigns. Together
they fail if the fall-back reset, the crossing-step (not commit-step) time, the budget
rule or the divergence rule is removed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from escapestat.engine._detector import EscapeDetector, EscapeRule

RULE = EscapeRule(threshold=0.5, fallback=0.25, commit_steps=30)
NAN = math.nan


def drive(sequences: list[list[float]], max_steps: int, every: int = 10, rule=RULE):
    """Feed q[i][k] at step (k + 1)·every to replica i; returns [(status, duration)]."""
    n = len(sequences)
    det = EscapeDetector(rule, max_steps, n)
    active = np.arange(n)
    out: list[tuple[str, float] | None] = [None] * n
    k = 0
    while active.size:
        step = (k + 1) * every
        q = torch.tensor([sequences[i][k] if k < len(sequences[i]) else sequences[i][-1]
                          for i in active], dtype=torch.float64)
        d = det.check(step, q, torch.isfinite(q))
        for mask, label in ((d.escaped, "escaped"), (d.censored, "censored"),
                            (d.diverged, "diverged")):
            for j in np.flatnonzero(mask.numpy()):
                out[active[j]] = (label, float(d.time[j]))
        keep = ~d.done.numpy()
        det.keep(torch.as_tensor(np.flatnonzero(keep)))
        active = active[keep]
        k += 1
        assert k < 10_000, "the detector never finished"
    return out


def test_escape_is_timed_at_the_crossing_not_the_commit():
    # Crosses at step 30 and holds: committed at step 60, recorded at 30.
    assert drive([[0.0, 0.1, 0.6, 0.7, 0.8, 0.9, 1.0]], 1000) == [("escaped", 30.0)]


def test_fall_back_forgets_the_crossing():
    # Crosses at 20, falls back below 0.25 at 40, crosses again at 60 and holds.
    seq = [0.0, 0.6, 0.55, 0.1, 0.2, 0.7, 0.8, 0.9, 0.9, 0.9]
    assert drive([seq], 1000) == [("escaped", 60.0)]


def test_dip_between_fallback_and_threshold_keeps_the_crossing():
    # Dips to 0.3 (above fall-back): the crossing at 20 stands once it has held 30 steps.
    assert drive([[0.0, 0.6, 0.3, 0.6, 0.7]], 1000) == [("escaped", 20.0)]


def test_never_crossing_is_censored_at_the_budget():
    assert drive([[0.0, 0.1, 0.2, 0.1]], 50) == [("censored", 50.0)]


def test_crossing_pending_at_the_budget_runs_on_until_it_commits():
    # Crosses at 40, budget 50: keeps running, commits at 70 -> escape at 40 (≤ budget).
    assert drive([[0.0, 0.0, 0.0, 0.6, 0.6, 0.6, 0.6]], 50) == [("escaped", 40.0)]


def test_crossing_pending_at_the_budget_that_falls_back_is_censored_at_the_budget():
    assert drive([[0.0, 0.0, 0.0, 0.6, 0.6, 0.1]], 50) == [("censored", 50.0)]


def test_divergence_is_censored_where_it_happened():
    assert drive([[0.0, 0.1, NAN]], 1000) == [("diverged", 30.0)]


def test_divergence_during_a_pending_crossing_is_not_an_escape():
    assert drive([[0.0, 0.6, 0.6, NAN]], 1000) == [("diverged", 40.0)]


def test_committed_before_divergence_is_an_escape():
    # Commits at 50 (crossing at 20); the NaN at 60 comes after the replica has left.
    assert drive([[0.0, 0.6, 0.6, 0.6, 0.6, NAN]], 1000) == [("escaped", 20.0)]


def test_divergence_after_the_budget_is_censored_at_the_budget():
    assert drive([[0.0, 0.0, 0.0, 0.6, NAN]], 40) == [("diverged", 40.0)]


def test_replicas_are_independent_and_leave_when_decided():
    seqs = [[0.0, 0.6, 0.6, 0.6, 0.6], [0.0] * 10, [0.0, NAN], [0.6, 0.1, 0.6, 0.6, 0.6, 0.6]]
    assert drive(seqs, 100) == [("escaped", 20.0), ("censored", 100.0), ("diverged", 20.0),
                                ("escaped", 30.0)]


def test_untrapped_at_the_start():
    det = EscapeDetector(RULE, 100, 4)
    q = torch.tensor([0.0, 0.24, 0.25, NAN], dtype=torch.float64)
    finite = torch.tensor([True, False, True, True])
    assert det.untrapped(q, finite).tolist() == [False, True, True, True]


@pytest.mark.parametrize("commit", [0, 10, 25])
def test_commit_window_length(commit):
    rule = EscapeRule(0.5, 0.25, commit)
    # Crosses at 20 and falls back at 40: escapes only if the window ended by step 30.
    out = drive([[0.0, 0.6, 0.6, 0.1, 0.0]], 60, rule=rule)
    assert out == ([("escaped", 20.0)] if commit <= 10 else [("censored", 60.0)])
