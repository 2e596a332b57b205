"""`escapestat report`: one self-contained HTML page (and a Markdown twin) for a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from escapestat.report._page import write_report
from escapestat.stats._survival import KS_BOOTSTRAP

from .common import domain_errors, err_console
from .options import Bootstrap, positive


@domain_errors
def report(
    path: Annotated[Path, typer.Argument(
        help="A run directory, an optimisation output folder (optuna.db / compare.json), a "
             "sweep folder (sweep.json) or an escape table (.csv, .tsv, .parquet, or a "
             "folder of parquet parts named *.parquet).", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        "--out", help="HTML file to write (default: PATH/report.html for a folder, "
        "TABLE-report.html beside a table); NAME.md and NAME_files/ are written beside it.",
        show_default=False)] = None,
    bootstrap: Bootstrap = KS_BOOTSTRAP,
    theory_barrier: Annotated[float | None, typer.Option(
        "--theory-barrier", help="Barrier (> 0) to draw on the Arrhenius plot and compare "
        "the fit with (default: the run's own, when it knows one).",
        callback=positive("--theory-barrier"), show_default=False)] = None,
) -> None:
    """Write an HTML (and Markdown) report of a run, a search, a sweep or an escape table.

    For a run or a table: metadata, per-condition statistics with the mechanism verdict,
    Kaplan–Meier curves with at-risk counts, the Arrhenius plot with its theory line,
    Weibull/KS diagnostics, grokking curves and schedules; for an optimisation folder the
    optimisation history, parameter importances and the compare arms; for a sweep folder
    the hysteresis table and figure.

    The HTML file needs nothing else: figures are embedded PNGs, the style is inline.

    Example: escapestat report runs/quickstart --out quickstart.html
    """
    html, md = write_report(path, out, n_bootstrap=bootstrap, theory_barrier=theory_barrier)
    err_console.print(f"wrote {escape(str(html))} and {escape(str(md))}", highlight=False)
