"""Importing this module registers every command on the app."""

from . import (  # noqa: F401
    arrhenius_cmd,
    fit_cmd,
    optimize_cmd,
    regress_cmd,
    report_cmd,
    run_cmd,
    sweep_cmd,
    theory_cmd,
)
