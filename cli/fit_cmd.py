"""`escapestat fit`: escape rates, medians and the Poisson check per condition."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from escapestat.report._figures import check_plot_path, plot_survival
from escapestat.stats import _survival as survival
from escapestat.stats._per_stratum import GroupSummaries, fit_each, summaries_json
from escapestat.stats._strata import fit_strata
from escapestat.table import _records as records

from .common import domain_errors, err_console, note_pooled, number, out_console, print_json
from .options import (
    Bootstrap,
    BootstrapSeed,
    ByCols,
    DurationCol,
    EventCol,
    Grid,
    JsonOut,
    PlotPath,
    Pool,
    TableArg,
    Unit,
)


class CiTransform(str, Enum):
    """The KM band's scale: a choice, so a typo is a usage error (exit 2)."""

    log_log = "log-log"
    log = "log"


def _rmst_interval(ci) -> tuple[str, str] | str:
    """The RMST's CI, or "not estimable" (with the sure bound μ ≤ h where there is one)."""
    if ci[0] is not None:
        return _interval(ci)
    return "not estimable" + (f" (≤ {number(ci[1])})" if ci[1] is not None else "")


def _interval(ci) -> tuple[str, str]:
    return number(ci[0], 3), "∞" if ci[1] is None or ci[1] == float("inf") else number(ci[1], 3)


def _table(summaries: list[survival.GroupSummary], group_col: str | None, unit: str,
           label: str | None = None) -> Table:
    """One column per group, one row per quantity: stays readable in 80 columns."""
    where = f"{label}; " if label else ""
    table = Table(title=f"Escape statistics ({where}durations in {unit}; 95% CIs)")
    table.add_column(group_col or "group", justify="left", no_wrap=True)
    for s in summaries:
        table.add_column(str(s.group), justify="right", overflow="fold")
    rows = {
        "replicas": lambda s: str(s.n),
        "escaped": lambda s: str(s.events),
        "censored": lambda s: str(s.censored),
        "rate": lambda s: number(s.rate, 3),
        "  CI": lambda s: _interval(s.rate_ci),
        "tau = 1/rate": lambda s: number(s.tau, 4),
        "  CI ": lambda s: _interval(s.tau_ci),
        "KM median": lambda s: number(s.median, 4) if s.median_reached else "not reached",
        "  CI  ": lambda s: _interval(s.median_ci),
        "RMST": lambda s: number(s.rmst, 4),
        "  horizon": lambda s: number(s.rmst_horizon),
        "  CI   ": lambda s: _rmst_interval(s.rmst_ci),
        "Weibull shape": lambda s: number(s.weibull_shape, 3),
        "  CI    ": lambda s: _interval(s.weibull_shape_ci),
        "KS p vs exp": lambda s: number(s.poisson_pvalue, 3),
        "mechanism": lambda s: s.verdict,
    }
    if any(s.median_upper_note for s in summaries):
        rows["  no upper CI"] = lambda s: s.median_upper_note or ""
        rows = {k: rows[k] for k in [*list(rows)[:9], "  no upper CI", *list(rows)[9:-1]]}
    cells = {name: [cell(s) for s in summaries] for name, cell in rows.items()}
    # A CI is one cell "lo–hi"; where the columns cannot hold that on one line, "lo–" over
    # "hi", so a narrow terminal never splits a number (1.66e-06–3 / .78e-06).
    widths = [max(len(f"{v[0]}–{v[1]}" if isinstance(v, tuple) else v) for v in column)
              for column in zip(*cells.values(), strict=True)]
    label_width = max(len(name) for name in [*cells, group_col or "group"])
    stacked = label_width + sum(w + 3 for w in widths) + 4 > out_console.width
    for name, row in cells.items():
        table.add_row(name, *(("{}–\n{}" if stacked else "{}–{}").format(*v)
                              if isinstance(v, tuple) else v for v in row))
    return table


@domain_errors
def fit(
    table: TableArg,
    duration_col: DurationCol = records.DURATION,
    event_col: EventCol = records.EVENT,
    group_col: Annotated[
        str | None, typer.Option("--group-col", help="Fit each value of this column apart.")
    ] = None,
    by: ByCols = None,
    pool: Pool = False,
    grid: Grid = None,
    json_out: JsonOut = False,
    plot: PlotPath = None,
    log_time: Annotated[bool, typer.Option(
        "--log-time", help="Draw the --plot's time axis on a log scale.")] = False,
    bootstrap: Bootstrap = survival.KS_BOOTSTRAP,
    seed: BootstrapSeed = 0,
    unit: Unit = "steps",
    ci_transform: Annotated[CiTransform, typer.Option(
        "--ci-transform", help="Scale of the KM median's band: log-log (lifelines') or log "
        "(R survfit's default conf.type).")] = CiTransform.log_log,
) -> None:
    """Escape rate, mean and median escape time with 95% CIs under right-censoring.

    Rate = escapes / exposure (censored replicas included) with the exact Poisson CI;
    Kaplan–Meier median; RMST at the largest time; Weibull shape (≈ 1 for activated,
    Poisson-like escape, ≫ 1 for a deterministic delay) and a bootstrap KS p-value
    against the fitted exponential, its null drawn on the durations' grid. Rows whose
    conditions (temperature, β, weight decay, ...) differ within a group are refused
    unless split with --by or pooled with --pool.

    Example: escapestat fit studies/examples/escapes.csv --group-col temperature --plot km.png
    """
    if plot is not None:
        check_plot_path(plot)
    grid = records.resolve_grid(grid, table)
    threshold = records.run_meta_value(table, "threshold")
    columns = records.Columns(duration=duration_col, event=event_col, group=group_col)
    df = records.load(table, columns)
    strata = fit_strata(df, group_col, by or (), pool)
    results = fit_each(strata, lambda rows: GroupSummaries(tuple(survival.summarize(
        rows, columns, n_bootstrap=bootstrap, seed=seed, grid=grid, threshold=threshold,
        ci_transform=ci_transform.value))))
    for r in results:
        note_pooled(r.stratum)
    if plot is not None:
        for s in strata:
            written = plot_survival(s.rows, columns, s.file_for(plot), unit=unit,
                                    log_time=log_time)
            err_console.print(f"wrote {escape(str(written))}")
    if json_out:
        print_json(summaries_json(results, bool(by)))
        return
    for s, summaries in ((r.stratum, list(r.fitted.groups)) for r in results):
        out_console.print(_table(summaries, group_col, unit, s.label if by else None))
        for g in summaries:
            if g.events == 0:
                out_console.print(
                    f"{g.group}: no escapes — the rate is below {number(g.rate_ci[1], 3)} per "
                    f"{unit.rstrip('s')} (95% upper bound)."
                )
