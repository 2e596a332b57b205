"""`escapestat arrhenius`: barrier and prefactor from escape rates across temperatures."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from escapestat import records
from escapestat.arrhenius import ArrheniusFit, fit_arrhenius, temperature_from_lr_batch
from escapestat.report import plot_arrhenius

from .app import app
from .common import domain_errors, err_console, out_console, print_json
from .options import DurationCol, EventCol, JsonOut, PlotPath, TableArg, Unit


def _table(fit: ArrheniusFit, unit: str) -> Table:
    table = Table(title=f"Escape rate per temperature (per {unit.rstrip('s')}; exact 95% CIs)")
    for name in ("T", "1/T", "n", "escaped", "exposure", "rate", "rate CI"):
        table.add_column(name, justify="right")
    for t, n, d, e, k, (lo, hi) in zip(
        fit.temperatures, fit.n, fit.events, fit.exposure, fit.rates, fit.rates_ci, strict=True
    ):
        table.add_row(f"{t:.4g}", f"{1 / t:.4g}", str(n), str(d), f"{e:.4g}", f"{k:.3g}",
                      f"[{lo:.3g}, {hi:.3g}]")
    return table


@app.command("arrhenius")
@domain_errors
def arrhenius(
    table: TableArg,
    temperature_col: Annotated[
        str, typer.Option("--temperature-col", help="Column with the noise temperature T.")
    ] = records.TEMPERATURE,
    duration_col: DurationCol = records.DURATION,
    event_col: EventCol = records.EVENT,
    lr_col: Annotated[
        str, typer.Option("--lr-col", help="Used with --batch-col when there is no T column.")
    ] = "lr",
    batch_col: Annotated[
        str, typer.Option("--batch-col", help="T = lr / batch size when T is not in the table.")
    ] = "batch_size",
    theory_barrier: Annotated[
        float | None, typer.Option("--theory-barrier", help="Barrier to compare the fit with.")
    ] = None,
    json_out: JsonOut = False,
    plot: PlotPath = None,
    unit: Unit = "steps",
) -> None:
    """Fit k(T) = exp(log_prefactor − barrier / T) to censored escape times.

    Poisson GLM of escapes on −1/T with offset log(exposure): the exact censored
    exponential MLE, zero-escape temperatures included. Pearson dispersion > 1 switches
    to quasi-Poisson errors. A Weibull AFT fit on 1/T is shown beside it as a check.

    Example: escapestat arrhenius studies/examples/escapes.csv --plot arrhenius.png
    """
    df = records.read_table(table)
    if temperature_col not in df.columns and {lr_col, batch_col} <= set(df.columns):
        df[temperature_col] = temperature_from_lr_batch(df, lr_col, batch_col)
        note = f"no {temperature_col!r} column: using T = {lr_col} / {batch_col}"
        err_console.print(escape(note))
    columns = records.Columns(duration=duration_col, event=event_col, temperature=temperature_col)
    df = records.validate(df, columns)
    fit = fit_arrhenius(df, columns)
    if plot is not None:
        plot_arrhenius(fit, plot, theory_barrier=theory_barrier, unit=unit.rstrip("s"))
        err_console.print(f"wrote {escape(str(plot))}")
    payload = fit.as_dict()
    if theory_barrier is not None:
        payload["theory_barrier"] = theory_barrier
        payload["barrier_ratio"] = fit.barrier / theory_barrier
    if json_out:
        print_json(payload)
        return
    out_console.print(_table(fit, unit))
    lo, hi = fit.barrier_ci
    plo, phi = fit.log_prefactor_ci
    out_console.print(f"barrier ΔE      = {fit.barrier:.5g}  95% CI [{lo:.5g}, {hi:.5g}]")
    out_console.print(f"log prefactor   = {fit.log_prefactor:.5g}  95% CI [{plo:.5g}, {phi:.5g}]"
                      f"  (τ₀ = {math.exp(-fit.log_prefactor):.4g} {unit})")
    disp = "n/a (two temperatures)" if fit.dispersion is None else f"{fit.dispersion:.3g}"
    out_console.print(f"dispersion      = {disp}; method: {fit.method}")
    if fit.method == "quasi-poisson":
        out_console.print("  rates scatter more than Poisson: CIs widened by the quasi-Poisson "
                          "scale", style="yellow")
    aft = fit.weibull_aft
    if aft.get("barrier") is not None:
        alo, ahi = aft["barrier_ci"]
        out_console.print(f"Weibull AFT     = {aft['barrier']:.5g}  95% CI [{alo:.5g}, {ahi:.5g}]"
                          f"  (shape {aft['shape']:.3g})")
    if theory_barrier is not None:
        out_console.print(f"theory barrier  = {theory_barrier:.5g}; fitted / theory = "
                          f"{fit.barrier / theory_barrier:.3f}")
