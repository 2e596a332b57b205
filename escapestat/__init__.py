"""escapestat: how long networks stay trapped in metastable states, and how to get them out.

The library is importable from a notebook; the ``escapestat`` command is a thin layer
over it. Main entry points are re-exported here.
"""

from .arrhenius import ArrheniusFit, fit_arrhenius
from .errors import EscapestatError
from .records import Columns, load, read_table, validate, write_table
from .survival import ExponentialRate, GroupSummary, describe, poisson_rate_ci, summarize

__version__ = "0.1.0"

__all__ = [
    "ArrheniusFit",
    "Columns",
    "EscapestatError",
    "ExponentialRate",
    "GroupSummary",
    "__version__",
    "describe",
    "fit_arrhenius",
    "load",
    "poisson_rate_ci",
    "read_table",
    "summarize",
    "validate",
    "write_table",
]
