"""The hysteresis figure of a sweep: strength / s against β, up and down, theory lines.

One colour per mode; the up branch solid with upward triangles, the down branch
dash-dotted with downward triangles, each with its 10–90% band over replicas; theory's
learned branch w(β)/s up to β_sp as a thin line; β_c dashed and β_sp dotted as vertical
lines in the mode's colour. Sized for a paper column (7 × 4.5 inches at 150 dpi).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from escapestat.report._figures import _pyplot, _save, fmt3
from escapestat.table._records import atomic_write, write_json
from escapestat.theory._landscape import stationary_points
from escapestat.vocab import STUDY_TOML, SWEEP_CSV, SWEEP_JSON, SWEEP_PNG

# Line styles, passed to matplotlib as keyword arguments.
_UP: dict[str, Any] = {"ls": "-", "marker": "^"}
_DOWN: dict[str, Any] = {"ls": "-.", "marker": "v"}


def _learned_curve(depth: int, strength: float, beta_low: float, beta_sp: float):
    betas = np.linspace(beta_low, beta_sp, 200)[:-1]
    amps = [stationary_points(depth, strength, b)[1] for b in betas]
    keep = [a is not None for a in amps]
    return betas[keep], np.array([a for a in amps if a is not None]) ** depth / strength


def sweep_figure(result):
    """The figure of a ``sweep.SweepResult`` (a matplotlib ``Figure``)."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    sw = result.sweep
    spec, depth = sw.sweep, sw.study.model.depth
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = result.table()
    for m in result.modes:
        colour = f"C{m.mode}"
        x, y = _learned_curve(depth, m.strength, spec.beta_low, m.beta_sp)
        ax.plot(x, y, color=colour, lw=3, alpha=0.2, solid_capstyle="butt")
        for branch, style in (("up", _UP), ("down", _DOWN)):
            rows = table[(table["mode"] == m.mode) & (table["branch"] == branch)]
            ax.fill_between(rows["beta"], rows["q10_over_s"], rows["q90_over_s"],
                            color=colour, alpha=0.12, lw=0)
            ax.plot(rows["beta"], rows["median_over_s"], color=colour, lw=1.4, ms=4,
                    mfc="white" if branch == "down" else colour, **style)
        ax.axvline(m.beta_c, color=colour, ls="--", lw=1, alpha=0.8)
        if depth > 2:
            ax.axvline(m.beta_sp, color=colour, ls=":", lw=1.3, alpha=0.9)
    modes = [Line2D([], [], color=f"C{m.mode}", lw=6, alpha=0.6,
                    label=f"s = {fmt3(m.strength)}" + (" (loop)" if m.loop else " (no loop)"))
             for m in result.modes]
    styles = [Line2D([], [], color="k", lw=1.4, ms=4, label="β up (median, 10–90%)", **_UP),
              Line2D([], [], color="k", lw=1.4, ms=4, mfc="white", label="β down", **_DOWN),
              Line2D([], [], color="k", lw=3, alpha=0.2, label="theory: learned state"),
              Line2D([], [], color="k", ls="--", lw=1, label="theory β_c")]
    if depth > 2:
        styles.append(Line2D([], [], color="k", ls=":", lw=1.3, label="theory β_sp"))
    ax.legend(handles=modes + styles, fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_xlim(spec.beta_low, spec.beta_high)
    ax.set_ylim(-0.05, 1.08)
    ax.set_xlabel("L2 strength β")
    ax.set_ylabel("mode strength u_kᵀ P v_k / s_k")
    noise = (f"Langevin T = {fmt3(sw.temperature)}" if sw.noise == "langevin"
             else f"SGD lr = {fmt3(sw.lr)}, B = {sw.batch_size}")
    ax.set_title(f"Hysteresis sweep: depth {depth}, widths {'→'.join(map(str, sw.study.widths))}"
                 f"\n{noise}, {spec.steps_per_point} steps per β, "
                 f"{sw.study.run.replicas} replicas; {result.loops} loop"
                 f"{'' if result.loops == 1 else 's'}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_sweep(result, path: str | os.PathLike) -> Path:
    """Write ``sweep_figure`` to ``path``."""
    fig = sweep_figure(result)
    out = _save(fig, path)
    _pyplot().close(fig)
    return out


def write_sweep(result, out: str | Path, study_text: str | None = None,
                figure: bool = True) -> dict[str, Path]:
    """Write ``sweep.csv``, ``sweep.json``, ``sweep.png`` (and ``study.toml`` when the
    study's text is given) into ``out``; returns the paths by name."""
    out = Path(out)
    paths = {"csv": out / SWEEP_CSV, "json": out / SWEEP_JSON}
    table = result.table()
    atomic_write(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    write_json(result.as_dict(), paths["json"])
    if figure:
        paths["png"] = plot_sweep(result, out / SWEEP_PNG)
    if study_text is not None:
        paths["study"] = out / STUDY_TOML
        atomic_write(paths["study"], lambda tmp: Path(tmp).write_text(study_text,
                                                                      encoding="utf-8"))
    return paths
