"""The report's sections for a run directory and for a plain escape table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from escapestat import vocab
from escapestat.errors import EscapestatError
from escapestat.report._document import KM_PER_FIGURE, Figure, Report, Section, Table, _ci, _est
from escapestat.report._figures import (
    arrhenius_figure,
    curves_figure,
    figure_png,
    fmt3,
    group_label,
    is_grokking,
    loglogs_figure,
    schedules_figure,
    survival_figure,
    theory_barrier_of,
)
from escapestat.table import _records as records

if TYPE_CHECKING:
    from collections.abc import Sequence

    from escapestat.config._schedules import Schedule
    from escapestat.stats._arrhenius import ArrheniusFit
    from escapestat.stats._per_stratum import StratumFit
    from escapestat.stats._summary import ConditionSummary, RunSummary
    from escapestat.stats._survival import GroupSummary


# ---------------------------------------------------------------- a run directory
def _meta_table(meta: dict) -> Table:
    rows = []
    for key in ("study", "status", "started", "finished", "config_hash", "seed", "chunk_seeds",
                "device", "dtype", "units", "check_every", "max_steps", "temperature"):
        if key in meta:
            value = meta[key]
            if isinstance(value, list):
                value = ", ".join(map(str, value[:8])) + (f" … ({len(value)} in all)"
                                                         if len(value) > 8 else "")
            rows.append((key, value))
    if meta.get("resumed"):
        rows.append(("resumed", ", ".join(map(str, meta["resumed"]))))
    if meta.get("versions"):
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())))
    for note in meta.get("notes") or []:
        rows.append(("note", note))
    return Table(pd.DataFrame(rows, columns=["", "value"]), "run.json")


def _settings(first: pd.DataFrame, grokking: bool, varying: bool) -> list[tuple[str, str]]:
    """(column, short name) of the conditions' settings that differ between conditions
    (``varying``), or of those that are the same for all."""
    names = [("lr", "lr"), ("weight_decay", "wd" if grokking else "β"), ("batch_size", "B")]
    names += [(c, c.removesuffix("_schedule") + " schedule") for c in first.columns
              if c.endswith("_schedule")] + [("grad_filter", "filter"), ("noise", "noise"),
                                            ("seed_over_saddle", "b₀/saddle")]
    return [(c, n) for c, n in names
            if c in first.columns and first[c].notna().any()
            and (first[c].astype(str).nunique() > 1) == varying]


def fixed_settings(replicas: pd.DataFrame) -> str:
    """What all conditions share, e.g. ``β = 0.317, lr = 0.25, noise = langevin``."""
    first = replicas.groupby("condition", sort=True).first()
    shared = [(name, first[col].iloc[0])
              for col, name in _settings(first, is_grokking(replicas), varying=False)]
    return ", ".join(f"{name} = {_short(v)}" for name, v in shared
                     if str(v) not in ("constant", "none"))


def _short(value) -> str:
    """A setting for a label: numbers in 3 significant digits, a schedule by its shape."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        rest = ", ".join(f"{k} {_short(v)}" for k, v in value.items()
                         if k not in ("shape", "kind"))
        return f"{value.get('shape', value.get('kind', '?'))} ({rest})"
    if isinstance(value, (bool, str)) or value is None:
        return str(value)
    return fmt3(value)


def condition_labels(replicas: pd.DataFrame) -> dict[int, str]:
    """Legend text per condition: T (and ΔE/T) for linear runs, then what varies."""
    grokking = is_grokking(replicas)
    first = replicas.groupby("condition", sort=True).first()
    varying = _settings(first, grokking, varying=True)
    labels = {}
    for key, part in replicas.groupby("condition", sort=True):
        bits = []
        if not grokking:
            bits.append(group_label(part, records.Columns(group="temperature"),
                                    part["temperature"].iloc[0]))
        full = "full_batch" in part and bool(part["full_batch"].astype(bool).all())
        bits += [f"{name} = {_short(first.loc[key, col])}"
                 + (" (full batch)" if col == "batch_size" and full else "")
                 for col, name in varying]
        labels[int(key)] = ", ".join(bits) or f"condition {key}"
    return labels


def _conditions_table(conditions: Sequence[ConditionSummary], labels: dict[int, str],
                      grokking: bool) -> Table:
    excluded = any(c.diverged + c.untrapped for c in conditions)
    rows = []
    for c in conditions:
        e = c.escape
        row = {"condition": c.condition, "setting": labels.get(c.condition, ""),
               "mechanism": c.verdict or "—", "n": c.n,
               "escaped" if not grokking else "grokked": c.events}
        if grokking:
            for name in ("fit", "generalize", "delay"):
                m, ci = c.grokking.median(name) if c.grokking else (None, None)
                row[f"{name} median [CI]"] = "not reached" if m is None else _est(m, ci)
        else:
            row["τ [95% CI]"] = _est(e.tau, e.tau_ci) if e else _est(None, None)
            row["KM median"] = "not reached" if e is None or e.median is None else fmt3(e.median)
        row["Weibull k [CI]"] = (_est(e.weibull_shape, e.weibull_shape_ci) if e
                                 else _est(None, None))
        row["KS p"] = fmt3(e.poisson_pvalue if e else None)
        if excluded:
            row["diverged, untrapped"] = f"{c.diverged}, {c.untrapped}"
        rows.append(row)
    return Table(pd.DataFrame(rows), "per condition; times in steps with 95% CIs; τ = exposure "
                                     "/ escapes; mechanism: activated, deterministic, "
                                     "absorbing, not reached or inconclusive (the rule "
                                     "and each reason under the diagnostics)")


def _km_figures(rows: pd.DataFrame, columns: records.Columns, labels: dict | None, unit: str,
                stem: str) -> list[Figure]:
    """KM curves, at most KM_PER_FIGURE groups a figure, with at-risk and event counts."""
    keys = sorted(rows[columns.group].unique()) if columns.group else [None]
    out: list[Figure] = []
    for i in range(0, len(keys), KM_PER_FIGURE):
        part = rows if columns.group is None else rows[rows[columns.group].isin(
            keys[i:i + KM_PER_FIGURE])]
        n = len(out) + 1
        caption = ("Kaplan–Meier curves with log(−log) 95% bands; below: replicas at risk and "
                   "cumulative events")
        if len(keys) > KM_PER_FIGURE:
            caption += f" (part {n} of {math.ceil(len(keys) / KM_PER_FIGURE)})"
        out.append(Figure(f"{stem}-{n}", figure_png(survival_figure(part, columns, unit, labels)),
                          caption))
    return out


def _diagnostics(rows: pd.DataFrame, columns: records.Columns, labels: dict | None, unit: str,
                 summaries: Sequence[tuple[object, GroupSummary]]) -> Section:
    """The log(−log S) figure and, per (label, summary), the Weibull shape, KS p and the
    verdict with its reason."""
    sec = Section("Weibull / KS diagnostics", [
        "A Poisson (activated) escape has Weibull shape k ≈ 1 and an exponential survival "
        "curve: on the log(−log S) against log t scale its curve is a straight line of "
        "slope 1. A drift-set (deterministic) delay shows a steep line (k ≫ 1). The KS p "
        "value tests the KM curve against the fitted exponential under the same censoring, "
        "its null drawn on the check grid."])
    keys = sorted(rows[columns.group].unique()) if columns.group else []
    shown = rows if len(keys) <= 10 else rows[rows[columns.group].isin(keys[:10])]
    sec.blocks.append(Figure("weibull", figure_png(loglogs_figure(shown, columns, unit, labels)),
                             "log(−log S(t)) against log t per condition"
                             + (" (the first 10)" if len(keys) > 10 else "")))
    table = pd.DataFrame([{
        "group": label, "events": s.events,
        "Weibull k": fmt3(s.weibull_shape), "95% CI": _ci(s.weibull_shape_ci),
        "KS p": fmt3(s.poisson_pvalue), "mechanism": s.verdict or "—",
        "why": s.verdict_reason or "",
    } for label, s in summaries])
    sec.blocks.append(Table(table, "Weibull shape (log-scale Wald CI) and bootstrap KS p"))
    return sec


def _arrhenius_section(rows: pd.DataFrame, unit: str, strata_fits,
                       theory_barrier: float | None = None) -> Section:
    sec = Section("Arrhenius", [
        "Poisson GLM of escapes on −1/T with offset log(exposure): rates with exact 95% CIs, "
        "the fitted line with its 95% band, and the theory slope where the run knows the "
        "barrier (anchored at the measured rates)."])
    for i, (label, rows_s, fit, error) in enumerate(strata_fits):
        head = f"{label}: " if label else ""
        if error:
            sec.blocks.append(f"{head}no Arrhenius fit — {error}")
            continue
        theory = theory_barrier if theory_barrier is not None else theory_barrier_of(rows_s)
        lo, hi = fit.barrier_ci
        text = (f"{head}barrier ΔE = {fmt3(fit.barrier)} [{fmt3(lo)}, {fmt3(hi)}] "
                f"({fit.method}; rate {fit.direction})")
        if theory:
            r = fit.versus_theory(theory)
            text += (f"; theory {fmt3(theory)}, fitted/theory {r['barrier_ratio']:.3g} "
                     f"{_ci(r['barrier_ratio_ci'])}")
        fr = fit.frailty
        if fr is not None and fr.heterogeneous:
            text += (f". Warning: the replicas escape at different rates (gamma-frailty "
                     f"variance {fmt3(fr.frailty_variance)}, LR p {fr.lr_pvalue:.2g}); "
                     f"the Poisson barrier assumes they do not and is biased — the frailty "
                     f"fit's barrier is {fmt3(fr.barrier)} {_ci(fr.barrier_ci)}")
        elif fr is not None:
            text += f"; no replica heterogeneity detected (frailty LR p {fr.lr_pvalue:.2g})"
        sec.blocks.append(text)
        sec.blocks.append(Figure(f"arrhenius-{i + 1}", figure_png(
            arrhenius_figure(fit, theory, unit.rstrip("s"), rows_s)),
            f"Arrhenius plot{' — ' + label if label else ''}"))
    return sec


def _labelled(results: Sequence[StratumFit[ArrheniusFit]], rows: pd.DataFrame
              ) -> list[tuple[str, pd.DataFrame, ArrheniusFit | None, str | None]]:
    """(label, rows, fit, error) per stratum; the label names the columns that vary."""
    return [(", ".join(f"{c} = {_short(v)}" for c, v in r.stratum.key
                       if rows[c].astype(str).nunique() > 1),
             r.stratum.rows, r.fit, r.error) for r in results]


def _run_schedules(first: pd.DataFrame, labels: dict) -> dict[str, dict[str, Schedule]]:
    """quantity → condition label → Schedule, for each non-constant ``*_schedule`` column
    (a condition held constant there is drawn at its value)."""
    from escapestat.config._schedules import Constant, parse_schedule

    out: dict[str, dict[str, Schedule]] = {}
    for col in first.columns:
        if not col.endswith("_schedule") or (first[col].astype(str) == "constant").all():
            continue
        base = col.removesuffix("_schedule")
        for key, row in first.iterrows():
            try:
                sched = (Constant(float(row[base])) if row[col] == "constant"
                         else parse_schedule(json.loads(row[col]), col))
            except (EscapestatError, ValueError, TypeError, KeyError):
                continue  # no value to draw (e.g. a column this table lacks)
            out.setdefault(base, {})[labels.get(key, str(key))] = sched
    return out


def _run_report(path: Path, n_bootstrap: int, seed: int,
                theory_barrier: float | None = None) -> Report:
    from escapestat.stats._summary import SURVIVAL, run_summary

    meta = {}
    if (path / vocab.RUN_JSON).is_file():
        try:
            meta = json.loads((path / vocab.RUN_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EscapestatError(f"{path / vocab.RUN_JSON}: unreadable ({exc})") from None
    if not (path / vocab.REPLICAS).is_file():
        raise EscapestatError(f"{path}: no {vocab.REPLICAS}; the run is not finished "
                              f"(status {meta.get('status', '?')}) — resume it first")
    replicas = records.read_table(path / vocab.REPLICAS)
    missing = {"condition", "status", "duration", "event"} - set(replicas.columns)
    if missing:
        raise EscapestatError(f"{path / vocab.REPLICAS}: missing column(s) "
                              f"{', '.join(sorted(missing))}")
    unit = meta.get("units", "steps")
    summary = run_summary(replicas, n_bootstrap=n_bootstrap, seed=seed,
                          grid=meta.get("check_every"), budget=meta.get("max_steps"),
                          threshold=meta.get("threshold"))
    grokking = is_grokking(replicas)
    labels = condition_labels(replicas)
    sections = [Section("Run", [_meta_table(meta)] if meta else ["no run.json"])]
    fixed = fixed_settings(replicas)
    sections.append(Section("Conditions", ([f"All conditions: {fixed}."] if fixed else [])
                            + [_conditions_table(summary.conditions, labels, grokking)]))
    rows = replicas[replicas["status"].isin(SURVIVAL)]
    columns = records.Columns(group="condition")
    if len(rows):
        what = "time to generalise" if grokking else "escape from the trap"
        sections.append(Section(f"Kaplan–Meier: {what}",
                                _km_figures(rows, columns, labels, unit, "km")))
    temps = rows["temperature"].nunique() if "temperature" in rows else 0
    if not grokking and temps >= 2:
        fits = _labelled([f.result for f in summary.arrhenius], rows)
        sections.append(_arrhenius_section(rows, unit, fits, theory_barrier))
    if len(rows):
        diag = [(labels[c.condition], c.escape) for c in summary.conditions
                if c.escape is not None and c.n]
        sections.append(_diagnostics(rows, columns, labels, unit, diag))
    if (path / vocab.CURVES).is_file():
        curves = records.read_table(path / vocab.CURVES)
        if len(curves):
            sections.append(Section("Learning curves", [Figure(
                "curves", figure_png(curves_figure(curves, labels, meta.get("threshold"),
                                                   _milestone_marks(summary))),
                "median and 10–90% band over replicas at each check (a replica decided "
                "earlier carries its last value); dashed: the escape threshold; dotted: the "
                "median fit and generalisation steps; grey, right axis: the median weight "
                "norm ‖θ‖ (grokking models)")]))
    schedules = _run_schedules(replicas.groupby("condition", sort=True).first(), labels)
    if schedules:
        horizon = float(meta.get("max_steps") or replicas["duration"].max())
        sections.append(Section("Schedules", [Figure(
            "schedules", figure_png(schedules_figure(schedules, horizon)),
            "schedules as run, per condition")]))
    name = meta.get("study", path.name)
    return Report(f"escapestat report — {'grokking' if grokking else 'escape'} run “{name}”",
                  str(path.resolve()), sections)


# ---------------------------------------------------------------- a plain table
def _table_report(path: Path, n_bootstrap: int, seed: int,
                  theory_barrier: float | None = None) -> Report:
    from escapestat.stats._per_stratum import arrhenius_by
    from escapestat.stats._strata import condition_columns
    from escapestat.stats._survival import summarize

    raw = records.read_table(path)
    # Temperatures group the table and make its Arrhenius plot once they vary: checked then
    # as arrhenius checks them (a column of one value is a label, as in a grokking run).
    uses_t = "temperature" in raw.columns and raw["temperature"].nunique(dropna=False) > 1
    df = records.validate(raw, records.Columns(temperature="temperature" if uses_t else None))
    grid = records.resolve_grid(None, path)
    group = next((c for c in ("condition", "temperature") if c in df.columns
                  and df[c].nunique() > 1), None)
    varying = [c for c in condition_columns(df, exclude=("condition", "barrier_theory"))
               if df[c].astype(str).nunique() > 1]
    if group is None and varying:  # never pooled silently: one group per combination
        group = "conditions"
        df[group] = [", ".join(f"{c} = {_short(v)}" for c, v in zip(varying, values,
                                                                     strict=True))
                     for values in df[varying].itertuples(index=False)]
    columns = records.Columns(group=group)
    summaries = summarize(df, columns, n_bootstrap=n_bootstrap, seed=seed, grid=grid,
                          threshold=records.run_meta_value(path, "threshold"))
    labels: dict | None  # condition → text, or a group's value → text
    labels = ({int(k): v for k, v in condition_labels(df).items()}
              if group == "condition" and {"temperature", "lr"} <= set(df.columns) else
              {k: k for k in df[group].unique()} if group == "conditions" else
              {k: group_label(p, columns, k) for k, p in df.groupby(group)} if group else None)
    info = [("rows", len(df)), ("escaped", int(df["event"].sum())),
            ("grouped by", group or "— (one group)"), ("KS grid", fmt3(grid) if grid else
                                                       "continuous (no run.json beside it)")]
    sections = [Section("Table", [Table(pd.DataFrame(info, columns=["", "value"]))])]
    rows = [{"group": labels.get(s.group, s.group) if labels else s.group,
             "mechanism": s.verdict, "n": s.n, "escaped": s.events,
             "rate [95% CI]": _est(s.rate, s.rate_ci),
             "KM median [CI]": ("not reached" if not s.median_reached else
                                _est(s.median, s.median_ci)),
             "Weibull k [CI]": _est(s.weibull_shape, s.weibull_shape_ci),
             "KS p": fmt3(s.poisson_pvalue)} for s in summaries]
    sections.append(Section("Per group", [Table(pd.DataFrame(rows),
                                                "durations as in the table; 95% CIs")]))
    sections.append(Section("Kaplan–Meier", _km_figures(df, columns, labels, "steps", "km")))
    if "temperature" in df.columns and df["temperature"].nunique() >= 2:
        by = [c for c in condition_columns(df, exclude=("temperature", "condition",
                                                        "barrier_theory"))
              if df[c].astype(str).nunique() > 1]
        fits = _labelled(arrhenius_by(df, by, grid), df)
        sections.append(_arrhenius_section(df, "steps", fits, theory_barrier))
    diag = [(labels.get(s.group, s.group) if labels else s.group, s) for s in summaries]
    sections.append(_diagnostics(df, columns, labels, "steps", diag))
    if group == "condition":
        schedules = _run_schedules(df.groupby("condition").first(), labels or {})
        if schedules:
            sections.append(Section("Schedules", [Figure(
                "schedules", figure_png(schedules_figure(schedules, float(df["duration"].max()))),
                "schedules per condition, to the longest duration in the table")]))
    return Report(f"escapestat report — table {path.name}", str(path.resolve()), sections)


def _milestone_marks(summary: RunSummary) -> dict[int, dict[str, float | None]]:
    """Per condition the KM median fit and generalisation steps (grokking runs)."""
    return {c.condition: {"fit": c.grokking.fit_median,
                          "generalise": c.grokking.generalize_median}
            for c in summary.conditions if c.grokking is not None}
