"""Figures a researcher can put in a paper: KM curves with at-risk counts, Arrhenius plots."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .arrhenius import ArrheniusFit
from .errors import EscapestatError
from .records import Columns


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


def plot_survival(
    df: pd.DataFrame, columns: Columns, path: str | os.PathLike, unit: str = "steps"
) -> Path:
    """Kaplan–Meier survival (still trapped) per group, log(−log) 95% bands, at-risk table."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    plt = _pyplot()
    groups = [("all", df)] if columns.group is None else list(df.groupby(columns.group))
    fig, ax = plt.subplots(figsize=(7, 4.5 + 0.25 * len(groups)))
    fitters = []
    for key, part in groups:
        label = str(key) if columns.group is None else f"{columns.group}={key}"
        kmf = KaplanMeierFitter(label=label).fit(
            part[columns.duration].to_numpy(), part[columns.event].to_numpy()
        )
        kmf.plot_survival_function(ax=ax, ci_show=True)
        fitters.append(kmf)
    ax.set_xlabel(f"escape time ({unit})")
    ax.set_ylabel("fraction still trapped")
    ax.set_ylim(0, 1.02)
    ax.set_title("Kaplan–Meier survival in the metastable state")
    if len(fitters) <= 8:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk", "Events"])
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_arrhenius(
    fit: ArrheniusFit, path: str | os.PathLike, theory_barrier: float | None = None,
    unit: str = "step",
) -> Path:
    """log k against 1/T: per-temperature rates with exact CIs, the GLM line and its 95% band.

    Temperatures without escapes are drawn as upper bounds (downward triangles).
    """
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
    ax.plot(grid, fit.rate(1.0 / grid), color="C0",
            label=f"GLM ({fit.method}): ΔE = {fit.barrier:.4g}")
    ax.fill_between(grid, np.exp(band_lo), np.exp(band_hi), color="C0", alpha=0.2)
    if theory_barrier is not None:
        anchor = np.exp(np.mean(np.log(fit.rate(temps)) + theory_barrier * inv))
        ax.plot(grid, anchor * np.exp(-theory_barrier * grid), "--", color="C3",
                label=f"theory slope: ΔE = {theory_barrier:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("1 / T")
    ax.set_ylabel(f"escape rate (per {unit})")
    ax.set_title("Arrhenius plot")
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
