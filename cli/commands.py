"""Importing this module registers every command on the app."""

from . import arrhenius_cmd, fit_cmd, optimize_cmd, regress_cmd, run_cmd, theory_cmd  # noqa: F401
