"""escapestat: how long networks stay trapped in metastable states, and how to get them out.

The library is importable from a notebook; the ``escapestat`` command is a thin layer
over it. Its packages are layers, each importing only from those below it::

    report                  figures and the HTML/Markdown report
    search, sweep           schedule search + compare; hysteresis sweeps
    engine                  detection, the training loop over chunks, run directories
    models                  the replica model, the registry of kinds, one folder per kind
    config                  study files (schema, checks, schedules)
    integrations, monitor   escape detection in a user's own loop
    stats, theory           survival statistics, Arrhenius, regressions; the landscape
    table                   escape tables
    errors, vocab           the error type; names of statuses and files

The statistics are re-exported here (without importing torch); the engine is
``escapestat.engine.run_study`` with ``escapestat.config.load_study``.
"""

from escapestat import _legacy
from escapestat.errors import EscapestatError
from escapestat.monitor import EscapeMonitor
from escapestat.stats import (
    ArrheniusFit,
    EscapeIncidence,
    ExponentialRate,
    GroupSummary,
    KaplanMeierMedian,
    MedianRatio,
    RestrictedMean,
    Stratum,
    arrhenius_strata,
    describe,
    fit_arrhenius,
    fit_strata,
    incidence_median_ci,
    incidence_median_ratio,
    logrank_p,
    median_ratio,
    poisson_rate_ci,
    summarize,
)
from escapestat.table import Columns, load, read_table, validate, write_table

_legacy.install()

__version__ = "0.7.0"

__all__ = [
    "ArrheniusFit",
    "Columns",
    "EscapeIncidence",
    "EscapeMonitor",
    "EscapestatError",
    "ExponentialRate",
    "GroupSummary",
    "KaplanMeierMedian",
    "MedianRatio",
    "RestrictedMean",
    "Stratum",
    "__version__",
    "arrhenius_strata",
    "describe",
    "fit_arrhenius",
    "fit_strata",
    "incidence_median_ci",
    "incidence_median_ratio",
    "load",
    "logrank_p",
    "median_ratio",
    "poisson_rate_ci",
    "read_table",
    "summarize",
    "validate",
    "write_table",
]
