"""Statuses are one enum whose members are the strings the tables hold."""

from __future__ import annotations

import io
import json

import pandas as pd

from escapestat.vocab import SURVIVAL, Status


def test_members_are_the_table_strings():
    assert [s.value for s in Status] == ["escaped", "censored", "diverged", "untrapped",
                                         "unfit", "running"]
    for s in Status:
        assert s == s.value and hash(s) == hash(s.value)
        assert str(s) == f"{s}" == s.value and f"{s:>10}" == f"{s.value:>10}"
        assert json.dumps(s) == f'"{s.value}"'
    assert [str(s) for s in SURVIVAL] == ["escaped", "censored", "diverged"]


def test_tables_written_and_read_with_statuses():
    df = pd.DataFrame({"status": [Status.ESCAPED, Status.DIVERGED, Status.UNTRAPPED]})
    text = df.to_csv(index=False)
    assert text.splitlines() == ["status", "escaped", "diverged", "untrapped"]
    back = pd.read_csv(io.StringIO(text))
    assert back["status"].isin(SURVIVAL).tolist() == [True, True, False]
    assert (back["status"] == Status.DIVERGED).tolist() == [False, True, False]
