"""`escapestat theory`: one mode's landscape — β_c, β_sp, barrier, saddle, learned state."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from escapestat.theory._landscape import critical_beta, landscape

from .common import domain_errors, out_console, print_json, usage_error
from .options import JsonOut


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


@domain_errors
def theory(
    depth: Annotated[int, typer.Option("--depth", "-L", help="Number of weight matrices L ≥ 2.")],
    strength: Annotated[float, typer.Option("--strength", "-s", help="Teacher singular value s.")],
    beta: Annotated[
        float | None,
        typer.Option("--beta", "-b", help="L2 strength β (default: half of β_c)."),
    ] = None,
    beta_over_beta_c: Annotated[
        float | None,
        typer.Option("--beta-over-beta-c", min=0.0,
                     help="β as a fraction of β_c, as in study files (instead of --beta)."),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Landscape of one teacher mode: ℓ(a) = ½(s − a^L)² + (βL/2)a², w = a^L.

    Prints β_c (learned and zero states equally deep), β_sp (spinodal: above it only
    zero exists), the barrier out of the zero state at β, and the saddle and learned
    end-to-end strengths. The barrier is null where zero is no trap (depth 2, β ≥ β_sp).

    Example: escapestat theory --depth 3 --strength 1 --beta-over-beta-c 0.8
    """
    if beta is not None and beta_over_beta_c is not None:
        raise usage_error("give --beta or --beta-over-beta-c, not both")
    if beta is None:
        fraction = 0.5 if beta_over_beta_c is None else beta_over_beta_c
        beta = fraction * critical_beta(depth, strength)
    scape = landscape(depth, strength, beta)
    if json_out:
        print_json(scape.as_dict())
        return
    table = Table(title=f"Mode landscape: depth {depth}, strength {strength:g}, β = {beta:.6g}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    table.add_row("β_c", _fmt(scape.beta_c), "learned and zero states equally deep")
    table.add_row("β_sp", _fmt(scape.beta_sp), "spinodal: no learned state above it")
    table.add_row("barrier ΔE", _fmt(scape.barrier), "ℓ(saddle) − ℓ(0), out of the zero state")
    table.add_row("saddle w", _fmt(scape.saddle), "end-to-end strength at the saddle")
    table.add_row("learned w", _fmt(scape.learned), "end-to-end strength when learned")
    table.add_row("β / β_c", _fmt(beta / scape.beta_c), "")
    table.add_row("transition", scape.transition,
                  "zero is never a trap at depth 2" if depth == 2 else "")
    table.add_row("phase", scape.phase, "at this β")
    out_console.print(table)
