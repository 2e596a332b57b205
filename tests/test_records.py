import numpy as np
import pandas as pd
import pytest

from escapestat.errors import EscapestatError
from escapestat.records import Columns, load, read_table, validate, write_table


def _df(**cols):
    base = {"duration": [10.0, 20.0, 30.0], "event": [1, 0, 1]}
    base.update(cols)
    return pd.DataFrame(base)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    df = _df(temperature=[0.1, 0.1, 0.2])
    path = write_table(df, tmp_path / f"t{suffix}")
    back = load(path, Columns(temperature="temperature"))
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


def test_custom_column_names(tmp_path):
    df = pd.DataFrame({"steps": [5, 7], "grokked": [True, False], "T": [0.1, 0.2]})
    out = validate(df, Columns(duration="steps", event="grokked", temperature="T"))
    assert out["grokked"].tolist() == [1, 0]
    assert out["steps"].dtype == float


@pytest.mark.parametrize(
    "df, columns, message",
    [
        (_df(), Columns(duration="time"), "missing duration column 'time'"),
        (_df(), Columns(event="status"), "missing event column 'status'"),
        (_df(), Columns(group="lr"), "missing group column 'lr'"),
        (_df(duration=[1.0, np.nan, 2.0]), Columns(), "NaN"),
        (_df(duration=[1.0, "abc", 2.0]), Columns(), "not numeric at row 2"),
        (_df(duration=[1.0, 0.0, 2.0]), Columns(), "must be > 0"),
        (_df(duration=[1.0, -3.0, 2.0]), Columns(), "must be > 0"),
        (_df(duration=[1.0, np.inf, 2.0]), Columns(), "infinite"),
        (_df(event=[1, 2, 0]), Columns(), "must be 0 (censored) or 1 (escaped)"),
        (_df(event=[1, 0.5, 0]), Columns(), "must be 0 (censored) or 1 (escaped)"),
        (_df(event=["yes", "no", "no"]), Columns(), "not numeric"),
        (_df(temperature=[0.1, -0.1, 0.1]), Columns(temperature="temperature"), "> 0"),
        (pd.DataFrame({"duration": [], "event": []}), Columns(), "no rows"),
    ],
)
def test_validation_errors(df, columns, message):
    with pytest.raises(EscapestatError, match=None) as info:
        validate(df, columns)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_read_errors(tmp_path):
    with pytest.raises(EscapestatError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(EscapestatError, match="empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("duration,event\n")
    with pytest.raises(EscapestatError, match="no rows"):
        read_table(tmp_path / "header.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(EscapestatError, match="unknown table format"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(EscapestatError, match="cannot read as parquet"):
        read_table(tmp_path / "bad.parquet")
