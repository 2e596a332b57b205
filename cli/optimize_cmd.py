"""`escapestat optimize` and `escapestat compare`: search schedules, then prove them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import optuna
import typer
from rich.markup import escape
from rich.table import Table

from escapestat.optimize import COMPARE_CSV, TRIALS, compare_searches, optimize
from escapestat.search import feasible

from .app import app
from .common import domain_errors, err_console, out_console, print_json
from .options import Device, DeviceOpt, JsonOut

StudyArg = Annotated[Path, typer.Argument(help="Study file (TOML) with a \\[search] table.",
                                          show_default=False)]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", help="Folder for optuna.db, trials.csv and compare.csv (default: runs/NAME-search).")]
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", help="Shared storage URL, e.g. postgresql://user@host:5432/db (default: "
    "sqlite in --out).")]
NameOpt = Annotated[str | None, typer.Option(
    "--study-name", help="Name of the search in the storage (default: the study's name).")]


def _fmt(x, digits: int = 3) -> str:
    if x is None or x != x:
        return "—"
    return f"{x:.0f}" if 100 <= abs(x) < 1e6 else f"{x:.{digits}g}"


class _TrialLine:
    """One line on stderr per finished trial: state, value, best so far, pruned count."""

    def __call__(self, name, study, trial) -> None:
        trials = study.get_trials(deepcopy=False)
        pruned = sum(t.state.name == "PRUNED" for t in trials)
        ok = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None
              and feasible(t)]
        best = min(ok, key=lambda t: t.value) if ok else None
        a = trial.user_attrs
        what = (f"median {_fmt(a.get('median'))} ({a.get('events', 0)}/{a.get('n', 0)} "
                f"escaped), value {_fmt(trial.value, 4)}" if trial.state.name == "COMPLETE"
                else f"pruned at step {a.get('pruned_at')}" if trial.state.name == "PRUNED"
                else trial.state.name.lower())
        best_text = (f"best #{best.number} {_fmt(best.value, 4)} (median "
                     f"{_fmt(best.user_attrs.get('median'))})" if best else "no feasible yet")
        err_console.print(escape(f"{name} trial {trial.number}: {what} · {best_text} · "
                                 f"{pruned} pruned"), highlight=False)


def _arm_line(arm, run) -> None:
    s = run.summary()
    err_console.print(escape(f"compare {arm.name}: median {_fmt(s['median'])}, "
                             f"{s['events']}/{s['n']} escaped, {run.seconds:.0f} s"),
                      highlight=False)


def _ratio(r: dict, key: str) -> str:
    v, ci = r[f"ratio_vs_{key}"], r[f"ratio_vs_{key}_ci"]
    if v is None and (ci is None or ci == [None, None]):
        return "—"
    lo, hi = ci or (None, None)
    return f"{_fmt(v)} [{'0' if lo is None else _fmt(lo)}, {'∞' if hi is None else _fmt(hi)}]"


def _print_compare(rows: list[dict]) -> None:
    loss = any(r.get("final_loss") is not None for r in rows)
    end_col, end_key = ("final loss", "final_loss") if loss else ("test error",
                                                                  "final_test_error")
    times = Table(title="Arms on fresh seeds: time to escape (steps)",
                  caption=f"KM median with 95% CI; escaped by the budget; mean {end_col}")
    ratios = Table(title="Against the references (ratio of medians; < 1 is sooner)",
                   caption="bootstrap 95% CIs; p: log-rank against the best constant (else "
                           "the default)")
    for table, cols in ((times, ("arm", "median [95% CI]", "escaped", end_col)),
                        (ratios, ("arm", "× default [CI]", "× best constant [CI]", "p"))):
        for col in cols:
            table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    for r in rows:
        lo, hi = r["median_ci"]
        median = ("not reached" if r["median"] is None
                  else f"{_fmt(r['median'])} [{_fmt(lo)}, {'∞' if hi is None else _fmt(hi)}]")
        times.add_row(r["arm"], median, f"{100 * r['escaped_fraction']:.0f}%",
                      _fmt(r[end_key], 3))
        ratios.add_row(r["arm"], _ratio(r, "default"), _ratio(r, "best_constant"),
                       _fmt(r["logrank_p"], 2))
    out_console.print(times)
    out_console.print(ratios)
    for r in rows:
        walls = [f"× {name} {_fmt(r[f'wall_ratio_vs_{key}'])}"
                 for key, name in (("default", "default"), ("best_constant", "best const"))
                 if r[f"wall_ratio_vs_{key}"] is not None]
        wall = f" — in wall-clock time: {', '.join(walls)}" if walls else ""
        params = ", ".join(f"{k.removeprefix('dynamics.')}={_short(v)}"
                           for k, v in r["params"].items())
        out_console.print(escape(f"{r['arm']}: {params or 'the study as written'}{wall}"),
                          highlight=False)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def _report(result, json_out: bool) -> None:
    s = result.search
    best = s.best
    payload = {
        "study_name": result.study_name, "storage": result.storage,
        "n_trials": len(s.trials), "n_complete": s.counts.get("complete", 0),
        "n_pruned": s.counts.get("pruned", 0), "n_failed": s.counts.get("fail", 0),
        "best": None if best is None else {
            "params": best.user_attrs.get("overrides"), "value": best.value,
            "median": best.user_attrs.get("median"),
            "median_ci": best.user_attrs.get("median_ci"),
            "events": best.user_attrs.get("events"), "n": best.user_attrs.get("n")},
        "constant_best": None if result.constant is None or result.constant.best is None else {
            "params": result.constant.best.user_attrs.get("overrides"),
            "value": result.constant.best.value,
            "median": result.constant.best.user_attrs.get("median")},
        "compare": result.compare,
        "out": str(result.out_dir),
    }
    if json_out:
        print_json(payload)
        return
    err_console.print(escape(f"wrote {result.out_dir / TRIALS}"
                             + (f" and {result.out_dir / COMPARE_CSV}" if result.compare else "")))
    line = (f"{result.study_name}: {payload['n_complete']} complete, {payload['n_pruned']} "
            f"pruned, {payload['n_failed']} failed")
    if best is not None:
        line += (f"; best trial #{best.number}: {best.user_attrs.get('overrides')} — median "
                 f"{_fmt(best.user_attrs.get('median'))}")
    out_console.print(escape(line), highlight=False)
    if result.compare:
        _print_compare(result.compare)


@app.command("optimize")
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    out_dir = out if out is not None else Path("runs") / f"{study_file.stem}-search"
    result = optimize(study_file, out_dir, storage, study_name, trials, device.value,
                      compare=not no_compare, heartbeat=heartbeat,
                      on_trial=_TrialLine(), on_arm=_arm_line)
    _report(result, json_out)


@app.command("compare")
@domain_errors
def compare_cmd(
    study_file: StudyArg,
    out: OutOpt = None,
    storage: StorageOpt = None,
    study_name: NameOpt = None,
    device: DeviceOpt = Device.auto,
    json_out: JsonOut = False,
) -> None:
    """Re-run a finished search's best trials and the baselines on fresh seeds.

    Per arm: median time with its CI, fraction escaped, final test error (or
    loss); against the default and the best constant setting: the median
    ratio with a bootstrap CI (in steps and in wall-clock time) and a log-rank
    p-value.

    Example: escapestat compare studies/grok-search-quick.toml
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = out if out is not None else Path("runs") / f"{study_file.stem}-search"
    result = compare_searches(study_file, out_dir, storage, study_name, device.value,
                              _arm_line)
    _report(result, json_out)
