"""The Weibull-AFT cross-check fitted on distinct rows with counts as weights: the same fit
as on every row, and skipped (with a note) where distinct rows would fill the memory."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from lifelines import WeibullAFTFitter

from escapestat.stats import _aft
from escapestat.stats._arrhenius import fit_arrhenius
from escapestat.stats._synthetic import arrhenius_table
from escapestat.table._records import Columns


def _gridded(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.choice([1.0, 2.0, 3.0], n)
    d = np.ceil(rng.weibull(1.3, n) * np.exp(0.5 * x) * 2) * 5  # on a grid of 5
    return pd.DataFrame({"duration": np.minimum(d, 60), "event": (d < 60).astype(int), "x": x})


def test_weighted_distinct_rows_give_the_fit_on_every_row():
    data = _gridded()
    grouped = _aft.fit_weibull_aft(data, 0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = WeibullAFTFitter().fit(data, "duration", "event")
    assert len(data.drop_duplicates()) < 60  # a real compression: 3000 rows → < 60
    np.testing.assert_allclose(grouped.params_.to_numpy(), every.params_.to_numpy(),
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(grouped.standard_errors_.to_numpy(),
                               every.standard_errors_.to_numpy(), rtol=1e-3)


def test_too_many_distinct_rows_skip_the_crosscheck_with_a_note(monkeypatch):
    df = arrhenius_table(0.03, -np.log(120), [0.01, 0.0075], 200, 4e4, seed=3)
    fit = fit_arrhenius(df, Columns(temperature="temperature"))
    assert fit.weibull_aft.barrier is not None
    monkeypatch.setattr(_aft, "MAX_ROWS", 100)
    skipped = fit_arrhenius(df, Columns(temperature="temperature"))
    assert skipped.weibull_aft.barrier is None
    assert skipped.weibull_aft.note == "skipped: 400 distinct rows, more than 100."
    assert skipped.barrier == fit.barrier  # the Poisson fit itself is untouched
