"""`escapestat regress`: scaling exponents of τ on condition columns (τ ∝ lr^a wd^b ...)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from escapestat.stats._per_stratum import fit_each, strata_json
from escapestat.stats._regress import RateRegression, regress_strata
from escapestat.table import _records as records

from .common import (
    domain_errors,
    note_pooled,
    out_console,
    print_json,
)
from .options import ByCols, DurationCol, EventCol, JsonOut, Pool, TableArg, Unit

#: Widest table printed, whatever the terminal: the table folds to fit.
WIDTH = 80


def _num(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _ci(ci) -> str:
    return "—" if ci is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def _table(fit: RateRegression, label: str | None) -> Table:
    """One row per term, and under it the Weibull AFT cross-check of the same exponent."""
    where = f"{label}: " if label else ""
    table = Table(title=f"{where}exponents of τ (τ ∝ x^exponent for a term log(x))",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("term", overflow="fold", min_width=12)
    for name in ("τ exponent", "95% CI", "p"):
        table.add_column(name, justify="right", overflow="fold")
    for t in fit.terms_:
        table.add_row(t.term, _num(t.tau_exponent), _ci(t.tau_exponent_ci), f"{t.p:.2g}")
        a = fit.aft_.term(t.term) if fit.aft_ is not None else None
        if a is not None:
            table.add_row("  Weibull AFT", _num(a.tau_exponent), _ci(a.tau_exponent_ci),
                          f"{a.p:.2g}", style="dim")
    return table


def _say(text: str, **kwargs) -> None:
    out_console.print(text, soft_wrap=False, highlight=False, width=WIDTH, **kwargs)


def _print_fit(fit: RateRegression, unit: str, label: str | None) -> None:
    out_console.print(_table(fit, label), width=min(out_console.width, WIDTH))
    _say("τ exponent = − rate coefficient of the Poisson GLM (rate ∝ x^coefficient)")
    if fit.intercept_ is not None:
        lo, hi = fit.intercept_["log_tau_ci"]
        _say(f"log τ at x = 1: {fit.intercept_['log_tau']:.4g} [{lo:.4g}, {hi:.4g}] "
             f"(τ in {unit})")
    _say(f"{fit.n_rows_} replicas in {fit.n_cells_} cells, {fit.events_} escapes")
    if fit.dispersion_ is None:
        _say(f"dispersion n/a (no residual df); method: {fit.method_}")
    else:
        _say(f"dispersion {fit.dispersion_:.3g}: {fit.method_}, t on "
             f"{fit.quantile_df_:.3g} df")
        if fit.dispersion_ > 1:
            _say("  rates scatter more than Poisson: CIs widened by the quasi-Poisson "
                 "scale", style="yellow")
    aft = fit.aft_
    if aft is not None and aft.shape is not None and aft.shape_ci is not None:
        lo, hi = aft.shape_ci
        _say(f"Weibull AFT shape ρ {aft.shape:.3g} [{lo:.3g}, {hi:.3g}]; its intervals assume "
             "no extra scatter between conditions")
        if not lo <= 1 <= hi:
            _say("  escape is not exponential (ρ ≠ 1): the GLM and AFT exponents need not "
                 "agree", style="yellow")
    elif aft is not None and aft.note:
        _say(f"Weibull AFT did not fit: {escape(aft.note)}")


@domain_errors
def regress(
    table: TableArg,
    formula: Annotated[
        str, typer.Argument(help="Right-hand side in patsy syntax over condition columns; "
                            "log() is available.", show_default=False)
    ],
    duration_col: DurationCol = records.DURATION,
    event_col: EventCol = records.EVENT,
    by: ByCols = None,
    pool: Pool = False,
    json_out: JsonOut = False,
    unit: Unit = "steps",
) -> None:
    """Fit scaling exponents of the escape time τ on condition columns.

    Poisson GLM of escapes with offset log(exposure) on the formula's terms,
    over cells of identical conditions: the exact censored exponential MLE.
    A rate coefficient a of log(x) means rate ∝ x^a, so τ ∝ x^(−a): the
    table shows τ exponents, the negated rate coefficients. CIs use the
    quasi-Poisson scale and t quantiles on the residual df, as in `arrhenius`. A
    Weibull AFT fit on the replica rows is shown beside it; with exponential
    escape (shape ≈ 1) the two agree. Condition columns outside the formula
    must be constant: split them with --by or pool them with --pool.

    Example: escapestat regress escapes.csv "log(lr) + log(weight_decay)"
    """
    columns = records.Columns(duration=duration_col, event=event_col)
    df = records.validate(records.read_table(table), columns)
    results = fit_each(regress_strata(df, formula, by or (), pool),
                       lambda rows: RateRegression().fit(rows, formula, columns))
    for r in results:
        note_pooled(r.stratum)
    if json_out:
        print_json(strata_json(results, bool(by)))
        return
    for r in results:
        _print_fit(r.fitted, unit, r.stratum.label if by else None)
