"""Experiment trackers in and out: scalar series read from TensorBoard, MLflow and W&B logs,
and escapes and per-check metrics written to TensorBoard or MLflow.

Reading (``read_runs``) gives each run's logged series and hyperparameters as a
``LoggedRun``; ``escapestat.monitor.ingest`` applies the monitor's escape rule to them.
Writing (``open_log``) takes a ``KIND:TARGET`` text such as ``tensorboard:runs/tb`` or
``mlflow:sqlite:///mlflow.db`` and returns a ``TrackerLog``.

Nothing here imports a tracker until it is used; without its package one clear error
names the extra to install (``escapestat[tensorboard]``, ``[mlflow]``, ``[wandb]``).
"""

from __future__ import annotations

from escapestat.errors import EscapestatError, did_you_mean
from escapestat.trackers._log import TrackerLog, open_log, parse_log_spec
from escapestat.trackers._run import LoggedRun, condition_value, run_name

#: The trackers ``read_runs`` reads; ``open_log`` writes the first two.
READERS = ("tensorboard", "mlflow", "wandb")
WRITERS = ("tensorboard", "mlflow")


def read_runs(kind: str, source: str, metrics: list[str]) -> list[LoggedRun]:
    """Every run under ``source``, with the series of ``metrics`` it logged (step → value,
    the last value logged at a step) and its hyperparameters. When no run logged
    ``metrics[0]`` (the escape metric) it is one clear error naming what was logged."""
    if kind == "tensorboard":
        from escapestat.trackers._tensorboard import read_tensorboard as read
    elif kind == "mlflow":
        from escapestat.trackers._mlflow import read_mlflow as read
    elif kind == "wandb":
        from escapestat.trackers._wandb import read_wandb as read
    else:
        raise EscapestatError(f"unknown tracker {kind!r}{did_you_mean(kind, READERS)}; "
                              f"choose one of {', '.join(READERS)}")
    runs = read(source, metrics)
    if metrics and not any(metrics[0] in r.series for r in runs):
        logged = sorted(set().union(*(r.logged for r in runs)))
        shown = ", ".join(logged[:12]) + (", …" if len(logged) > 12 else "")
        raise EscapestatError(
            f"{source}: none of its {len(runs)} runs logged {metrics[0]!r}"
            f"{did_you_mean(metrics[0], logged)}; they logged: {shown or 'no scalars'}")
    return runs


__all__ = ["READERS", "WRITERS", "LoggedRun", "TrackerLog", "condition_value", "open_log",
           "parse_log_spec", "read_runs", "run_name"]
