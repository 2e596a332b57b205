"""`escapestat fit`: escape rates, medians and the Poisson check per condition."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from escapestat import records, survival
from escapestat.report import plot_survival

from .app import app
from .common import domain_errors, err_console, out_console, print_json
from .options import DurationCol, EventCol, JsonOut, PlotPath, Seed, TableArg, Unit


def _fmt(x, digits: int = 4) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}g}"


def _interval(ci) -> str:
    lo, hi = ci
    return f"{_fmt(lo, 3)}–{'∞' if hi is None or hi == float('inf') else _fmt(hi, 3)}"


def _table(summaries: list[survival.GroupSummary], group_col: str | None, unit: str) -> Table:
    """One column per group, one row per quantity: stays readable in 80 columns."""
    table = Table(title=f"Escape statistics (durations in {unit}; 95% CIs)")
    table.add_column(group_col or "group", justify="left", no_wrap=True)
    for s in summaries:
        table.add_column(str(s.group), justify="right", overflow="fold")
    rows = {
        "replicas": lambda s: str(s.n),
        "escaped": lambda s: str(s.events),
        "censored": lambda s: str(s.censored),
        "rate": lambda s: _fmt(s.rate, 3),
        "  CI": lambda s: _interval(s.rate_ci),
        "tau = 1/rate": lambda s: _fmt(s.tau),
        "  CI ": lambda s: _interval(s.tau_ci),
        "KM median": lambda s: _fmt(s.median) if s.median_reached else "not reached",
        "  CI  ": lambda s: _interval(s.median_ci),
        "RMST": lambda s: _fmt(s.rmst),
        "  horizon": lambda s: _fmt(s.rmst_horizon, 3),
        "  CI   ": lambda s: _interval(s.rmst_ci),
        "Weibull shape": lambda s: _fmt(s.weibull_shape, 3),
        "  CI    ": lambda s: _interval(s.weibull_shape_ci),
        "KS p vs exp": lambda s: _fmt(s.poisson_pvalue, 3),
    }
    for name, cell in rows.items():
        table.add_row(name, *(cell(s) for s in summaries))
    return table


@app.command("fit")
@domain_errors
def fit(
    table: TableArg,
    duration_col: DurationCol = records.DURATION,
    event_col: EventCol = records.EVENT,
    group_col: Annotated[
        str | None, typer.Option("--group-col", help="Fit each value of this column apart.")
    ] = None,
    json_out: JsonOut = False,
    plot: PlotPath = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=49, help="Bootstrap draws (RMST CI, KS test).")
    ] = 499,
    seed: Seed = 0,
    unit: Unit = "steps",
) -> None:
    """Escape rate, mean and median escape time with 95% CIs under right-censoring.

    Rate = escapes / exposure (censored replicas included) with the exact Poisson CI;
    Kaplan–Meier median; RMST at the largest time; Weibull shape (≈ 1 for activated,
    Poisson-like escape, ≫ 1 for a deterministic delay) and a bootstrap KS p-value
    against the fitted exponential.

    Example: escapestat fit studies/examples/escapes.csv --group-col temperature --plot km.png
    """
    columns = records.Columns(duration=duration_col, event=event_col, group=group_col)
    df = records.load(table, columns)
    summaries = survival.summarize(df, columns, n_bootstrap=bootstrap, seed=seed)
    if plot is not None:
        plot_survival(df, columns, plot, unit=unit)
        err_console.print(f"wrote {escape(str(plot))}")
    if json_out:
        print_json({"groups": [s.as_dict() for s in summaries]})
        return
    out_console.print(_table(summaries, group_col, unit))
    for s in summaries:
        if s.events == 0:
            out_console.print(
                f"{s.group}: no escapes — the rate is below {_fmt(s.rate_ci[1], 3)} per "
                f"{unit.rstrip('s')} (95% upper bound)."
            )
