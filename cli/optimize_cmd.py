"""`escapestat optimize` and `escapestat compare`: search schedules, then prove them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from escapestat.vocab import COMPARE_CSV, TRIALS

from .common import dask_line, domain_errors, err_console, number, out_console, print_json
from .options import Device, DeviceOpt, JsonOut, LogOpt, cluster_option, parse_cluster_option

if TYPE_CHECKING:
    from escapestat.search._arm_result import ArmComparison
    from escapestat.search._optimize import OptimizeResult

StudyArg = Annotated[Path, typer.Argument(help="Study file (TOML) with a \\[search] table.",
                                          show_default=False)]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", help="Folder for optuna.db, trials.csv and compare.csv (default: runs/NAME-search).")]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="Shared storage URL, e.g. postgresql://user@host:5432/db (default: "
    "sqlite in --out).")]
NameOpt = Annotated[str | None, typer.Option(
    "--study-name", help="Name of the search in the storage (default: the study's name).")]
ClusterOpt = Annotated[str | None, cluster_option(
    "compare arms, one task per arm,", "Same replicas per arm as one process")]


class _TrialLine:
    """One line on stderr per finished trial: state, value, best so far, pruned count."""

    def __call__(self, name, study, trial) -> None:
        from escapestat.search._search import feasible

        trials = study.get_trials(deepcopy=False)
        pruned = sum(t.state.name == "PRUNED" for t in trials)
        ok = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None
              and feasible(t)]
        best = min(ok, key=lambda t: t.value) if ok else None
        a = trial.user_attrs
        diverged = f", {a['diverged']} diverged" if a.get("diverged") else ""
        what = (f"median {number(a.get('median'))} ({a.get('events', 0)}/{a.get('n', 0)} "
                f"escaped{diverged}), value {number(trial.value, 4)}"
                if trial.state.name == "COMPLETE"
                else f"pruned at step {a.get('pruned_at')}" if trial.state.name == "PRUNED"
                else "interrupted" if a.get("interrupted")
                else f"failed: {a['fail_reason']}" if a.get("fail_reason")
                else trial.state.name.lower())
        best_text = (f"best #{best.number} {number(best.value, 4)} (median "
                     f"{number(best.user_attrs.get('median'))})" if best else "no feasible yet")
        err_console.print(escape(f"{name} trial {trial.number}: {what} · {best_text} · "
                                 f"{pruned} pruned"), highlight=False)


def _cluster_line(event) -> None:
    dask_line(event, f"{event.chunks} arms")


def _arm_line(arm, run) -> None:
    s = run.summary(n_bootstrap=1)
    diverged = f", {s.diverged} diverged" if s.diverged else ""
    err_console.print(escape(f"compare {arm.name}: median {number(s.median)}, "
                             f"{s.events}/{s.n} escaped{diverged}, "
                             f"{run.seconds:.0f} s"), highlight=False)


def _ratio(r: ArmComparison, key: str) -> str:
    """The ratio of medians (a zero-width CI said as "within one check", a not-reached
    median as the side it bounds) over the time ratio from the whole curve."""
    v, ci = getattr(r, f"ratio_vs_{key}"), getattr(r, f"ratio_vs_{key}_ci")
    bound = getattr(r, f"ratio_vs_{key}_bound")
    lo, hi = ci or (None, None)
    if v is None and bound:
        median = f"{bound[0]} {number(bound[1])} (not reached)"
    elif v is None and lo is None and hi is None:
        median = "—"
    elif lo is not None and lo == hi:
        median = f"{number(v)} (within one check)"
    else:
        median = (f"{number(v) if v is not None else '—'} [{'0' if lo is None else number(lo)}, "
                  f"{'∞' if hi is None else number(hi)}]")
    t, tci = getattr(r, f"time_ratio_vs_{key}"), getattr(r, f"time_ratio_vs_{key}_ci")
    if t is None:
        return median
    assert tci is not None  # the compare rows hold a time ratio with its CI (_time_columns)
    return f"{median}\ntime {number(t)} [{number(tci[0])}, {number(tci[1])}]"


def _table(title: str, caption: str, cols: tuple[str, ...]) -> Table:
    table = Table(title=title, caption=caption)
    for col in cols:
        table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    return table


def _print_compare(rows: list[ArmComparison]) -> None:
    loss = any(r.final_loss is not None for r in rows)
    end_col, end_key = ("final loss", "final_loss") if loss else ("test error",
                                                                  "final_test_error")
    times = _table("Arms on fresh seeds: time to escape (steps)",
                   f"median: where the incidence of escape reaches ½ (a diverged replica "
                   f"never escapes), 95% CI; outcomes by the budget; mean {end_col} at the "
                   f"budget (* over the search's limit)",
                   ("arm", "median [95% CI]", "escaped", "diverged", end_col))
    ratios = _table("Against the references (< 1 is sooner)",
                    "first line: ratio of medians, bootstrap 95% CI; time: the Weibull-AFT "
                    "time ratio from the whole curve (on the check grid), 95% CI — it "
                    "decides faster/slower; p: log-rank against the best constant (else the "
                    "default)", ("arm", "× default", "× best constant", "p"))
    for r in rows:
        lo, hi = r.median_ci or (None, None)
        median = ("not reached" if r.median is None
                  else f"{number(r.median)} [{number(lo)}, {'∞' if hi is None else number(hi)}]")
        times.add_row(r.arm, median, f"{100 * r.escaped_fraction:.0f}%",
                      f"{100 * r.diverged_fraction:.0f}%",
                      number(getattr(r, end_key), 3) + ("" if r.feasible else "*"))
        if r.source.startswith("ablation"):
            continue
        ratios.add_row(r.arm, _ratio(r, "default"), _ratio(r, "best_constant"),
                       number(r.logrank_p, 2))
    out_console.print(times)
    out_console.print(ratios)
    scheduled = [r for r in rows if r.ablations]
    if scheduled:
        ablated = _table("Does the schedule matter? Against its own ablations",
                         "each scheduled quantity held constant at its start, end and mean; "
                         "the best feasible of them; bootstrap 95% CI",
                         ("arm", "best ablation", "× ablation [CI]", "p", "verdict"))
        for r in scheduled:
            ablated.add_row(r.arm, (r.ablation_best or "—").removeprefix(r.arm + ":"),
                            _ratio(r, "ablation"), number(r.logrank_p_vs_ablation, 2),
                            r.schedule_verdict)
        out_console.print(ablated)
    for r in rows:
        walls = [f"× {name} {number(getattr(r, f'wall_ratio_vs_{key}'))}"
                 for key, name in (("default", "default"), ("best_constant", "best const"))
                 if getattr(r, f"wall_ratio_vs_{key}") is not None]
        wall = f" — in wall-clock time: {', '.join(walls)}" if walls else ""
        detect = r.detectable_vs_best_constant or r.detectable_vs_default
        if detect is not None:
            wall += (f"; with these replicas a time ratio beyond ×{number(detect)} or "
                     f"÷{number(detect)} is detectable (80% power)")
        params = ", ".join(f"{k.removeprefix('dynamics.')}={_short(v)}"
                           for k, v in r.params.items())
        out_console.print(escape(f"{r.arm}: {params or 'the study as written'}{wall}"),
                          highlight=False)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def _report(result: OptimizeResult, json_out: bool) -> None:
    s = result.search
    best = s.best
    payload = result.as_dict()
    if json_out:
        print_json(payload)
        return
    for note in result.notes:
        err_console.print(escape(f"note: {note}"), highlight=False)
    err_console.print(escape(f"wrote {result.out_dir / TRIALS}"
                             + (f" and {result.out_dir / COMPARE_CSV}" if result.compare else "")))
    line = (f"{result.study_name}: {payload['n_complete']} complete, {payload['n_pruned']} "
            f"pruned, {payload['n_failed']} failed")
    if best is not None:
        line += (f"; best trial #{best.number}: {best.user_attrs.get('overrides')} — median "
                 f"{number(best.user_attrs.get('median'))}")
    out_console.print(escape(line), highlight=False)
    if result.compare:
        _print_compare(result.compare)


@domain_errors
def optimize_cmd(
    study_file: StudyArg,
    out: OutOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1,
                      help="Override \\[search] trials (per search).")] = None,
    storage: StorageOpt = None,
    study_name: NameOpt = None,
    device: DeviceOpt = Device.auto,
    no_compare: Annotated[bool, typer.Option(
        "--no-compare", help="Search only (extra workers); run 'escapestat compare' after.")]
    = False,
    heartbeat: Annotated[int, typer.Option("--heartbeat", min=1, help="Seconds between a "
                         "running trial's heartbeats; a silent trial is retried after 2×.")]
    = 30,
    cluster: ClusterOpt = None,
    log: LogOpt = None,
    json_out: JsonOut = False,
) -> None:
    """Search L2 / lr / noise schedules with Optuna to shorten the time to escape.

    Runs the \\[search] space, then the same space with every schedule held
    constant (the best constant setting is the bar to beat), then re-runs the
    best trials and the baselines on fresh seeds (escapestat compare). Trials
    are scored censoring-aware (log RMST at the budget), under the study's
    final-error or final-loss constraint; hopeless trials are pruned. Many
    workers share one search through --storage.

    Example: escapestat optimize studies/grok-search-quick.toml
    """
    # Our own line per trial instead; a failed trial's line says why (Optuna would print
    # a traceback for each, and one for a trial cut short by Ctrl-C).
    import optuna  # the search's libraries only for these commands

    from escapestat.search._optimize import optimize

    spec = parse_cluster_option(cluster)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out_dir = out if out is not None else Path("runs") / f"{study_file.stem}-search"
    result = optimize(study_file, out_dir, storage, study_name, trials, device.value,
                      compare=not no_compare, heartbeat=heartbeat,
                      on_trial=_TrialLine(), on_arm=_arm_line, cluster=spec,
                      on_cluster=_cluster_line, log=log)
    _report(result, json_out)


@domain_errors
def compare_cmd(
    study_file: StudyArg,
    out: OutOpt = None,
    storage: StorageOpt = None,
    study_name: NameOpt = None,
    device: DeviceOpt = Device.auto,
    cluster: ClusterOpt = None,
    json_out: JsonOut = False,
) -> None:
    """Re-run a finished search's best trials and the baselines on fresh seeds.

    Per arm: median time with its CI, fraction escaped, final test error (or
    loss); against the default and the best constant setting: the median
    ratio with a bootstrap CI (in steps and in wall-clock time) and a log-rank
    p-value.

    With --cluster each arm is one task on Dask workers (docs: guide/cluster.md):
    the same replicas per arm; the wall-clock ratios then compare arms timed on
    different workers, fair only when the workers are alike.

    Example: escapestat compare studies/grok-search-quick.toml
    """
    import optuna  # the search's libraries only for these commands

    from escapestat.search._optimize import compare_searches

    spec = parse_cluster_option(cluster)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out_dir = out if out is not None else Path("runs") / f"{study_file.stem}-search"
    result = compare_searches(study_file, out_dir, storage, study_name, device.value,
                              _arm_line, cluster=spec, on_cluster=_cluster_line)
    _report(result, json_out)
