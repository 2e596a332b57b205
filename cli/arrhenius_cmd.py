"""`escapestat arrhenius`: barrier and prefactor from escape rates across temperatures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from escapestat.report._figures import check_plot_path, plot_arrhenius
from escapestat.stats._arrhenius import (
    ArrheniusFit,
    fit_arrhenius,
    with_temperature,
)
from escapestat.stats._per_stratum import fit_each, strata_json
from escapestat.stats._strata import arrhenius_strata
from escapestat.table import _records as records

from .common import (
    domain_errors,
    err_console,
    note_pooled,
    out_console,
    print_json,
)
from .options import (
    ByCols,
    DurationCol,
    EventCol,
    Grid,
    JsonOut,
    PlotPath,
    Pool,
    TableArg,
    Unit,
    positive,
)

if TYPE_CHECKING:
    from escapestat.stats._frailty import FrailtyFit


def _table(fit: ArrheniusFit, unit: str, label: str | None) -> Table:
    where = f"{label}: " if label else ""
    table = Table(title=f"{where}escape rate per temperature (per {unit.rstrip('s')}; "
                  "exact 95% CIs)")
    for name in ("T", "1/T", "n", "escaped", "exposure", "rate", "rate CI"):
        table.add_column(name, justify="right")
    for t, n, d, e, k, (lo, hi) in zip(
        fit.temperatures, fit.n, fit.events, fit.exposure, fit.rates, fit.rates_ci, strict=True
    ):
        table.add_row(f"{t:.4g}", f"{1 / t:.4g}", str(n), str(d), f"{e:.4g}", f"{k:.3g}",
                      f"[{lo:.3g}, {hi:.3g}]")
    return table


def _say(text: str, **kwargs) -> None:
    out_console.print(text, soft_wrap=True, highlight=False, **kwargs)


def _print_fit(fit: ArrheniusFit, payload: dict, unit: str, label: str | None) -> None:
    out_console.print(_table(fit, unit, label))
    lo, hi = fit.barrier_ci
    plo, phi = fit.log_prefactor_ci
    if fit.direction == "faster with more noise":
        _say(f"barrier ΔE      = {fit.barrier:.5g}  95% CI [{lo:.5g}, {hi:.5g}]")
    else:  # a falling or flat rate is a finding about the ladder, not a barrier
        _say(f"finding         : escape is {fit.direction} — the rate does not rise with "
             f"T (slope of log k on −1/T: {fit.barrier:.5g}, 95% CI [{lo:.5g}, {hi:.5g}]); "
             f"no barrier", style="yellow")
    _say(f"log prefactor   = {fit.log_prefactor:.5g}  95% CI [{plo:.5g}, {phi:.5g}]"
         f"  (τ₀ = {fit.tau0:.4g} {unit})")
    if fit.dispersion is None:
        _say(f"dispersion      = n/a (two temperatures); method: {fit.method}")
    else:
        _say(f"dispersion      = {fit.dispersion:.3g} (scales the covariance, t on "
             f"{fit.quantile_df:.3g} df); method: {fit.method}")
        if fit.dispersion > 1:
            _say("  rates scatter more than Poisson: CIs widened by the quasi-Poisson "
                 "scale", style="yellow")
    aft = fit.weibull_aft
    if aft is not None and aft.barrier is not None and aft.barrier_ci is not None:
        alo, ahi = aft.barrier_ci
        what = ("=" if fit.direction == "faster with more noise" else
                ": slope")  # no barrier: the cross-check is a slope too
        _say(f"Weibull AFT     {what} {aft.barrier:.5g}  95% CI [{alo:.5g}, {ahi:.5g}]"
             f"  (shape {aft.shape:.3g}; CI assumes no extra scatter between "
             f"temperatures)")
    elif aft is not None and aft.note:
        _say(f"Weibull AFT did not fit: {escape(aft.note)}")
    if fit.frailty is not None:
        _print_frailty(fit.frailty)
    if "theory_barrier" in payload:
        rlo, rhi = payload["barrier_ratio_ci"]
        _say(f"theory barrier  = {payload['theory_barrier']:.5g}; fitted / theory = "
             f"{payload['barrier_ratio']:.3f} [{rlo:.3f}, {rhi:.3f}]")


def _print_frailty(fr: FrailtyFit) -> None:
    """The replica-heterogeneity test, and the frailty barrier when it finds some."""
    if not fr.heterogeneous:
        _say(f"heterogeneity   : none detected (gamma-frailty LR test p {fr.lr_pvalue:.2g})")
        return
    lo, hi = fr.barrier_ci
    vlo, vhi = fr.frailty_variance_ci
    _say(f"heterogeneity   : replicas escape at different rates (gamma-frailty variance "
         f"{fr.frailty_variance:.3g} [{vlo:.3g}, {vhi:.3g}], LR p {fr.lr_pvalue:.2g}); "
         f"the Poisson barrier above assumes they do not and is biased", style="yellow")
    _say(f"frailty barrier = {fr.barrier:.5g}  95% CI [{lo:.5g}, {hi:.5g}]  (use this one)",
         style="yellow")


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
    by: ByCols = None,
    pool: Pool = False,
    theory_barrier: Annotated[
        float | None, typer.Option("--theory-barrier", help="Barrier (> 0) to compare with.",
                                   callback=positive("--theory-barrier"))
    ] = None,
    grid: Grid = None,
    json_out: JsonOut = False,
    plot: PlotPath = None,
    unit: Unit = "steps",
) -> None:
    """Fit k(T) = exp(log_prefactor − barrier / T) to censored escape times.

    Poisson GLM of escapes on −1/T with offset log(exposure): the exact censored
    exponential MLE, zero-escape temperatures included. Standard errors use the Pearson
    dispersion (quasi-Poisson) with t quantiles on the residual df, so the CIs widen as
    rates scatter more than Poisson; with three temperatures that is one df, and wide.
    Only the temperature may vary within a fit: split other conditions with --by (or
    pool them knowingly with --pool); a scheduled (non-constant) temperature is refused.
    A Weibull AFT fit on 1/T is shown beside it as a check, and a gamma-frailty fit tests
    whether the replicas escape at different rates (then its barrier is the one to use:
    the Poisson one is biased).

    Example: escapestat arrhenius studies/examples/escapes.csv --plot arrhenius.png
    """
    if plot is not None:
        check_plot_path(plot)
    grid = records.resolve_grid(grid, table)
    df, note = with_temperature(records.read_table(table), temperature_col, lr_col, batch_col)
    if note:
        err_console.print(escape(note))
    columns = records.Columns(duration=duration_col, event=event_col, temperature=temperature_col)
    df = records.validate(df, columns)
    strata = arrhenius_strata(df, temperature_col, by or (), pool, lr_col, batch_col)
    results = fit_each(strata, lambda rows: fit_arrhenius(rows, columns, grid=grid))

    def theory(r) -> dict:
        return {} if theory_barrier is None else r.fitted.versus_theory(theory_barrier)

    for r in results:
        note_pooled(r.stratum)
    if plot is not None:
        for r in results:
            written = plot_arrhenius(r.fitted, r.stratum.file_for(plot),
                                     theory_barrier=theory_barrier, unit=unit.rstrip("s"),
                                     table=r.stratum.rows)
            err_console.print(f"wrote {escape(str(written))}")
    if json_out:
        print_json(strata_json(results, bool(by), theory))
        return
    for r in results:
        _print_fit(r.fitted, r.to_dict(**theory(r)), unit, r.stratum.label if by else None)
