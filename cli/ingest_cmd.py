"""`escapestat ingest`: an escape table from TensorBoard, MLflow or W&B logs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import domain_errors, err_console, out_console, print_json
from .options import JsonOut, positive


class Tracker(str, Enum):
    """The trackers ingest reads: a choice, so a typo is a usage error (exit 2)."""

    tensorboard = "tensorboard"
    mlflow = "mlflow"
    wandb = "wandb"


def _direction(value: str) -> str:
    from escapestat.monitor._criterion import DIRECTIONS

    if value not in DIRECTIONS:
        raise typer.BadParameter(f"choose higher or lower; got {value!r}",
                                 param_hint="'--direction'")
    return value


@domain_errors
def ingest(
    tracker: Annotated[Tracker, typer.Argument(help="Where the runs were logged.",
                                               show_default=False)],
    source: Annotated[str, typer.Argument(
        help="A TensorBoard log directory; an MLflow mlruns folder or tracking URI "
             "(sqlite:///mlflow.db); a W&B folder (wandb/, or one run's folder).",
        show_default=False)],
    metric: Annotated[str, typer.Option("--metric", help="The logged scalar that escapes, "
                                        "e.g. test_acc.", show_default=False)],
    threshold: Annotated[float, typer.Option("--threshold", help="Escape when the metric "
                                             "crosses this value.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The escape table to write (.csv, .tsv "
                                      "or .parquet).", show_default=False)],
    fallback: Annotated[float | None, typer.Option(
        "--fallback", help="A crossing commits unless the metric falls back past this "
        "(default: the threshold).")] = None,
    commit_steps: Annotated[float, typer.Option(
        "--commit-steps", callback=positive("--commit-steps"),
        help="Steps a crossing must hold to commit (> 0).")] = 200,
    direction: Annotated[str, typer.Option(
        "--direction", callback=_direction,
        help="higher: escape upwards (accuracy); lower: downwards (loss).")] = "higher",
    fit_metric: Annotated[str | None, typer.Option(
        "--fit-metric", help="Also record when this metric fits (grokking: train_acc): "
        "fit_time, generalize_time, delay.")] = None,
    fit_threshold: Annotated[float | None, typer.Option(
        "--fit-threshold", help="The fit metric's threshold (needed with --fit-metric).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", min=1, help="The step budget: censor there.")] = None,
    record: Annotated[list[str] | None, typer.Option(
        "--record", help="Also write this metric's last value as final_NAME (repeatable).")
    ] = None,
    step_offset: Annotated[int, typer.Option(
        "--step-offset", help="Add this to every logged step, so that steps count training "
        "steps done (Lightning logs one less: use 1).")] = 0,
    append: Annotated[bool, typer.Option(
        "--append", help="Append to an existing table (its columns must match); runs it "
        "already holds are skipped.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Write an escape table from runs logged to TensorBoard, MLflow or W&B.

    One row per run: each run's series are replayed, step by step, through the same
    rule as `run` and EscapeMonitor: the first crossing of --threshold that does not
    fall back past --fallback within --commit-steps is the escape; a run that never
    escapes is censored at its last logged step (or --max-steps); a non-finite value is
    a divergence. The runs' hyperparameters become condition columns; with --append,
    runs the table already holds are skipped.

    Example: escapestat ingest tensorboard runs/tb --metric test_acc --threshold 0.95
    --out escapes.csv
    """
    from escapestat.monitor import ingest as ingest_runs
    from escapestat.trackers import read_runs

    metrics = list(dict.fromkeys([metric] + ([fit_metric] if fit_metric else [])
                                 + list(record or [])))
    runs = read_runs(tracker.value, source, metrics)
    result = ingest_runs(
        runs, out, metric, threshold, source=tracker.value, append=append,
        step_offset=step_offset,
        fallback=fallback, commit_steps=commit_steps, direction=direction,
        fit_metric=fit_metric, fit_threshold=fit_threshold, max_steps=max_steps,
        record=list(record or []))
    for run, why in result.skipped:
        err_console.print(escape(f"skipped {run}: {why}"), highlight=False, soft_wrap=True)
    if json_out:
        print_json(result.to_dict())
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.statuses.items())) or "none"
    out_console.print(escape(f"read {len(runs)} runs from {tracker.value} {source}; "
                             f"wrote {result.rows} rows to {out} ({counts})"),
                      highlight=False, soft_wrap=True)
