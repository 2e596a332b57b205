"""The Typer application: one sub-module per command, each registered here by name."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from .commands import COMMANDS
from .common import usage_error

try:  # typer ≥ 0.2x vendors click as typer._click; older typer uses click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    # the same classes from click itself (mypy sees both imports)
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]


def _one_line(exc: UsageError, ctx=None) -> Exception:
    """A usage error as one line ``error: …`` on stderr and exit 2 (no rich box)."""
    if isinstance(exc, NoArgsIsHelpError):  # bare `escapestat`: the help was shown
        return exc
    ctx = getattr(exc, "ctx", None) or ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    # Typer validates enum choices through pydantic, whose messages start "Value error, ".
    message = exc.format_message().replace("Value error, ", "")
    return usage_error(message.rstrip().rstrip(".") + hint)


class OneLineUsageGroup(TyperGroup):
    """The app's group: usage errors of the group or any command become one line, exit 2.

    Typer would print its multi-line rich box; the README promises one ``error:`` line.
    This holds for the console script and for an in-process ``CliRunner`` alike.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise _one_line(exc, ctx) from None


app = typer.Typer(
    cls=OneLineUsageGroup,
    name="escapestat",
    help="Escape-time statistics for metastable training dynamics.",
    no_args_is_help=True,
    add_completion=True,
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


for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:
    """Console-script entry point (also ``python -m escapestat_cli``): the program is
    "escapestat" whatever argv[0] says, so usage lines and shell completion agree."""
    app(prog_name="escapestat")
