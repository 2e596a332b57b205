"""The Typer application: one sub-module per command, registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="escapestat",
    help="Escape-time statistics for metastable training dynamics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register() -> None:
    from . import commands  # noqa: F401  (importing registers the commands)


def main() -> None:
    """Console-script entry point."""
    _register()
    app()
