"""Replica heterogeneity on an Arrhenius ladder: each replica escapes at k(T)·Z with a gamma
frailty Z (mean 1, variance θ). The Poisson barrier is biased by it; the gamma-frailty fit
detects it and is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from testdata import BARRIER, GRID, ladder

from escapestat.stats._arrhenius import fit_arrhenius
from escapestat.stats._frailty import fit_frailty_arrhenius
from escapestat.table._records import Columns

COLS = Columns(temperature="temperature")




def test_heterogeneous_replicas_bias_the_poisson_barrier_and_the_frailty_fit_is_unbiased():
    df = ladder(np.random.default_rng(1), theta=0.5)
    glm = fit_arrhenius(df, COLS, crosscheck=False, grid=GRID)
    assert glm.barrier < 0.93 * BARRIER  # the bias this fit exists for
    assert glm.dispersion < 3  # and the totals do not show it
    fr = fit_frailty_arrhenius(df, COLS, grid=GRID)
    assert fr.heterogeneous and fr.lr_pvalue < 1e-6
    assert fr.barrier == pytest.approx(BARRIER, rel=0.05)
    assert fr.barrier_ci[0] <= BARRIER <= fr.barrier_ci[1]
    assert fr.frailty_variance_ci[0] <= 0.5 <= fr.frailty_variance_ci[1]
    assert glm.frailty.heterogeneous and glm.frailty.barrier == pytest.approx(fr.barrier)


def test_without_heterogeneity_nothing_is_flagged_and_both_fits_agree():
    df = ladder(np.random.default_rng(2), theta=0.0)
    fr = fit_frailty_arrhenius(df, COLS, grid=GRID)
    glm = fit_arrhenius(df, COLS, crosscheck=False)
    assert not fr.heterogeneous
    assert fr.barrier == pytest.approx(glm.barrier, rel=0.02)
    assert fr.barrier_ci[0] <= BARRIER <= fr.barrier_ci[1]


def test_frailty_ci_coverage_where_the_poisson_ci_fails():
    """40 ladders at θ = 0.5 (``benchmarks/frailty.py`` measures 400): the frailty CI
    covers the barrier in ≥ 85% (nominal 95%), the Poisson GLM's in under half."""
    rng = np.random.default_rng(3)
    frailty, glm = [], []
    for _ in range(40):
        df = ladder(rng, 0.5)
        lo, hi = fit_frailty_arrhenius(df, COLS, grid=GRID).barrier_ci
        frailty.append(lo <= BARRIER <= hi)
        lo, hi = fit_arrhenius(df, COLS, crosscheck=False).barrier_ci
        glm.append(lo <= BARRIER <= hi)
    assert np.mean(frailty) >= 0.85 and np.mean(glm) < 0.5, (np.mean(frailty), np.mean(glm))


def test_arrhenius_says_so_and_gives_the_frailty_barrier(cli, tmp_path):
    path = tmp_path / "het.csv"
    ladder(np.random.default_rng(1), theta=0.5).to_csv(path, index=False)
    code, out, err = cli("arrhenius", path, "--grid", GRID)
    assert code == 0, err
    assert "replicas escape at different rates" in out and "frailty barrier" in out
    code, out, _ = cli("arrhenius", path, "--grid", GRID, "--json")
    fr = json.loads(out)["frailty"]
    assert fr["heterogeneous"] and fr["barrier"] == pytest.approx(BARRIER, rel=0.05)
    path = tmp_path / "hom.csv"
    ladder(np.random.default_rng(2), theta=0.0).to_csv(path, index=False)
    code, out, _ = cli("arrhenius", path, "--grid", GRID)
    assert code == 0 and "heterogeneity   : none detected" in out
