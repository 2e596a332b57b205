"""escapestat: how long networks stay trapped in metastable states, and how to get them out.

The library is importable from a notebook; the ``escapestat`` command is a thin layer
over it. The statistics are re-exported here (without importing torch); the engine is
``escapestat.trials.run_study`` with ``escapestat.study.load_study``.
"""

from .arm_contrast import MedianRatio, incidence_median_ratio, logrank_p, median_ratio
from .arrhenius import ArrheniusFit, fit_arrhenius
from .errors import EscapestatError
from .incidence import EscapeIncidence, incidence_median_ci
from .monitor import EscapeMonitor
from .records import Columns, load, read_table, validate, write_table
from .strata import Stratum, arrhenius_strata, fit_strata
from .survival import (
    ExponentialRate,
    GroupSummary,
    KaplanMeierMedian,
    RestrictedMean,
    describe,
    poisson_rate_ci,
    summarize,
)

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
