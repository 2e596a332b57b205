"""Shared fixtures: a CLI runner with the commands registered, small tables, and a
throwaway PostgreSQL server (``postgres_url``, from ``postgres.py``) and a Dask cluster
(``cluster``, from ``dask_cluster.py``)."""

from __future__ import annotations

import traceback

import numpy as np
import pytest
from dask_cluster import cluster  # noqa: F401  (a Dask scheduler and two workers on loopback)
from postgres import postgres_url  # noqa: F401  (a throwaway PostgreSQL for the session)
from typer.testing import CliRunner

from escapestat.stats._synthetic import arrhenius_table
from escapestat_cli.app import app


@pytest.fixture
def cli():
    """Invoke the CLI in-process; returns (exit_code, stdout, stderr).

    CliRunner swallows tracebacks into ``result.exception``: anything but SystemExit
    (a clean exit, whatever its status) escaping the command fails the test here.
    """
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (
            f"uncaught {type(exc).__name__}: {exc}\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def ladder_csv(tmp_path):
    """A censored Arrhenius ladder with barrier 0.03 and tau0 = 120 steps, as CSV."""
    df = arrhenius_table(0.03, -np.log(120), [0.03 / 3, 0.03 / 4, 0.03 / 6], 96, 4e4, seed=3)
    path = tmp_path / "escapes.csv"
    df.to_csv(path, index=False)
    return path
