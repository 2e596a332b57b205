"""The mechanism verdict (design §4) on simulated data with known mechanisms."""

from __future__ import annotations

import numpy as np
import pytest

from escapestat.survival import describe
from escapestat.verdict import mechanism


def test_exponential_escapes_are_activated():
    rng = np.random.default_rng(1)
    t = rng.exponential(200.0, 300)
    budget = 600.0  # ~5% censored
    s = describe(np.minimum(t, budget), (t < budget).astype(int), seed=1)
    assert s.verdict == "activated", s.verdict_reason


def test_narrow_weibull_times_are_deterministic():
    rng = np.random.default_rng(2)
    t = 1000.0 * rng.weibull(6.0, 200)
    s = describe(t, np.ones_like(t, dtype=int), seed=2)
    assert s.verdict == "deterministic" and s.weibull_shape_ci[0] >= 2


def test_no_escapes_is_absorbing_with_the_rate_bound():
    s = describe(np.full(40, 5000.0), np.zeros(40, dtype=int))
    assert s.verdict == "absorbing"
    assert "no escapes in 40 replicas" in s.verdict_reason
    assert f"{s.rate_ci[1]:.3g}" in s.verdict_reason


def test_grid_data_from_an_exponential_are_not_called_deterministic():
    """Escape times rounded up to a check grid (as the engine records them)."""
    rng = np.random.default_rng(3)
    t = np.ceil(rng.exponential(100.0, 300) / 10) * 10
    s = describe(t, np.ones_like(t, dtype=int), seed=3, grid=10)
    assert s.verdict in ("activated", "inconclusive") and s.verdict != "deterministic"


@pytest.mark.parametrize("args, kind, words", [
    ((50, 30, (0.8, 1.3), 0.2), "activated", "holds 1"),
    ((50, 30, (0.8, 1.3), 0.01), "inconclusive", "KS test rejects"),
    ((50, 30, (1.2, 1.9), 0.3), "inconclusive", "above 1 but not ≥ 2"),
    ((50, 30, (0.4, 0.8), 0.3), "inconclusive", "below 1"),
    ((50, 30, (2.0, 3.5), 0.0), "deterministic", "drift-set"),
    ((50, 1, (float("nan"), float("nan")), float("nan")), "inconclusive", "too few"),
    ((50, 0, (float("nan"), float("nan")), float("nan")), "absorbing", "no escapes"),
])
def test_the_rule_branch_by_branch(args, kind, words):
    v = mechanism(*args)
    assert v.mechanism == kind and words in v.reason


def test_verdict_is_in_fit_json(cli, ladder_csv):
    import json
    code, out, err = cli("fit", ladder_csv, "--group-col", "temperature", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert all(g["verdict"] in ("activated", "inconclusive") for g in groups)
    assert all(g["verdict_reason"] for g in groups)
