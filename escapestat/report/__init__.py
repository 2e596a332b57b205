"""Figures and the self-contained HTML/Markdown report."""

from __future__ import annotations

from ._document import (  # noqa: F401
    CSS,
    KM_PER_FIGURE,
    MIN_IMPORTANCE_TRIALS,
    Figure,
    Report,
    Section,
    Table,
)
from ._figures import (  # noqa: F401
    arrhenius_figure,
    check_plot_path,
    curves_figure,
    figure_png,
    fmt3,
    group_label,
    is_grokking,
    loglogs_figure,
    medians_figure,
    plot_arrhenius,
    plot_formats,
    plot_survival,
    schedules_figure,
    survival_figure,
    theory_barrier_of,
)
from ._page import (  # noqa: F401
    build_report,
    default_out,
    kind_of,
    write_report,
)
from ._run_page import (  # noqa: F401
    condition_labels,
    fixed_settings,
)
from ._sweep_figure import (  # noqa: F401
    plot_sweep,
    sweep_figure,
    write_sweep,
)

__all__ = [
    "plot_formats",
    "check_plot_path",
    "figure_png",
    "fmt3",
    "theory_barrier_of",
    "group_label",
    "is_grokking",
    "survival_figure",
    "plot_survival",
    "loglogs_figure",
    "arrhenius_figure",
    "plot_arrhenius",
    "curves_figure",
    "schedules_figure",
    "medians_figure",
    "KM_PER_FIGURE",
    "MIN_IMPORTANCE_TRIALS",
    "Figure",
    "Table",
    "Section",
    "Report",
    "CSS",
    "fixed_settings",
    "condition_labels",
    "kind_of",
    "default_out",
    "build_report",
    "write_report",
    "sweep_figure",
    "plot_sweep",
    "write_sweep",
]
