"""`escapestat run`: batched trap-and-escape trials from a study file."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich import box
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from escapestat.stats._survival import KS_BOOTSTRAP
from escapestat.vocab import CHECKPOINT_EVERY, ESCAPES, REPLICAS

from .common import dask_line, domain_errors, err_console, number, out_console, print_json
from .options import (
    Bootstrap,
    BootstrapSeed,
    Device,
    DeviceOpt,
    JsonOut,
    LogOpt,
    cluster_option,
    parse_cluster_option,
)

if TYPE_CHECKING:
    from escapestat.stats._summary import ConditionSummary, RunSummary, StratumArrhenius


class _Bar:
    """Renders the engine's progress events as a rich bar on stderr."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: TaskID | None = None

    def __call__(self, event) -> None:
        """``ChunkStarted`` opens a bar; ``ChunkProgress`` moves it; on a cluster,
        ``ClusterReady`` opens one bar over the steps of all chunks (and prints the
        dashboard's address once), and ``ClusterSteps`` and ``ChunkDone`` move it."""
        from escapestat.engine._loop import ChunkDone, ChunkStarted, ClusterReady, ClusterSteps

        if isinstance(event, ClusterReady):
            dask_line(event)
            self.task = self.progress.add_task(
                f"{event.chunks} chunk{'s' if event.chunks != 1 else ''} on the cluster",
                total=None, unit="steps", trapped=f"{event.done}/{event.chunks} chunks written")
            return
        if isinstance(event, ClusterSteps | ChunkDone):
            if self.task is not None:
                self.progress.update(self.task, completed=event.steps, total=event.total_steps,
                                     trapped=f"{event.done}/{event.chunks} chunks written")
            return
        if isinstance(event, ChunkStarted):
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                f"chunk {event.chunk + 1}/{event.chunks} ({event.replicas} replicas)",
                total=event.max_steps, unit="steps", trapped="",
            )
            return
        if self.task is not None:
            self.progress.update(self.task, completed=event.step,
                                 trapped=f"{event.active} still running")


def _compact(x, digits: int = 3) -> str:
    """``_fmt`` with short exponents (1.6e6, 9.8e-7), for the cells of wide tables."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "")
                  + m.group(2), number(x, digits))


def _pair(lo, hi, digits: int = 2) -> str:
    """A CI under its estimate: ``lo–hi``, or nothing when undefined."""
    if lo is None or hi is None or lo != lo or hi != hi:
        return ""
    return f"\n{_compact(lo, digits)}–{_compact(hi, digits)}"


def _median(c: ConditionSummary, name: str) -> str:
    m, (lo, hi) = c.grokking.median(name) if c.grokking else (None, (None, None))
    if m is None:
        return "not reached"
    return f"{number(m)}\n{number(lo)}–{'∞' if hi is None else number(hi)}"


def _batch(c: ConditionSummary) -> str:
    """The batch size, marked when it is the whole training set (no minibatch noise)."""
    return f"{c.batch_size}\n(full)" if c.full_batch else str(c.batch_size)


def _shape(c: ConditionSummary, grokking: bool = False) -> str:
    """The Weibull shape with its CI below, or — without one (grokking: without a CI)."""
    e = c.escape
    if e is None:
        return "—"
    (lo, hi), k = e.weibull_shape_ci, e.weibull_shape
    if grokking:
        return "—" if lo != lo else f"{k:.1f}\n{lo:.1f}–{hi:.1f}"
    return "—" if k != k else f"{k:.2f}" + _pair(lo, hi, 3)


def _print_grokking(summary: RunSummary) -> None:
    rows = summary.conditions
    sizes = {c.n for c in rows}
    per = f"{next(iter(sizes))} replicas each; " if len(sizes) == 1 else ""
    linear = bool(rows) and rows[0].barrier_theory is not None
    rule = ("fit / generalize: train / test error committed past threshold of the way from "
            "its start to the learned level" if linear else
            "fit: train accuracy committed ≥ fit_threshold; generalize: test accuracy "
            "committed ≥ threshold")
    table = Table(title="Grokking per condition (steps; KM medians, 95% CIs below)",
                  caption=f"{per}{rule}; delay = generalize − fit")
    names = ("lr", "β" if linear else "wd", "B") + (("n",) if per == "" else ()) + (
        "fit", "general-\nize", "delay", "grok-\nked", "Weibull\nk")
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
    for c in rows:
        table.add_row(
            number(c.lr, 3), number(c.weight_decay, 3), _batch(c),
            *((str(c.n),) if per == "" else ()),
            _median(c, "fit"), _median(c, "generalize"), _median(c, "delay"),
            f"{100 * c.grokking.grokked:.0f}%" if c.grokking else "—",
            _shape(c, grokking=True))
    out_console.print(table)
    _print_verdicts(rows, lambda c: f"lr {number(c.lr, 3)}, wd {number(c.weight_decay, 3)}, "
                                    f"B {c.batch_size}" + (" (full)" if c.full_batch else ""))


def _print_verdicts(rows: Sequence[ConditionSummary],
                    label: Callable[[ConditionSummary], str]) -> None:
    """The mechanism per condition, one line for the agreeing majority."""
    kinds = [c.verdict or "—" for c in rows]
    # On a tie the first condition's verdict leads (a set's order changes run to run).
    common = max(dict.fromkeys(kinds), key=kinds.count)
    odd = [f"{label(c)}: {k} ({c.verdict_reason})" for c, k in zip(rows, kinds, strict=True)
           if k != common]
    head = f"mechanism: {common}" + (" for all" if not odd else
                                     f" for {kinds.count(common)} of {len(kinds)}")
    out_console.print(escape("; ".join([head, *odd])), highlight=False)


#: The setting columns of the escape table: what a condition reads, and its heading.
_SETTINGS = {"weight_decay": "β", "lr": "lr", "batch_size": "B", "seed_over_saddle": "b₀/s"}


def _print_summary(summary: RunSummary) -> None:
    if summary.grokking:
        _print_grokking(summary)
        return
    rows = summary.conditions
    constant = {key: {getattr(r, key) for r in rows} for key in _SETTINGS}
    shown = [key for key, values in constant.items() if len(values) > 1]
    fixed = [f"{_SETTINGS[key]} = {number(next(iter(constant[key])), 4)}"
             for key in _SETTINGS
             if key not in shown and next(iter(constant[key])) is not None]
    excluded = any(c.diverged + c.untrapped for c in rows)
    caption = "; ".join([", ".join(fixed)] if fixed else []) + ("; " if fixed else "") + (
        "τ = exposure / escapes") + (
        "; div./untr.: diverged (censored where they diverged) / untrapped (not in n)"
        if excluded else "; none diverged or untrapped") + (
        "; b₀/s: seeded amplitude over the saddle's" if "seed_over_saddle" in shown else "")
    table = Table(title="Escape times per condition (steps; exact 95% CIs below)",
                  caption=caption, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    # ΔE/T is exact for Langevin; for SGD, T = lr / B is only a label.
    exact = all(c.batch_size is None for c in rows)
    for name in [_SETTINGS[k] for k in shown] + ["T"] + (["ΔE/T"] if exact else []) + [
            "n", "esc.", "τ", "median", "Weibull k"] + (["div./\nuntr."] if excluded else []):
        table.add_column(name, justify="right", overflow="fold")
    for c in rows:
        e = c.escape
        table.add_row(
            *[_compact(getattr(c, k), 4) for k in shown],
            _compact(c.temperature),
            *([_compact(c.barrier_over_temperature)] if exact else []),
            str(c.n), str(c.events),
            "—" if e is None else _compact(e.tau) + _pair(*e.tau_ci),
            "—" if e is None else _compact(e.median),
            _shape(c),
            *([f"{c.diverged}/{c.untrapped}"] if excluded else []),
        )
    out_console.print(table)
    _print_verdicts(rows, lambda c: f"T {number(c.temperature)}")
    parts = [c for c in rows if c.switch_trapped_component is not None]
    if parts:
        comp = sorted(cast(float, c.switch_trapped_component) for c in parts)
        floor = sorted(cast(float, c.rounding_floor) for c in parts)
        out_console.print(
            f"trapped component at the switch (the layers' largest direction beyond the "
            f"learned modes; medians per condition {number(comp[0])} … {number(comp[-1])}); "
            f"rounding floor eps·‖W‖ ≈ {number(floor[len(floor) // 2])}", highlight=False)
    for f in summary.arrhenius:
        _print_arrhenius(f)


def _print_arrhenius(f: StratumArrhenius) -> None:
    seeded = ("" if f.seed_over_saddle is None
              else f", b₀/saddle = {f.seed_over_saddle:.3g}")
    head = f"β = {f.weight_decay:.4g}{seeded}: "
    fit = f.fit
    if fit is None:
        out_console.print(head + f"no Arrhenius fit — {f.error}")
        return
    lo, hi = fit.barrier_ci
    if fit.direction != "faster with more noise":
        out_console.print(head + f"escape is {fit.direction}: the rate does not rise "
                          f"with T (slope {fit.barrier:.4g} [{lo:.4g}, {hi:.4g}]); no barrier")
        return
    line = f"{head}barrier {fit.barrier:.4g} [{lo:.4g}, {hi:.4g}] ({fit.method})"
    ratio = f.versus_theory()
    if ratio is not None:
        rlo, rhi = ratio["barrier_ratio_ci"]
        line += (f"; theory {f.theory_barrier:.4g}; fitted/theory {ratio['barrier_ratio']:.3f} "
                 f"[{rlo:.3f}, {rhi:.3f}]")
    out_console.print(line)
    fr = fit.frailty
    if fr is not None and fr.heterogeneous:
        flo, fhi = fr.barrier_ci
        out_console.print(
            f"  replicas escape at different rates (gamma-frailty variance "
            f"{fr.frailty_variance:.3g}, LR p {fr.lr_pvalue:.2g}): the barrier above "
            f"is biased; frailty barrier {fr.barrier:.4g} [{flo:.4g}, {fhi:.4g}]",
            style="yellow", highlight=False)


@domain_errors
def run(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/NAME).")]
    = None,
    device: DeviceOpt = Device.auto,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in --out.")]
    = False,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1,
                        help="Override \\[run] replicas (per condition).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1,
                         help="Override \\[run] max_steps (the censoring budget).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override \\[run] seed (the "
                    "study's training seed).")] = None,
    checkpoint_every: Annotated[float, typer.Option(
        "--checkpoint-every", min=0, metavar="SECONDS",
        help="Save an unfinished chunk's state this often, so --resume continues inside "
             "it (0: never).")] = CHECKPOINT_EVERY,
    cluster: Annotated[str | None, cluster_option(
        "chunks", "Same tables as one process")] = None,
    bootstrap: Bootstrap = KS_BOOTSTRAP,
    bootstrap_seed: BootstrapSeed = 0,
    log: LogOpt = None,
    json_out: JsonOut = False,
) -> None:
    """Trap replicas in a metastable state, train them with noise, record escape times.

    Writes DIR/escapes.csv (the survival table: escaped and right-censored
    replicas), DIR/replicas.csv (every replica with its status, diverged and
    untrapped included), DIR/run.json (config hash, seeds, versions, device,
    units) and DIR/study.toml, then prints per-condition rates and the
    Arrhenius barrier against theory. A killed run continues with --resume,
    redoing nothing that finished: finished chunks are read back, and a chunk
    stopped midway continues from its last saved state (--checkpoint-every).

    With --cluster the chunks run on Dask workers (docs: guide/cluster.md) and
    are written here as they finish; --resume works whichever way a run began.
    With --log the finished run's escapes and curves go to TensorBoard or MLflow
    too, one tracker run per condition.

    Example: escapestat run studies/quickstart.toml --out runs/quickstart
    """
    from escapestat.config._study import load_study  # the engine (torch) only for this command
    from escapestat.engine._trials import run_study

    spec = parse_cluster_option(cluster)
    from escapestat.stats._summary import run_summary

    study = load_study(study_file).with_overrides(
        replicas=replicas, max_steps=max_steps, seed=seed
    )
    tracker = None
    if log is not None:  # a typo or a missing package is found before any training
        from escapestat.trackers import open_log

        tracker = open_log(log)
    out_dir = out if out is not None else Path("runs") / study.name
    text = study_file.read_text(encoding="utf-8")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]} · {task.fields[trapped]}"), TimeElapsedColumn(),
        console=err_console, transient=False,
    ) as bar:
        result = run_study(study, out_dir, device=device.value, resume=resume, study_text=text,
                           progress=_Bar(bar), checkpoint_every=checkpoint_every or None,
                           cluster=spec)
    if result.resumed:
        err_console.print(escape(f"resumed: {result.resumed}"))
    if tracker is not None:
        from escapestat.engine._tracking import log_run

        logged = log_run(result.escapes, result.curves, study.run.max_steps, tracker)
        err_console.print(escape(f"logged {len(logged)} conditions to {log}"), soft_wrap=True)
    summary = run_summary(result.replicas, n_bootstrap=bootstrap, seed=bootstrap_seed,
                          grid=result.meta.get("check_every"),
                          budget=result.meta.get("max_steps"),
                          threshold=result.meta.get("threshold"))
    counts = result.counts
    for note in result.notes:
        err_console.print(escape(f"note: {note}"))
    if json_out:
        print_json({"out": str(out_dir), "counts": counts, "notes": result.notes,
                    **summary.as_dict()})
        result.require_usable()
        return
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    err_console.print(escape(f"wrote {out_dir / ESCAPES} and {out_dir / REPLICAS} ({tally})"))
    _print_summary(summary)
    result.require_usable()
    if counts.get("diverged", 0):
        err_console.print(escape(
            f"note: {counts['diverged']} replicas diverged; they stay in the survival table "
            "as censored at the step they diverged (a competing risk), never as escapes"))
