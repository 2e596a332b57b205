"""Options shared by several commands, declared once."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

TableArg = Annotated[
    Path, typer.Argument(help="Escape-record table (.csv, .tsv or .parquet).", show_default=False)
]
DurationCol = Annotated[str, typer.Option("--duration-col", help="Column with escape times (> 0).")]
EventCol = Annotated[
    str, typer.Option("--event-col", help="Column with 1 = escaped, 0 = censored at the budget.")
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else there.")
]
PlotPath = Annotated[
    Path | None,
    typer.Option("--plot", help="Write a figure to this PNG/PDF/SVG file (one per stratum "
                 "with --by: NAME-COL=VALUE.png)."),
]
ByCols = Annotated[
    list[str] | None,
    typer.Option("--by", help="Fit each value of this condition column apart (repeatable).",
                 show_default=False),
]
Pool = Annotated[
    bool,
    typer.Option("--pool", help="Pool rows whose other conditions (β, weight decay, width, "
                 "schedules, ...) differ, knowingly; refused without it."),
]
Unit = Annotated[str, typer.Option("--unit", help="Unit of the durations, for labels.")]


class Device(str, Enum):
    """Where the engine runs: a choice, so a typo is a usage error (exit 2)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[Device, typer.Option("--device", help="auto (CUDA if present), cpu or "
                                                            "cuda.")]
def positive(name: str):
    """A typer callback: the option, when given, is a finite number > 0, else a usage error
    (exit 2), as for any bad option value."""
    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"must be a finite number > 0; got {value:g}",
                                     param_hint=f"'{name}'")
        return value
    return check


Grid = Annotated[float | None, typer.Option(
    "--grid", callback=positive("--grid"),
    help="Grid the durations sit on (the run's check_every): an escape recorded at "
    "t happened in (t − grid, t] for the Weibull shape, the KS null and the frailty fit; "
    "default: check_every from a run.json beside TABLE.", show_default=False)]
Bootstrap = Annotated[int, typer.Option(
    "--bootstrap", min=49, help="Parametric-bootstrap draws of the KS test (every command "
    "uses the same default, so one table gets one verdict).")]
BootstrapSeed = Annotated[int, typer.Option("--bootstrap-seed", help="Seed of the bootstraps "
                                                                     "(KS p-values).")]


def cluster_option(what: str, same: str) -> object:
    """``--cluster WHERE`` for a command whose independent pieces (``what``) can run as Dask
    tasks; ``same``: what stays identical to one process."""
    return typer.Option(
        "--cluster", metavar="WHERE",
        help=f"Run the {what} as tasks on a Dask cluster: local[:N] starts N worker "
             f"processes here (default 2), tcp://HOST:PORT uses a running scheduler. {same}; "
             "needs pip install \"escapestat\\[cluster]\".",
        show_default=False)


def parse_cluster_option(cluster: str | None):
    """``--cluster``'s text as a ``ClusterSpec`` (None without it); a bad one is a usage
    error (exit 2)."""
    if cluster is None:
        return None
    from escapestat.engine._cluster import parse_cluster
    from escapestat.errors import EscapestatError

    from .common import usage_error

    try:
        return parse_cluster(cluster)
    except EscapestatError as exc:
        raise usage_error(str(exc)) from None


LogOpt = Annotated[
    str | None,
    typer.Option("--log", metavar="KIND:TARGET",
                 help="Also send escapes and per-check metrics to a tracker: "
                      "tensorboard:DIR or mlflow:URI (an mlruns folder or a tracking URI).",
                 show_default=False),
]
