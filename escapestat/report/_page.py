"""The report: one self-contained HTML page (and a Markdown twin) for a run, a search or a table.

``build_report(path)`` reads what ``path`` holds — a run directory (``run.json``,
``replicas.csv``, optional ``curves.csv``), an optimisation output folder (``optuna.db``,
``trials.csv``, ``compare.json``) or a plain escape table (CSV/Parquet) — and returns a
``Report``: sections of text, tables and matplotlib figures. Every number comes from the
library (``run_summary``, ``summarize``, ``fit_arrhenius``); this module only lays it out.
``write_report`` writes the HTML (figures as base64 PNG data URIs, CSS inline, nothing
fetched from elsewhere) and ``NAME.md`` with the PNGs in ``NAME_files/`` beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from escapestat import vocab
from escapestat.errors import EscapestatError
from escapestat.report._figures import (
    arrhenius_figure,
    curves_figure,
    figure_png,
    fmt3,
    group_label,
    is_grokking,
    loglogs_figure,
    medians_figure,
    schedules_figure,
    survival_figure,
    theory_barrier_of,
)
from escapestat.stats._survival import KS_BOOTSTRAP
from escapestat.table import _records as records
from escapestat.vocab import COMPARE_ARMS, COMPARE_JSON, OPTUNA_DB, TRIALS

TRIALS_CSV = TRIALS
KM_PER_FIGURE = 6  # more curves than this in one KM plot cannot be told apart
MIN_IMPORTANCE_TRIALS = 5  # fANOVA on fewer complete trials is noise


@dataclass
class Figure:
    name: str  # file stem in the Markdown twin's folder
    png: bytes
    caption: str


@dataclass
class Table:
    frame: pd.DataFrame  # cells already formatted as text
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph) | Figure | Table


@dataclass
class Report:
    title: str
    source: str
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def html(self) -> str:
        """The page: CSS inline, every figure a ``data:image/png;base64`` URI."""
        parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                 f"<title>{_h(self.title)}</title><style>{CSS}</style></head><body>",
                 f"<h1>{_h(self.title)}</h1><p class='src'>{_h(self.source)}</p>"]
        for s in self.sections:
            parts.append(f"<h2>{_h(s.title)}</h2>")
            for b in s.blocks:
                if isinstance(b, Figure):
                    data = base64.b64encode(b.png).decode("ascii")
                    parts.append(f"<figure><img src='data:image/png;base64,{data}' "
                                 f"alt='{_h(b.caption)}'><figcaption>{_h(b.caption)}"
                                 f"</figcaption></figure>")
                elif isinstance(b, Table):
                    parts.append(_html_table(b))
                else:
                    parts.append(f"<p>{_h(b)}</p>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def markdown(self, files: str) -> str:
        """The Markdown twin; figures are ``files/NAME.png`` (relative to the .md file)."""
        lines = [f"# {self.title}", "", f"`{self.source}`", ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            for b in s.blocks:
                if isinstance(b, Figure):
                    lines += [f"![{b.caption}]({files}/{b.name}.png)", "", f"*{b.caption}*", ""]
                elif isinstance(b, Table):
                    caption = [f"*{b.caption}*", ""] if b.caption else []
                    lines += [*caption, _md_table(b.frame), ""]
                else:
                    lines += [b, ""]
        return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:1.8em}
.src{color:#666;font-family:monospace;margin-top:0}
.tw{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.85em}
caption{text-align:left;color:#555;padding-bottom:.3em;font-style:italic}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top;
white-space:nowrap}
th{background:#f3f3f3}.n{text-align:right}td.w{white-space:normal;min-width:16em}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.2em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.9em}
"""


def _h(text) -> str:
    return html.escape(str(text), quote=True)


#: A cell that reads as a number, a CI or a count (right-aligned); other text is left-aligned.
_NUMERIC = re.compile(r"^[-−+0-9.e∞—\[\], /%]*$")


def _html_table(table: Table) -> str:
    frame = table.frame.astype(str)
    classes = []
    for col in frame.columns:
        cells = frame[col]
        numeric = cells.map(lambda v: bool(_NUMERIC.match(v))).all()
        wide = cells.map(len).max() > 40 if len(cells) else False
        classes.append("n" if numeric else "w" if wide else "")
    caption = f"<caption>{_h(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th class='{c}'>{_h(name)}</th>"
                   for name, c in zip(frame.columns, classes, strict=True))
    rows = "".join("<tr>" + "".join(f"<td class='{c}'>{_h(v)}</td>"
                                    for v, c in zip(row, classes, strict=True)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f"<div class='tw'><table>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def _md_table(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    rows = [[cell(c) for c in frame.columns], ["---"] * len(frame.columns)]
    rows += [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _ci(ci) -> str:
    """``[lo, hi]``; an upper limit that is not reached is ∞; no interval at all is —."""
    if ci is None or all(_missing(v) for v in ci):
        return "—"
    lo, hi = ci
    return f"[{fmt3(lo)}, {'∞' if _missing(hi) else fmt3(hi)}]"


def _with_time(arm: dict, key: str) -> str:
    """The ratio of medians against ``key`` with its CI, then the time ratio's."""
    text = _est(arm.get(f"ratio_vs_{key}"), arm.get(f"ratio_vs_{key}_ci"))
    t = arm.get(f"time_ratio_vs_{key}")
    return text if _missing(t) else f"{text}; time {_est(t, arm.get(f'time_ratio_vs_{key}_ci'))}"


def _filled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the columns that are empty (—, "") in every row."""
    return frame.loc[:, [c for c in frame.columns
                         if not frame[c].astype(str).isin(["—", "", "None"]).all()]]


def _est(value, ci) -> str:
    """An estimate with its CI, or — when there is no estimate."""
    return "—" if _missing(value) else f"{fmt3(value)} {_ci(ci)}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


# ---------------------------------------------------------------- what a path holds
def kind_of(path: Path) -> str:
    """``run``, ``search`` or ``table``; one clear error for anything else."""
    if not path.exists():
        raise EscapestatError(f"{path}: no such file or directory")
    if path.is_file() or _parts_table(path):
        return "table"
    if (path / OPTUNA_DB).is_file() or (path / COMPARE_JSON).is_file():
        return "search"
    if (path / vocab.RUN_JSON).is_file() or (path / vocab.REPLICAS).is_file():
        return "run"
    if (path / vocab.SWEEP_JSON).is_file():
        return "sweep"
    raise EscapestatError(
        f"{path}: not a run directory (no {vocab.RUN_JSON}), an optimisation output folder "
        f"(no {OPTUNA_DB} or {COMPARE_JSON}), a sweep folder (no {vocab.SWEEP_JSON}) or an "
        "escape table")


def _parts_table(path: Path) -> bool:
    """A folder of parquet parts (``escapes.parquet/part-*.parquet``) is one table."""
    return path.is_dir() and path.suffix.lower() in (".parquet", ".pq")


def default_out(path: str | os.PathLike) -> Path:
    """PATH/report.html for a run or search folder, TABLE-report.html beside a table."""
    path = Path(path)
    if path.is_dir() and not _parts_table(path):
        return path / "report.html"
    return path.with_name(f"{path.stem}-report.html")


def build_report(path: str | os.PathLike, n_bootstrap: int = KS_BOOTSTRAP, seed: int = 0,
                 theory_barrier: float | None = None) -> Report:
    """Read ``path`` (run directory, optimisation folder or escape table) into a Report."""
    path = Path(path)
    kind = kind_of(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning, lifelines' notes
        if kind == "run":
            return _run_report(path, n_bootstrap, seed, theory_barrier)
        if kind == "search":
            return _search_report(path)
        if kind == "sweep":
            return _sweep_report(path)
        return _table_report(path, n_bootstrap, seed, theory_barrier)


def write_report(path: str | os.PathLike, out: str | os.PathLike | None = None,
                 n_bootstrap: int = KS_BOOTSTRAP, seed: int = 0,
                 theory_barrier: float | None = None) -> tuple[Path, Path]:
    """Build the report of ``path`` and write ``out`` (HTML) and its Markdown twin;
    ``theory_barrier``: the barrier to draw and compare with (else the run's own)."""
    out = Path(out) if out is not None else default_out(path)
    if out.is_dir():
        raise EscapestatError(f"{out}: is a directory; give a file name for the report")
    if out.suffix.lower() not in (".html", ".htm"):
        raise EscapestatError(f"{out}: the report is HTML; give a name ending in .html")
    report = build_report(path, n_bootstrap, seed, theory_barrier)
    md, files = out.with_suffix(".md"), out.with_name(f"{out.stem}_files")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if files.exists():
            shutil.rmtree(files)
        files.mkdir()
        for fig in report.figures:
            (files / f"{fig.name}.png").write_bytes(fig.png)
        records.atomic_write(md, lambda tmp: Path(tmp).write_text(
            report.markdown(files.name), encoding="utf-8"))
        records.atomic_write(out, lambda tmp: Path(tmp).write_text(report.html(),
                                                                    encoding="utf-8"))
    except OSError as exc:
        raise EscapestatError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    return out, md


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


def _conditions_table(conditions: list[dict], labels: dict[int, str], grokking: bool) -> Table:
    excluded = any(c.get("diverged", 0) + c.get("untrapped", 0) for c in conditions)
    rows = []
    for c in conditions:
        row = {"condition": c["condition"], "setting": labels.get(c["condition"], ""),
               "mechanism": c.get("verdict") or "—", "n": c["n"],
               "escaped" if not grokking else "grokked": c["events"]}
        if grokking:
            for name in ("fit", "generalize", "delay"):
                m = c.get(f"{name}_median")
                row[f"{name} median [CI]"] = ("not reached" if m is None else
                                              _est(m, c.get(f"{name}_median_ci")))
        else:
            row["τ [95% CI]"] = _est(c.get("tau"), c.get("tau_ci"))
            row["KM median"] = "not reached" if c.get("median") is None else fmt3(c["median"])
        row["Weibull k [CI]"] = _est(c.get("weibull_shape"), c.get("weibull_shape_ci"))
        row["KS p"] = fmt3(c.get("poisson_pvalue"))
        if excluded:
            row["diverged, untrapped"] = f"{c.get('diverged', 0)}, {c.get('untrapped', 0)}"
        rows.append(row)
    return Table(pd.DataFrame(rows), "per condition; times in steps with 95% CIs; τ = exposure "
                                     "/ escapes; mechanism: activated, deterministic, "
                                     "absorbing, not reached or inconclusive (the rule "
                                     "and each reason under the diagnostics)")


def _km_figures(rows: pd.DataFrame, columns: records.Columns, labels: dict | None, unit: str,
                stem: str) -> list[Figure]:
    """KM curves, at most KM_PER_FIGURE groups a figure, with at-risk and event counts."""
    keys = sorted(rows[columns.group].unique()) if columns.group else [None]
    out = []
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
                 summaries: list[dict]) -> Section:
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
        "group": s["label"], "events": s["events"],
        "Weibull k": fmt3(s.get("weibull_shape")), "95% CI": _ci(s.get("weibull_shape_ci")),
        "KS p": fmt3(s.get("poisson_pvalue")), "mechanism": s.get("verdict") or "—",
        "why": s.get("verdict_reason") or "",
    } for s in summaries])
    sec.blocks.append(Table(table, "Weibull shape (log-scale Wald CI) and bootstrap KS p"))
    return sec


def _arrhenius_section(rows: pd.DataFrame, unit: str, strata_fits,
                       theory_barrier: float | None = None) -> Section | None:
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
        if fr.get("heterogeneous"):
            text += (f". Warning: the replicas escape at different rates (gamma-frailty "
                     f"variance {fmt3(fr['frailty_variance'])}, LR p {fr['lr_pvalue']:.2g}); "
                     f"the Poisson barrier assumes they do not and is biased — the frailty "
                     f"fit's barrier is {fmt3(fr['barrier'])} {_ci(fr['barrier_ci'])}")
        elif "lr_pvalue" in fr:
            text += f"; no replica heterogeneity detected (frailty LR p {fr['lr_pvalue']:.2g})"
        sec.blocks.append(text)
        sec.blocks.append(Figure(f"arrhenius-{i + 1}", figure_png(
            arrhenius_figure(fit, theory, unit.rstrip("s"), rows_s)),
            f"Arrhenius plot{' — ' + label if label else ''}"))
    return sec


def _fits(rows: pd.DataFrame, by: list[str], grid: float | None = None):
    """(label, rows, fit, error) per stratum of ``by``, each fitted with ``fit_arrhenius``."""
    from escapestat.stats._arrhenius import fit_arrhenius
    from escapestat.stats._strata import arrhenius_strata

    out = []
    parts = rows.groupby(by, sort=True) if by else [((), rows)]
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c} = {_short(v)}" for c, v in zip(by, key, strict=True)
                          if rows[c].astype(str).nunique() > 1)
        try:
            (stratum,) = arrhenius_strata(part)
            fit = fit_arrhenius(stratum.rows, records.Columns(temperature="temperature"),
                                crosscheck=False, grid=grid)
        except EscapestatError as exc:
            out.append((label, part, None, str(exc)))
        else:
            out.append((label, part, fit, None))
    return out


def _run_schedules(first: pd.DataFrame, labels: dict) -> dict[str, dict[str, object]]:
    """quantity → condition label → Schedule, for each non-constant ``*_schedule`` column
    (a condition held constant there is drawn at its value)."""
    from escapestat.config._schedules import Constant, parse_schedule

    out: dict[str, dict[str, object]] = {}
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
    from escapestat.stats._summary import SURVIVAL, run_summary, strata_columns

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
                            + [_conditions_table(summary["conditions"], labels, grokking)]))
    rows = replicas[replicas["status"].isin(SURVIVAL)]
    columns = records.Columns(group="condition")
    if len(rows):
        what = "time to generalise" if grokking else "escape from the trap"
        sections.append(Section(f"Kaplan–Meier: {what}",
                                _km_figures(rows, columns, labels, unit, "km")))
    temps = rows["temperature"].nunique() if "temperature" in rows else 0
    if not grokking and temps >= 2:
        fits = _fits(rows, strata_columns(rows), meta.get("check_every"))
        sections.append(_arrhenius_section(rows, unit, fits, theory_barrier))
    if len(rows):
        diag = [{**c, "label": labels[c["condition"]]} for c in summary["conditions"]
                if c["n"]]
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
    from escapestat.stats._strata import condition_columns
    from escapestat.stats._survival import summarize

    df = records.validate(records.read_table(path))
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
        sections.append(_arrhenius_section(df, "steps", _fits(df, by, grid), theory_barrier))
    diag = [{**s.as_dict(), "label": labels.get(s.group, s.group) if labels else s.group}
            for s in summaries]
    sections.append(_diagnostics(df, columns, labels, "steps", diag))
    if group == "condition":
        schedules = _run_schedules(df.groupby("condition").first(), labels or {})
        if schedules:
            sections.append(Section("Schedules", [Figure(
                "schedules", figure_png(schedules_figure(schedules, float(df["duration"].max()))),
                "schedules per condition, to the longest duration in the table")]))
    return Report(f"escapestat report — table {path.name}", str(path.resolve()), sections)


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
    return _OBJECTIVES.get(kind, "objective")


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
            ax.figure.set_size_inches(7, 4)
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
            ax.figure.set_size_inches(7, 1.2 + 0.4 * len(ax.get_yticks()))
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
    trials = records.read_table(path / TRIALS_CSV)
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


def _milestone_marks(summary: dict) -> dict[int, dict[str, float | None]]:
    """Per condition the KM median fit and generalisation steps (grokking runs)."""
    return {c["condition"]: {"fit": c.get("fit_median"), "generalise": c.get("generalize_median")}
            for c in summary["conditions"] if "fit_median" in c}


def _arm_schedules(arms: list[dict]) -> dict[str, dict[str, object]]:
    """quantity → arm → Schedule, from the arms' ``dynamics.*`` parameters."""
    from escapestat.config._schedules import parse_schedule

    out: dict[str, dict[str, object]] = {}
    for arm in arms:
        specs: dict[str, object] = {}
        for key, value in (arm.get("params") or {}).items():
            parts = key.split(".")
            if parts[0] != "dynamics" or len(parts) not in (2, 3):
                continue
            if len(parts) == 2:
                specs[parts[1]] = value
            elif isinstance(specs.setdefault(parts[1], {}), dict):
                specs[parts[1]][parts[2]] = value
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
    if (path / TRIALS_CSV).is_file():
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
