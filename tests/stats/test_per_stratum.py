"""The one per-stratum loop (``fit_each``, ``arrhenius_by``, ``strata_json``): an error
names its stratum or stays on it, and a per-stratum ``--json`` has one shape."""

from __future__ import annotations

import pandas as pd
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats import arrhenius_by, arrhenius_strata, fit_each, strata_json
from escapestat.stats._synthetic import arrhenius_table


def _two_betas() -> pd.DataFrame:
    temps = [0.03 / x for x in (3, 4, 5, 6)]
    a = arrhenius_table(0.03, -4.79, temps, 128, 4e4, seed=1).assign(weight_decay=0.3)
    b = arrhenius_table(0.03, -4.79, temps, 128, 4e4, seed=2).assign(weight_decay=0.4)
    return pd.concat([a, b], ignore_index=True)


class _Fit:
    def __init__(self, rows):
        if rows["weight_decay"].iloc[0] == 0.4:
            raise EscapestatError("no escapes")
        self.n = len(rows)

    def as_dict(self):
        return {"n": self.n}


def test_an_error_names_its_stratum_or_stays_on_it():
    strata = arrhenius_strata(_two_betas(), by=["weight_decay"])
    with pytest.raises(EscapestatError, match=r"^weight_decay=0\.4: no escapes$"):
        fit_each(strata, _Fit)
    kept = fit_each(strata, _Fit, keep_errors=True)
    assert [r.error for r in kept] == [None, "no escapes"]
    assert kept[0].fitted.n == len(strata[0].rows)
    with pytest.raises(EscapestatError, match="no escapes"):
        kept[1].to_dict()


def test_json_with_and_without_by():
    df = _two_betas()
    strata = arrhenius_strata(df[df.weight_decay == 0.3], by=["weight_decay"])
    (r,) = fit_each(strata, _Fit)
    assert strata_json([r], by=True) == {"strata": [{"stratum": {"weight_decay": 0.3},
                                                     "n": len(r.stratum.rows)}]}
    assert strata_json([r], by=False, extra=lambda r: {"x": 1}) == {
        "n": len(r.stratum.rows), "x": 1}
    (pooled,) = fit_each(arrhenius_strata(df, pool=True), lambda rows: _Fit(rows.head(3)))
    assert pooled.to_dict() == {"n": 3, "pooled": ["weight_decay"]}


def test_arrhenius_by_fits_each_value_and_keeps_errors():
    df = _two_betas()
    df.loc[df.weight_decay == 0.4, "event"] = 0
    good, bad = arrhenius_by(df, ["weight_decay"], grid=None)
    assert good.stratum.key == (("weight_decay", 0.3),)
    assert good.fitted.barrier == pytest.approx(0.03, rel=0.15)
    assert bad.fit is None and "no escapes" in bad.error


def test_fit_json_lists_pooled_per_stratum_always():
    from escapestat.stats import GroupSummaries, fit_strata, summaries_json, summarize
    from escapestat.table import Columns

    df = _two_betas()
    cols = Columns(group="temperature")
    results = fit_each(fit_strata(df, "temperature", by=["weight_decay"]),
                       lambda rows: GroupSummaries(tuple(summarize(rows, cols, n_bootstrap=19))))
    by = summaries_json(results, by=True)["strata"]
    assert [s["stratum"] for s in by] == [{"weight_decay": 0.3}, {"weight_decay": 0.4}]
    assert [s["pooled"] for s in by] == [[], []] and len(by[0]["groups"]) == 4
    (one,) = fit_each(fit_strata(df[df.weight_decay == 0.3], "temperature"),
                      lambda rows: GroupSummaries(tuple(summarize(rows, cols, n_bootstrap=19))))
    assert list(summaries_json([one], by=False)) == ["groups"]
