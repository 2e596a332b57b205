"""Shared CLI plumbing: one-line domain errors, JSON on stdout, logs on stderr."""

from __future__ import annotations

import errno
import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from escapestat.errors import EscapestatError

#: Human-readable output and progress go to stderr so that stdout stays clean for --json.
err_console = Console(stderr=True)
out_console = Console()


def dask_line(event, what: str = "") -> None:
    """The one stderr line that says where ``--cluster`` work goes (a ``ClusterReady``):
    the scheduler, its workers, the dashboard if any, and ``what`` after it."""
    where = f"dashboard {event.dashboard}" if event.dashboard else "no dashboard"
    err_console.print(escape(f"dask: {event.address}, {event.workers} workers; {where}"
                             + (f"; {what}" if what else "")), highlight=False)


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: numpy scalars to Python, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def number(x: float | None, digits: int = 3) -> str:
    """A number for the terminal: whole between 100 and 10⁶ (steps and times read 1930 or
    164413, not 1.93e+03), else ``digits`` significant digits; — for None or NaN."""
    if x is None or x != x:
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.0f}" if 100 <= abs(x) < 1e6 else f"{x:.{digits}g}"


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(_clean(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


def note_pooled(stratum) -> None:
    """Say on stderr that a stratum pools differing conditions (``--pool``), if it does."""
    if stratum.pooled:
        err_console.print(escape(f"{stratum.label}: pooled knowingly (--pool) over differing "
                                 f"{', '.join(stratum.pooled)}"))


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear error line on stderr and return the exit to raise (status 1)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


#: Exit status after Ctrl-C: 128 + SIGINT, the shells' convention.
INTERRUPTED = 130


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the path and what to do (disk full, read-only)."""
    where = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or type(exc).__name__
    line = f"{where}: {what}"
    if exc.errno == errno.ENOSPC:
        line += ("; what finished is kept — free some space and rerun with --resume "
                 "(run, compare, sweep) to go on")
    elif exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR):
        line += "; choose a writable --out"
    return line


def usage_error(message: str) -> typer.Exit:
    """Print one usage-error line on stderr and return the exit to raise (status 2)."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def domain_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EscapestatError and OSError (a read-only --out, a full disk) into one line on
    stderr and exit 1; Ctrl-C exits 130, keeping what was written."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EscapestatError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(os_error_line(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; data already written is kept", INTERRUPTED) from None

    return wrapper
