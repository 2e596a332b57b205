"""Figures a researcher can put in a paper: KM curves with at-risk counts, Arrhenius plots.

Each figure has a builder that returns a matplotlib ``Figure`` (``survival_figure``,
``arrhenius_figure``, ``loglogs_figure``), for the HTML report and notebooks, and the
``plot_*`` functions that write one to a file. Numbers in labels carry 3 significant digits.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from escapestat.errors import EscapestatError
from escapestat.stats._arrhenius import ArrheniusFit
from escapestat.table._records import TEMPERATURE, Columns, round_significant

if TYPE_CHECKING:
    from escapestat.config._schedules import Schedule


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_formats() -> list[str]:
    """File extensions matplotlib can write (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_plot_path(path: str | os.PathLike) -> Path:
    """Refuse, before any fitting, a figure path matplotlib cannot write or we cannot create.

    The extension must be a matplotlib format, the path must not be a directory, and the
    nearest existing parent must be a directory where a file can be created (probed).
    """
    path = Path(path)
    if path.is_dir():
        raise EscapestatError(f"{path}: is a directory; give a file name for the figure")
    fmt = path.suffix.lower().lstrip(".")
    formats = plot_formats()
    if fmt not in formats:
        raise EscapestatError(
            f"{path}: cannot write a figure as {('.' + fmt) if fmt else '(no extension)'}; "
            f"use one of {', '.join('.' + f for f in formats)}"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EscapestatError(f"{path}: cannot create the figure: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise EscapestatError(
            f"{path}: cannot write the figure in {parent} ({exc.strerror or exc})"
        ) from None
    return path


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise EscapestatError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
    return path


def figure_png(fig, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (no software metadata), and the figure closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def fmt3(x) -> str:
    """A number for a label or table: 3 significant digits, written without an exponent
    between 100 and 10⁶ (1234.5 → 1230) and whole below 10⁶ when whole (step counts)."""
    if x is None or isinstance(x, str):
        return "—" if x is None else x
    x = float(x)
    if not math.isfinite(x):
        return "—" if math.isnan(x) else ("∞" if x > 0 else "−∞")
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    rounded = float(f"{x:.3g}")
    if 100 <= abs(rounded) < 1e6:
        return str(int(rounded))
    return f"{x:.3g}"


def _single(part: pd.DataFrame, col: str | None) -> float | None:
    """The one finite value a numeric column takes in ``part`` (None if absent or several)."""
    if col is None or col not in part.columns:
        return None
    values = pd.to_numeric(part[col], errors="coerce").dropna().to_numpy(dtype=float)
    values = np.unique(round_significant(values[np.isfinite(values)]))
    return float(values[0]) if values.size == 1 else None


def theory_barrier_of(df: pd.DataFrame, column: str = "barrier_theory") -> float | None:
    """The table's theory barrier: the one finite positive value of ``column``, else None."""
    value = _single(df, column)
    return value if value is not None and value > 0 else None


def group_label(part: pd.DataFrame, columns: Columns, key) -> str:
    """``T = 0.00207 (ΔE/T = 8)`` or ``lr = 0.001``: the group's value in 3 significant
    digits, and ΔE/T where the rows carry a theory barrier and one temperature."""
    name, temp_col = columns.group, columns.temperature or TEMPERATURE
    if name is None:
        text = str(key)
    elif isinstance(key, (int, float, np.number)) and not isinstance(key, bool):
        text = f"{'T' if name == temp_col else name} = {fmt3(key)}"
    else:
        value = str(key)
        text = f"{name} = {value if len(value) <= 40 else value[:39] + '…'}"
    barrier, temperature = theory_barrier_of(part), _single(part, temp_col)
    if barrier is not None and temperature:
        text += f" (ΔE/T = {fmt3(barrier / temperature)})"
    return text


def is_grokking(df: pd.DataFrame) -> bool:
    """A grokking table: its durations are times to generalise, not escapes from a trap."""
    return {"fit_time", "generalize_time"} <= set(df.columns)


def _groups(df: pd.DataFrame, columns: Columns, labels: Mapping | None):
    parts = [("all", df)] if columns.group is None else list(df.groupby(columns.group))
    return [(labels[key] if labels and key in labels else group_label(part, columns, key), part)
            for key, part in parts]


def survival_figure(df: pd.DataFrame, columns: Columns, unit: str = "steps",
                    labels: Mapping | None = None, at_risk: bool = True,
                    log_time: bool = False):
    """Kaplan–Meier survival per group with log(−log) 95% bands and at-risk/event rows.

    ``labels`` maps a group value to its legend text (default: ``group_label``); each
    legend entry adds its n, escapes and censored count, and a group with no escape is
    drawn and labelled "no escapes by <its largest time>". The title states the budget
    (the largest censoring time). ``log_time``: time on a log axis.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    plt = _pyplot()
    groups = _groups(df, columns, labels)
    fig, ax = plt.subplots(figsize=(9.5, 4.5 + 0.25 * len(groups)))
    fitters, texts = [], {}
    for label, part in groups:
        d = part[columns.duration].to_numpy()
        e = part[columns.event].to_numpy()
        escaped = int(e.sum())
        texts[str(label)] = (
            f"{label}\nno escapes by {fmt3(float(d.max()))} (n {d.size})" if not escaped
            else f"{label}\nn {d.size}: {escaped} escaped, {d.size - escaped} censored")
        kmf = KaplanMeierFitter(label=str(label)).fit(d, e)
        kmf.plot_survival_function(ax=ax, ci_show=True)
        fitters.append(kmf)
    grokking = is_grokking(df)
    censored = df.loc[df[columns.event] == 0, columns.duration]
    budget = f"; censored at ≤ {fmt3(float(censored.max()))} {unit}" if len(censored) else (
        "; none censored")
    ax.set_xlabel(f"{'time to generalise' if grokking else 'escape time'} ({unit}"
                  f"{', log scale' if log_time else ''})")
    if log_time:
        ax.set_xscale("log")
    ax.set_ylabel("fraction not yet generalised" if grokking else "fraction still trapped")
    ax.set_ylim(0, 1.02)
    ax.set_title(("Kaplan–Meier: time to generalise" if grokking
                  else "Kaplan–Meier survival in the metastable state")
                 + f" — n {len(df)}{budget}", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [texts.get(n, n) for n in names], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.subplots_adjust(right=0.66)
    if at_risk and len(fitters) <= 8:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk", "Events"])
    return fig


def plot_survival(
    df: pd.DataFrame, columns: Columns, path: str | os.PathLike, unit: str = "steps",
    labels: Mapping | None = None, log_time: bool = False,
) -> Path:
    """Write ``survival_figure`` to ``path``."""
    fig = survival_figure(df, columns, unit, labels, log_time=log_time)
    out = _save(fig, path)
    _pyplot().close(fig)
    return out


def loglogs_figure(df: pd.DataFrame, columns: Columns, unit: str = "steps",
                   labels: Mapping | None = None):
    """log(−log S) against log t per group (lifelines' ``plot_loglogs``): a Weibull law is
    a straight line of slope k, the shape; exponential (activated) escape has slope 1."""
    from lifelines import KaplanMeierFitter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, part in _groups(df, columns, labels):
        if part[columns.event].sum() == 0:
            continue  # S stays 1: nothing to draw on this scale
        KaplanMeierFitter(label=label).fit(
            part[columns.duration].to_numpy(), part[columns.event].to_numpy()
        ).plot_loglogs(ax=ax)
    ax.set_xlabel(f"log time ({unit})")
    ax.set_ylabel("log(−log S(t))")
    ax.set_title("Weibull diagnostic: slope = shape k (1 for activated escape)")
    if ax.get_legend_handles_labels()[0]:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ax.axline(((x0 + x1) / 2, (y0 + y1) / 2), slope=1, ls=":", color="0.4",
                  label="slope 1 (exponential), for reference")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.legend(fontsize=8)
    return fig


def arrhenius_figure(fit: ArrheniusFit, theory_barrier: float | None = None,
                     unit: str = "step", table: pd.DataFrame | None = None):
    """log k against 1/T: per-temperature rates with exact CIs, the GLM line and its 95% band,
    and the theory line (slope −ΔE_theory) whenever a theory barrier is known: given, carried
    by the fit (``fit.theory_barrier``) or by the fitted rows (``barrier_theory`` column).

    Temperatures without escapes are drawn as upper bounds (downward triangles).
    """
    if theory_barrier is None:
        theory_barrier = getattr(fit, "theory_barrier", None)
    if theory_barrier is None and table is not None:
        theory_barrier = theory_barrier_of(table)
    plt = _pyplot()
    temps = np.asarray(fit.temperatures)
    inv = 1.0 / temps
    rates = np.asarray(fit.rates)
    lo, hi = (np.asarray(v) for v in zip(*fit.rates_ci, strict=True))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    seen = rates > 0
    ax.errorbar(
        inv[seen], rates[seen], yerr=[rates[seen] - lo[seen], hi[seen] - rates[seen]],
        fmt="o", color="k", capsize=3, label="measured rate (exact 95% CI)",
    )
    if (~seen).any():
        ax.scatter(inv[~seen], hi[~seen], marker="v", color="k", label="no escapes: upper bound")
    grid = np.linspace(inv.min() * 0.95, inv.max() * 1.05, 200)
    band_lo, band_hi = fit.log_rate_band(1.0 / grid)
    b_lo, b_hi = fit.barrier_ci
    ax.plot(grid, fit.rate(1.0 / grid), color="C0",
            label=f"GLM ({fit.method}): ΔE = {fmt3(fit.barrier)} [{fmt3(b_lo)}, {fmt3(b_hi)}]")
    ax.fill_between(grid, np.exp(band_lo), np.exp(band_hi), color="C0", alpha=0.2,
                    label="GLM 95% band")
    if theory_barrier is not None:
        anchor = np.exp(np.mean(np.log(fit.rate(temps)) + theory_barrier * inv))
        ratio = fit.barrier / theory_barrier
        ax.plot(grid, anchor * np.exp(-theory_barrier * grid), "--", color="C3",
                label=f"theory slope: ΔE = {fmt3(theory_barrier)} (fit/theory {ratio:.3g})")
    fr = fit.frailty
    if fr is not None and fr.heterogeneous:
        f_lo, f_hi = fr.barrier_ci
        ax.plot(grid, np.exp(fr.log_prefactor - fr.barrier * grid), ":", color="C2",
                label=f"gamma frailty (replicas differ): ΔE = {fmt3(fr.barrier)} "
                      f"[{fmt3(f_lo)}, {fmt3(f_hi)}]")
    ax.set_yscale("log")
    ax.set_xlabel("1 / T")
    ax.set_ylabel(f"escape rate (per {unit})")
    # The temperatures themselves on top: 1/T alone does not say which run is which.
    top = ax.secondary_xaxis("top")
    top.set_xticks(inv, [fmt3(t) for t in temps], fontsize=7, rotation=45)
    top.set_xlabel("T", fontsize=8)
    ax.set_title("Arrhenius plot", pad=28)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1,
              frameon=False)
    return fig


def plot_arrhenius(
    fit: ArrheniusFit, path: str | os.PathLike, theory_barrier: float | None = None,
    unit: str = "step", table: pd.DataFrame | None = None,
) -> Path:
    """Write ``arrhenius_figure`` to ``path``; ``table``: the fitted rows, whose
    ``barrier_theory`` column gives the theory line when ``theory_barrier`` is not given."""
    fig = arrhenius_figure(fit, theory_barrier, unit, table)
    out = _save(fig, path)
    _pyplot().close(fig)
    return out


def curves_figure(curves: pd.DataFrame, labels: Mapping | None = None,
                  threshold: float | None = None, marks: Mapping | None = None):
    """Learning curves (``curves.csv``): per condition one panel, the median over replicas
    and its 10–90% band for each metric over steps: train and test accuracy (grokking
    models), or train and test error on a log axis (deep linear nets, which span decades).
    ``threshold``: the escape threshold, drawn on accuracy panels (test accuracy is the
    order parameter there). A ``weight_norm`` metric goes on a right-hand log axis;
    ``marks`` (condition → {name: step}) draws milestones such as the median fit and
    generalisation steps as vertical lines."""
    plt = _pyplot()
    conds = sorted(curves["condition"].unique())
    norm = curves[curves["metric"] == "weight_norm"]
    curves = curves[curves["metric"] != "weight_norm"]
    metrics = sorted(curves["metric"].unique(), key=lambda m: (not m.startswith("train"), m))
    accuracy = all(m.endswith("accuracy") for m in metrics)
    if not accuracy:
        metrics = [m for m in metrics if m.endswith("_error")] or metrics
    ncol = min(3, len(conds))
    nrow = math.ceil(len(conds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow + 0.6), squeeze=False,
                             sharey=True)
    for ax, cond in zip(axes.flat, conds, strict=False):
        part = curves[curves["condition"] == cond]
        for i, metric in enumerate(metrics):
            rows = part[part["metric"] == metric].sort_values("step")
            name = metric.replace("_", " ")
            ax.plot(rows["step"], rows["median"], color=f"C{i}", label=f"{name}: median")
            ax.fill_between(rows["step"], rows["q10"], rows["q90"], color=f"C{i}", alpha=0.25,
                            label=f"{name}: 10–90% of replicas")
        for j, (name, step) in enumerate(((marks or {}).get(cond) or {}).items()):
            if step is not None:
                ax.axvline(step, color=f"C{j + 4}", ls=":", lw=1,
                           label=f"median {name} step")
        rows = norm[norm["condition"] == cond].sort_values("step")
        if len(rows):
            twin = ax.twinx()
            twin.plot(rows["step"], rows["median"], color="0.3", lw=1,
                      label="weight norm ‖θ‖: median (right axis)")
            twin.set_yscale("log")
            twin.tick_params(labelsize=7)
            extra = twin.get_legend_handles_labels()
        ax.set_title((labels or {}).get(cond, f"condition {cond}"), fontsize=9)
        ax.set_xlabel("step")
        if accuracy:
            ax.set_ylim(-0.02, 1.02)
            if threshold is not None:
                ax.axhline(threshold, color="0.4", ls="--", lw=0.8,
                           label=f"escape threshold ({threshold:g})")
        else:
            ax.set_yscale("log")
    for ax in axes.flat[len(conds):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy" if accuracy else "error (½ mean squared)")
    seen: dict[str, object] = {}
    for ax in axes.flat[:len(conds)]:  # every panel: a milestone may be in some only
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(n, h)
    names, handles = list(seen), list(seen.values())
    if len(norm):
        handles, names = handles + extra[0][:1], names + extra[1][:1]
    fig.tight_layout(rect=(0, 0.9 / (3.0 * nrow + 0.6), 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 3), fontsize=8,
               frameon=False)
    return fig


def schedules_figure(schedules: Mapping[str, Mapping[str, Schedule]], horizon: float,
                     title: str = "Schedules over the run"):
    """One panel per quantity (``schedules[name][label]`` has ``value(t)``), over 0..horizon."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(schedules), 1, figsize=(7, 3.0 * len(schedules)),
                             squeeze=False)
    t = np.unique(np.linspace(0, horizon, 400).astype(int))
    for ax, (name, by_label) in zip(axes[:, 0], schedules.items(), strict=True):
        for label, sched in by_label.items():
            ax.plot(t, [sched.value(int(s)) for s in t], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig


def medians_figure(names, medians, cis, unit: str = "steps", title: str = ""):
    """Median times with their 95% CIs, one row per name (an unreached limit: no bar)."""
    plt = _pyplot()
    m = np.asarray(medians, dtype=float)
    lo = np.array([v if c[0] is None else c[0] for v, c in zip(m, cis, strict=True)], dtype=float)
    hi = np.array([v if c[1] is None else c[1] for v, c in zip(m, cis, strict=True)], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(m)))
    y = np.arange(len(m))
    ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="o", color="k", capsize=3)
    ax.set_yticks(y, list(names))
    ax.invert_yaxis()
    if np.nanmax(hi) / max(np.nanmin(lo), 1e-300) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(f"median time ({unit}, 95% CI)")
    ax.set_title(title)
    return fig
