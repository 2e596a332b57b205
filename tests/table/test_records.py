import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from escapestat.errors import EscapestatError
from escapestat.table._records import (
    Columns,
    grid_from_run,
    load,
    read_table,
    resolve_grid,
    round_significant,
    validate,
    write_table,
)


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


@pytest.mark.parametrize(
    "name, text",
    [("dup.csv", "duration,duration,event\n1,2,1\n"),
     ("dup.tsv", "duration\tevent\tevent\n1\t1\t0\n"),
     ("space.csv", "duration, duration,event\n1,2,1\n")],
)
def test_duplicate_column_names_refused(tmp_path, name, text):
    """pandas would silently rename the second column to ``duration.1``."""
    (tmp_path / name).write_text(text)
    with pytest.raises(EscapestatError, match="duplicate column name") as info:
        read_table(tmp_path / name)
    assert ("'duration'" in str(info.value)) != ("'event'" in str(info.value))


def test_duplicate_column_names_refused_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([1])],
                                 names=["duration", "duration", "event"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(EscapestatError, match="duplicate column name"):
        read_table(tmp_path / "dup.parquet")


def test_distinct_names_read_fine(tmp_path):
    (tmp_path / "ok.csv").write_text("\ufeffduration,event,duration_2\n1,1,3\n")  # BOM too
    assert list(read_table(tmp_path / "ok.csv").columns) == ["duration", "event", "duration_2"]


@pytest.mark.parametrize(
    "durations, message",
    [([1e300, 1.0, 1.0], "exposure Σ duration = 1e+300 overflows"),  # its square is inf
     ([1e308, 1e308, 1.0], "= inf overflows"),  # the sum itself is inf
     ([1.0, 1e-320, 2.0], "too small for a finite rate"),  # subnormal: 1/t is inf
     ([1e-155, 1e-155, 1e-155], "too small for a finite rate")],  # rate² would overflow
)
def test_durations_whose_exposure_or_rate_overflow(durations, message):
    with pytest.raises(EscapestatError, match=re.escape(message)) as info:
        validate(_df(duration=durations))
    assert "column 'duration'" in str(info.value) and "\n" not in str(info.value)


def test_large_and_small_but_finite_durations_pass():
    validate(_df(duration=[1e150, 1e150, 1.0]))
    validate(_df(duration=[1e-150, 1e-150, 1.0]))


def test_round_significant():
    assert 0.3 / 48 != 0.1 / 16
    out = round_significant([0.3 / 48, 0.1 / 16, 0.0009999999999999999, np.nan])
    assert out[0] == out[1] == 0.00625 and out[2] == 0.001 and np.isnan(out[3])


def _run_json(tmp_path, meta) -> Path:
    (tmp_path / "run.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return tmp_path / "escapes.csv"


@pytest.mark.parametrize(
    "meta, grid",
    [({"check_every": 10}, 10.0),
     ({"study": {"name": "s", "escape": {"check_every": 25}}}, 25.0),
     ({"conditions": {"escape": {"check_every": 5}}}, 5.0),
     ({"conditions": [{"lr": 0.1, "check_every": 4}, {"lr": 0.2, "check_every": 4}]}, 4.0),
     ({"study": "quickstart", "conditions": [{"lr": 0.1}]}, None),  # today's run.json
     ],
)
def test_grid_from_run_json(tmp_path, meta, grid):
    assert grid_from_run(_run_json(tmp_path, meta)) == grid
    assert resolve_grid(None, tmp_path / "escapes.csv") == grid
    assert resolve_grid(2.5, tmp_path / "escapes.csv") == 2.5  # --grid wins


def test_grid_without_run_json(tmp_path):
    assert grid_from_run(tmp_path / "escapes.csv") is None


@pytest.mark.parametrize(
    "meta, message",
    [("{not json", "cannot read the run's check_every"),
     ({"check_every": 0}, "must be a positive number"),
     ({"check_every": "ten"}, "must be a positive number"),
     ({"check_every": 10, "study": {"escape": {"check_every": 20}}}, "conflicting")],
)
def test_bad_run_json_is_an_error(tmp_path, meta, message):
    with pytest.raises(EscapestatError, match=message):
        grid_from_run(_run_json(tmp_path, meta))


@pytest.mark.parametrize("grid", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_grid_option(tmp_path, grid):
    with pytest.raises(EscapestatError, match="--grid must be a positive number"):
        resolve_grid(grid, tmp_path / "escapes.csv")


@pytest.mark.parametrize("name, sep", [("t.csv", "\t"), ("s.csv", ";"), ("p.csv", "|"),
                                       ("c.tsv", ","), ("plain.csv", ",")])
def test_the_delimiter_is_sniffed_from_the_header(tmp_path, name, sep):
    """A tab- or ;-separated file named .csv was refused as "missing duration column
    'duration' (columns: duration\\tevent…)"; the header now says how it is split."""
    path = tmp_path / name
    path.write_text(sep.join(["duration", "event", "temperature"]) + "\n"
                    + sep.join(["12.5", "1", "0.1"]) + "\n" + sep.join(["30", "0", "0.1"]) + "\n")
    df = load(path, Columns())
    assert list(df["duration"]) == [12.5, 30.0] and list(df["event"]) == [1, 0]
