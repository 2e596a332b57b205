"""`escapestat sweep`: ramp β up and down across replicas; hysteresis loops per mode."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from escapestat.vocab import SWEEP_CSV, SWEEP_JSON, SWEEP_PNG

from .common import domain_errors, err_console, out_console, print_json
from .options import Device, DeviceOpt, JsonOut

if TYPE_CHECKING:
    from escapestat.sweep import SweepResult


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _jump(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:.3f}\n({_fmt(lo)}–{'beyond' if hi is None else _fmt(hi)})"


def _print_table(result: SweepResult) -> None:
    sw, spec, study = result.sweep, result.sweep.sweep, result.sweep.study
    noise = (f"Langevin T = {sw.temperature:.3g}" if sw.noise == "langevin"
             else f"SGD lr = {sw.lr:.3g}, B = {sw.batch_size}")
    table = Table(
        title=f"Hysteresis per mode: depth {result.depth}, {noise}",
        caption=f"β from {spec.beta_low:.3g} to {spec.beta_high:.3g} and back, "
                f"grid step {spec.grid_step:.3g}, {spec.steps_per_point} steps "
                f"per β, {study.run.replicas} replicas; jumps: median (10–90%); loop: up "
                "jump above down jump by more than one grid step")
    for name in ("mode", "s", "β_c", "β_sp", "up jump", "down jump", "width", "loop"):
        table.add_column(name, justify="right", overflow="fold")
    for m in result.modes:
        loop = "no" if not m.loop else ("yes" if m.closed else "yes (open)")
        table.add_row(
            str(m.mode), f"{m.strength:.3g}", f"{m.beta_c:.3f}", f"{m.beta_sp:.3f}",
            _jump(m.up_jump, m.up_jump_q10, m.up_jump_q90),
            _jump(m.down_jump, m.down_jump_q10, m.down_jump_q90),
            "—" if m.width is None else f"{m.width:.3f}", loop)
    out_console.print(table)
    out_console.print(f"{result.loops} of {len(result.modes)} modes show a loop "
                      f"({result.seconds:.1f} s on {result.device})", highlight=False)


@domain_errors
def sweep(
    study_file: Annotated[Path, typer.Argument(help="Sweep study file (TOML with a \\[sweep] "
                                               "table).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: "
                                             "runs/NAME).")] = None,
    device: DeviceOpt = Device.auto,
    json_out: JsonOut = False,
) -> None:
    """Ramp β up and then down across replicas of a deep linear net; find hysteresis loops.

    Replicas start with every mode learned at \\[sweep] beta_low; β
    climbs a staircase to beta_high and comes back down. Each mode drops
    out near its spinodal β_sp on the way up and relearns, by noise over
    the barrier, below β_c on the way down: one loop per mode at depth
    ≥ 3, none at depth 2. Writes DIR/sweep.csv (strength per branch, β
    and mode: median and 10–90% over replicas), DIR/sweep.json (per mode:
    theory β_c and β_sp, measured up and down jumps, loop width) and
    DIR/sweep.png; `escapestat report DIR` renders them.

    Example: escapestat sweep studies/sweep-paper.toml --out runs/sweep-paper
    """
    from escapestat.engine import resolve_device  # torch: this command only
    from escapestat.report import write_sweep
    from escapestat.sweep import load_sweep, run_sweep

    sw = load_sweep(study_file)
    dev = resolve_device(device.value)
    out_dir = out if out is not None else Path("runs") / sw.study.name
    with Progress(TextColumn("β staircase"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("plateaus"), TimeElapsedColumn(), console=err_console,
                  transient=json_out) as bar:
        task = bar.add_task("sweep", total=len(sw.sweep.plateaus()))
        result = run_sweep(sw, dev, progress=lambda done, _: bar.update(task, completed=done))
    write_sweep(result, out_dir, study_text=study_file.read_text(encoding="utf-8"))
    for note in result.notes:
        err_console.print(escape(f"note: {note}"))
    if json_out:
        print_json({"out": str(out_dir), **result.as_dict()})
        return
    err_console.print(escape(f"wrote {out_dir / SWEEP_CSV}, {out_dir / SWEEP_JSON} and "
                             f"{out_dir / SWEEP_PNG}"))
    _print_table(result)
