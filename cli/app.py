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


def _version(value: bool) -> None:
    if value:
        from escapestat import __version__

        typer.echo(f"escapestat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Escape-time statistics for metastable training dynamics.

    Escape times are right-censored survival data: `fit` gives rates and medians with
    CIs, `arrhenius` the barrier of k(T) = k0 exp(-barrier/T), `theory` the landscape
    of one mode, `run` batched trap-and-escape trials.
    """


def _register() -> None:
    from . import commands  # noqa: F401  (importing registers the commands)


def main() -> None:
    """Console-script entry point."""
    _register()
    app()
