"""Never pool silently: which rows may be fitted together, and the one-line refusals."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats._strata import (
    CONDITION_COLUMNS,
    arrhenius_strata,
    condition_columns,
    fit_strata,
)


def _table(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"duration": np.arange(1.0, n + 1), "event": 1, **cols})


def test_condition_columns_known_names_and_schedules():
    df = _table(temperature=[0.1], weight_decay=[0.1], seed=[1], replica=[0], chunk=[0],
                lr_schedule=["constant"], status=["escaped"], hidden=[3])
    assert condition_columns(df) == ["temperature", "weight_decay", "lr_schedule", "hidden"]
    assert condition_columns(df, exclude={"temperature"}) == [
        "weight_decay", "lr_schedule", "hidden"]
    assert {"weight_decay", "beta", "barrier_theory", "condition", "optimizer"} <= set(
        CONDITION_COLUMNS)


def test_arrhenius_refuses_two_betas_naming_the_columns():
    df = _table(temperature=[0.1, 0.2, 0.1, 0.2], weight_decay=[0.3, 0.3, 0.4, 0.4],
                barrier_theory=[0.01, 0.01, 0.02, 0.02], condition=[0, 1, 2, 3])
    with pytest.raises(EscapestatError) as info:
        arrhenius_strata(df)
    msg = str(info.value)
    assert "weight_decay (2 values: 0.3, 0.4)" in msg and "barrier_theory" in msg
    assert "--by weight_decay" in msg and "--pool" in msg and "\n" not in msg
    assert "temperature (" not in msg and "condition (" not in msg


def test_arrhenius_by_splits_and_pool_pools_knowingly():
    df = _table(temperature=[0.1, 0.2, 0.1, 0.2], weight_decay=[0.3, 0.3, 0.4, 0.4],
                barrier_theory=[0.01, 0.01, 0.02, 0.02])
    strata = arrhenius_strata(df, by=["weight_decay"])
    assert [s.as_dict() for s in strata] == [{"weight_decay": 0.3}, {"weight_decay": 0.4}]
    assert [len(s.rows) for s in strata] == [2, 2] and all(not s.pooled for s in strata)
    assert strata[0].label == "weight_decay=0.3"
    assert strata[0].file_for("out/arr.png") == Path("out/arr-weight_decay=0.3.png")
    (pooled,) = arrhenius_strata(df, pool=True)
    assert pooled.key == () and pooled.label == "all" and len(pooled.rows) == 4
    assert pooled.pooled == ("weight_decay", "barrier_theory")
    assert pooled.file_for("arr.png") == Path("arr.png")


def test_float_noise_is_not_a_second_condition():
    df = _table(temperature=[0.1, 0.2], weight_decay=[0.1 + 0.2, 0.3])
    (stratum,) = arrhenius_strata(df)
    assert not stratum.pooled
    (stratum,) = arrhenius_strata(df, by=["weight_decay"])
    assert stratum.as_dict() == {"weight_decay": 0.3}


def test_lr_and_batch_exempt_only_when_t_is_lr_over_batch():
    lr, batch = [0.3, 0.1, 0.2, 0.4], [48, 16, 16, 16]
    sgd = _table(temperature=[a / b for a, b in zip(lr, batch, strict=True)], lr=lr,
                 batch_size=batch)
    (stratum,) = arrhenius_strata(sgd)
    assert len(stratum.rows) == 4
    langevin = _table(temperature=[0.1, 0.2, 0.1, 0.2], lr=[0.25, 0.25, 0.5, 0.5])
    with pytest.raises(EscapestatError, match=r"lr \(2 values"):
        arrhenius_strata(langevin)


def test_missing_or_empty_by_column():
    df = _table(temperature=[0.1, 0.2], weight_decay=[0.1, np.nan])
    with pytest.raises(EscapestatError, match="no column 'beta' to stratify by"):
        arrhenius_strata(df, by=["beta"])
    with pytest.raises(EscapestatError, match="missing values at row"):
        arrhenius_strata(df, by=["weight_decay"])


@pytest.mark.parametrize(
    "column, value",
    [("temperature_schedule", json.dumps({"kind": "linear", "start": 0.1, "end": 0.0})),
     ("lr_schedule", '{"kind": "cosine"}'),
     ("batch_size_schedule", '{"kind": "step"}')],
)
def test_scheduled_temperature_refused_even_when_pooling(column, value):
    lr, batch = [0.32, 0.64], [64, 64]
    df = _table(temperature=[0.005, 0.01], lr=lr, batch_size=batch)
    df[column] = ["constant", value]
    with pytest.raises(EscapestatError, match=f"column '{column}' is not 'constant' at row"):
        arrhenius_strata(df, pool=True)


def test_constant_or_absent_schedules_and_other_schedules():
    df = _table(temperature=[0.1, 0.2], temperature_schedule=["constant", "constant"],
                weight_decay_schedule=["constant", "constant"])
    assert len(arrhenius_strata(df)) == 1
    # Langevin T: an lr schedule says nothing about T, but it is a differing condition
    df["lr_schedule"] = ["constant", '{"kind": "cosine"}']
    with pytest.raises(EscapestatError, match="lr_schedule"):
        arrhenius_strata(df)


def test_fit_without_group_col_treats_temperature_as_a_condition():
    df = _table(temperature=[0.1, 0.2, 0.1])
    with pytest.raises(EscapestatError, match=r"within the table: temperature \(2 values"):
        fit_strata(df)
    (stratum,) = fit_strata(df, pool=True)
    assert stratum.pooled == ("temperature",)
    (stratum,) = fit_strata(df, group_col="temperature")
    assert not stratum.pooled


def test_fit_refuses_conditions_that_differ_within_a_group():
    df = _table(temperature=[0.1, 0.1, 0.2, 0.2], weight_decay=[0.3, 0.4, 0.3, 0.3])
    with pytest.raises(EscapestatError) as info:
        fit_strata(df, group_col="temperature")
    assert "within temperature=0.1" in str(info.value)
    assert "--by weight_decay" in str(info.value)
    strata = fit_strata(df, group_col="temperature", by=["weight_decay"])
    assert [s.as_dict() for s in strata] == [{"weight_decay": 0.3}, {"weight_decay": 0.4}]
    assert [len(s.rows) for s in strata] == [3, 1]


def test_fit_group_values_rounded_so_float_noise_is_one_group():
    df = _table(temperature=[0.3 / 48, 0.1 / 16, 0.2])
    (stratum,) = fit_strata(df, group_col="temperature")
    assert stratum.rows["temperature"].nunique() == 2
