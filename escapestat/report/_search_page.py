"""The report's sections for an optimisation folder (history, importances, best trials,
the compare arms) and for a sweep folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd

from escapestat import vocab
from escapestat.errors import EscapestatError
from escapestat.report._document import (
    MIN_IMPORTANCE_TRIALS,
    Figure,
    Report,
    Section,
    Table,
    _est,
    _filled,
    _slug,
    _with_time,
)
from escapestat.report._figures import (
    figure_png,
    fmt3,
    medians_figure,
    schedules_figure,
)
from escapestat.report._run_page import _km_figures, _short
from escapestat.table import _records as records
from escapestat.vocab import COMPARE_ARMS, COMPARE_JSON, OPTUNA_DB, TRIALS

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from escapestat.config._schedules import Schedule


# ---------------------------------------------------------------- an optimisation folder
def _load_studies(db: Path):
    """Every study in ``optuna.db``, read from a copy (the folder is never written)."""
    import optuna

    tmp = tempfile.mkdtemp(prefix="escapestat-report-")
    copy = Path(tmp) / OPTUNA_DB
    shutil.copyfile(db, copy)
    url = f"sqlite:///{copy}"
    try:
        names = optuna.get_all_study_names(storage=url)
        return [optuna.load_study(study_name=n, storage=url) for n in names], tmp
    except Exception as exc:  # sqlalchemy/optuna raise many types on a foreign file
        shutil.rmtree(tmp, ignore_errors=True)
        raise EscapestatError(f"{db}: not an Optuna storage ({str(exc)[:120]})") from None


_OBJECTIVES = {"rmst": "log restricted mean time not yet escaped (log steps)",
               "log_tau": "log τ = log(exposure / escapes) (log steps)"}


def _objective_name(study) -> str:
    """What the search minimised, from the identity the search stored in the study."""
    from escapestat.search._identity import IDENTITY_ATTR

    kind = (study.user_attrs.get(IDENTITY_ATTR) or {}).get("search.objective")
    return "objective" if kind is None else _OBJECTIVES.get(kind, "objective")


def _pruned_marks(ax, trials) -> None:
    """Pruned trials at their last reported value (Optuna's history leaves them out)."""
    import optuna

    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    if pruned:
        xs, ys = zip(*pruned, strict=True)
        ax.scatter(xs, ys, marker="x", color="0.45", label="pruned (last reported value)")
        ax.legend(fontsize=8)


def _study_section(study) -> Section:
    """One search: its counts and best trial, Optuna's history and importance plots."""
    import matplotlib
    import optuna
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as ovm

    from escapestat.search._search import outcome

    out = outcome(study)
    sec = Section(f"Search “{study.study_name}”")
    counts = ", ".join(f"{v} {k}" for k, v in out.counts.items() if v)
    text = f"{len(out.trials)} trials ({counts or 'none'})"
    if out.best is not None:
        params = ", ".join(f"{k.removeprefix('dynamics.')} = {_short(v)}"
                           for k, v in out.best.params.items())
        text += (f"; best feasible: trial {out.best.number}, objective "
                 f"{fmt3(out.best.value)} ({params})")
    else:
        text += "; no complete trial met the constraints (grey points: infeasible)"
    sec.blocks.append(text + ".")
    name = _slug(study.study_name)
    with matplotlib.rc_context():  # Optuna's plots switch the style to ggplot: keep it here
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in out.trials):
            ax = ovm.plot_optimization_history(study)
            cast("MplFigure", ax.figure).set_size_inches(7, 4)  # Optuna's axes: on a Figure
            ax.set_ylabel(f"{_objective_name(study)} (lower is better)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _pruned_marks(ax, out.trials)
            sec.blocks.append(Figure(f"history-{name}", figure_png(ax.figure),
                                     f"optimisation history of {study.study_name}"))
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in out.trials)
        try:
            if complete < MIN_IMPORTANCE_TRIALS:
                raise EscapestatError(f"only {complete} complete trial(s); fANOVA needs at "
                                      f"least {MIN_IMPORTANCE_TRIALS} to say anything")
            ax = ovm.plot_param_importances(study)
            if not ax.patches:
                raise EscapestatError("no parameter varied over the complete trials")
        except Exception as exc:  # too few trials, one parameter, ...: say so and go on
            matplotlib.pyplot.close("all")
            sec.blocks.append(f"Parameter importances not shown: {str(exc)[:160]}")
        else:
            cast("MplFigure", ax.figure).set_size_inches(7, 1.2 + 0.4 * len(ax.get_yticks()))
            sec.blocks.append(Figure(f"importance-{name}", figure_png(ax.figure),
                                     f"parameter importances (fANOVA) of {study.study_name}"))
    return sec


def _optuna_sections(path: Path) -> list[Section]:
    studies, tmp = _load_studies(path / OPTUNA_DB)
    try:
        return [_study_section(study) for study in studies]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _best_trials(path: Path) -> Section | None:
    trials = records.read_table(path / TRIALS)
    if "value" not in trials.columns or not len(trials):
        return None
    ok = trials[(trials["state"] == "complete") & trials["feasible"].astype(bool)]
    rows = []
    for name, part in ok.groupby("search", sort=False):
        for _, t in part.sort_values("value").head(5).iterrows():
            params = json.loads(t["overrides"]) if isinstance(t["overrides"], str) else {}
            rows.append({"search": name, "trial": int(t["trial"]), "value": fmt3(t["value"]),
                         "median [CI]": _est(t["median"], (t["median_lo"], t["median_hi"])),
                         "escaped": f"{fmt3(t['events'])}/{fmt3(t['n'])}",
                         "final test error": fmt3(t.get("final_test_error")),
                         "parameters": ", ".join(f"{k.removeprefix('dynamics.')} = {_short(v)}"
                                                 for k, v in params.items())})
    return Section("Best trials", [Table(pd.DataFrame(rows),
                                         "five best complete, feasible trials per search "
                                         "(trials.csv); value: the objective")]) if rows else None




def _arm_schedules(arms: list[dict]) -> dict[str, dict[str, Schedule]]:
    """quantity → arm → Schedule, from the arms' ``dynamics.*`` parameters."""
    from escapestat.config._schedules import parse_schedule

    out: dict[str, dict[str, Schedule]] = {}
    for arm in arms:
        specs: dict[str, object] = {}
        for key, value in (arm.get("params") or {}).items():
            parts = key.split(".")
            if parts[0] != "dynamics" or len(parts) not in (2, 3):
                continue
            if len(parts) == 2:
                specs[parts[1]] = value
            else:
                table = specs.setdefault(parts[1], {})
                if isinstance(table, dict):
                    table[parts[2]] = value
        for name, spec in specs.items():
            if name in ("batch_size", "grad_filter"):
                continue
            try:
                out.setdefault(name, {})[arm["arm"]] = parse_schedule(spec, name)
            except EscapestatError:
                continue
    # A quantity that some arm schedules, or that the arms hold at different constants
    # (lr differing 28× between arms is what the figure must show, not only wd).
    return {k: v for k, v in out.items()
            if any(not s.is_constant for s in v.values())
            or len({round(s.value(0), 12) for s in v.values()}) > 1}


def _compare_section(path: Path) -> Section:
    try:
        arms = json.loads((path / COMPARE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EscapestatError(f"{path / COMPARE_JSON}: unreadable ({exc})") from None
    sec = Section("Validation on fresh seeds (compare)", [
        "Each arm re-run on fresh seeds with the same step budget, every replica trained "
        "to the budget: median escape or generalisation time (where the incidence of "
        "escape reaches ½, a diverged replica never escaping; bootstrap 95% CI), final "
        "errors at the budget (* over the search's limit), the ratio to the default arm "
        "(bootstrap CI) and the log-rank p value; the Weibull-AFT time ratio to the best "
        "constant (every escape, interval-censored on the check grid; it decides faster "
        "or slower); a scheduled best trial against the best of its ablations (the "
        "schedule held at its start, end and mean)."])
    outcome, contrast = [], []
    for a in arms:
        outcome.append({
            "arm": a.get("arm"), "source": a.get("source"),
            "parameters": ", ".join(f"{k.removeprefix('dynamics.')} = {_short(v)}"
                                    for k, v in (a.get("params") or {}).items()),
            "escaped": f"{a.get('events')}/{a.get('n')}",
            "diverged": a.get("diverged", 0),
            "median [CI]": _est(a.get("median"), a.get("median_ci")),
            "final test error": fmt3(a.get("final_test_error"))
            + ("" if a.get("feasible", True) else "*"),
            "final loss": fmt3(a.get("final_loss")),
        })
        contrast.append({
            "arm": a.get("arm"),
            "× default [CI]": _est(a.get("ratio_vs_default"), a.get("ratio_vs_default_ci")),
            "log-rank p": fmt3(a.get("logrank_p_vs_default")),
            "wall × default": fmt3(a.get("wall_ratio_vs_default")),
            "× best constant [CI]; time ratio": _with_time(a, "best_constant"),
            "× best ablation [CI]": _est(a.get("ratio_vs_ablation"),
                                         a.get("ratio_vs_ablation_ci")),
            "schedule": a.get("schedule_verdict") or "",
        })
    # Two tables, not one of 14 columns (wider than a 1280-px screen); a column no arm
    # fills (final loss of a grokking search, ablations where nothing is scheduled) goes.
    sec.blocks.append(Table(_filled(pd.DataFrame(outcome)), "compare.json: the arms"))
    sec.blocks.append(Table(_filled(pd.DataFrame(contrast)),
                            "compare.json: each arm against the references"))
    replicas = path / COMPARE_ARMS
    if replicas.is_file():
        arms_rows = records.read_table(replicas)
        sec.blocks.extend(_km_figures(arms_rows, records.Columns(group="arm"), None, "steps",
                                      "arms-km"))
    med = [(a["arm"], a["median"], a.get("median_ci") or (None, None)) for a in arms
           if a.get("median") is not None]
    if med:
        names, medians, cis = zip(*med, strict=True)
        sec.blocks.append(Figure("arms", figure_png(medians_figure(
            names, medians, cis, title="Arms on fresh seeds")), "median time per arm, 95% CI"))
    schedules = _arm_schedules(arms)
    if schedules:
        his = [c[1] for _, _, c in med if c[1] is not None] or [1e4]
        budget = (float(arms_rows["duration"].max()) if replicas.is_file() and len(arms_rows)
                  else None)
        horizon = budget if budget else max(1000.0, 2.0 * max(his))
        sec.blocks.append(Figure("arm-schedules", figure_png(schedules_figure(
            schedules, horizon,
            "The arms' settings over the budget" if budget else
            "The arms' schedules (to twice the slowest arm's upper median)")),
            "schedules of the arms that set them; an arm that leaves a quantity at the "
            "study's value is not drawn for it"))
    return sec


def _search_report(path: Path) -> Report:
    sections = []
    if (path / OPTUNA_DB).is_file():
        sections += _optuna_sections(path)
    else:
        sections.append(Section("Searches", [f"no {OPTUNA_DB} here (an external storage?): "
                                             f"no optimisation history"]))
    if (path / TRIALS).is_file():
        best = _best_trials(path)
        if best is not None:
            sections.append(best)
    if (path / COMPARE_JSON).is_file():
        sections.append(_compare_section(path))
    return Report(f"escapestat report — optimisation “{path.name}”", str(path.resolve()),
                  sections)


# ---------------------------------------------------------------- a sweep folder
def _sweep_report(path: Path) -> Report:
    """``escapestat sweep``'s folder: per-mode jumps against theory, and its figure."""
    data = json.loads((path / vocab.SWEEP_JSON).read_text(encoding="utf-8"))
    rows = []
    def jump(m: dict, key: str) -> str:
        if m.get(key) is None:
            return "never"
        return f"{m[key]:.3g} ({m[key + '_q10']:.3g}–{m[key + '_q90']:.3g})"

    for m in data["modes"]:
        rows.append({"mode": m["mode"], "s": m["strength"], "β_c": f"{m['beta_c']:.3g}",
                     "β_sp": f"{m['beta_sp']:.3g}", "up jump": jump(m, "up_jump"),
                     "down jump": jump(m, "down_jump"),
                     "width": "—" if m.get("width") is None else f"{m['width']:.3g}",
                     "loop": "yes" if m["loop"] else "no",
                     "ΔE(β_down)/T": "—" if m.get("down_barrier_over_t") is None
                     else f"{m['down_barrier_over_t']:.3g}"})
    noise = (f"Langevin T = {data['temperature']:.3g}" if data["noise"] == "langevin"
             else f"SGD, B = {data['batch_size']}")
    setting = (f"depth {data['depth']}, widths {data['widths']}, {noise}, lr {data['lr']:.3g}, "
               f"{data['replicas']} replicas; β from {data['beta_low']:.3g} to "
               f"{data['beta_high']:.3g} and back in {data['points']} steps of "
               f"{data['steps_per_point']} steps each")
    blocks: list = [setting, Table(pd.DataFrame(rows),
                                   f"{data['loops']} of {len(rows)} modes show a hysteresis "
                                   "loop; jumps: median (10–90%) over replicas")]
    blocks += [f"note: {n}" for n in data.get("notes", [])]
    if (path / vocab.SWEEP_PNG).is_file():
        blocks.append(Figure("sweep", (path / vocab.SWEEP_PNG).read_bytes(),
                             "strength over s against β, up and down branches; theory's β_c "
                             "dashed and β_sp dotted"))
    return Report(f"escapestat report — sweep “{data['name']}”", str(path.resolve()),
                  [Section("Hysteresis per mode", blocks)])
