"""MLflow tracking stores: read runs' metric histories and parameters, log to a run.

``source`` is a tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, ``file:…``)
or a local ``mlruns`` folder; the skinny client reads and writes SQLite stores with the
SQLAlchemy and Alembic that optuna brings. MLflow 3 keeps its file store in maintenance mode and
refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; escapestat sets it for a folder
it is asked to read or write, as that is a store the user already has.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.trackers._run import LoggedRun, flatten, require, run_name


def tracking_uri(source: str, create: bool = False) -> str:
    """A folder as a ``file:`` URI (allowing MLflow's file store; ``create``: made when
    missing, for writing); a URI as it is, but a ``sqlite:///`` database must exist
    unless ``create`` (reading a missing one would create it, empty)."""
    if "://" in source or source.startswith("file:"):
        if source.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if source.startswith("sqlite:///") and not create:
            db = Path(source[len("sqlite:///"):])
            if not db.is_file():
                raise EscapestatError(f"{source}: no such MLflow database ({db})")
        return source
    path = Path(source)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise EscapestatError(f"{source}: not an MLflow store (a tracking URI or an mlruns "
                              "folder)")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return path.resolve().as_uri()


def _client(uri: str):
    tracking = require("mlflow.tracking", "mlflow", "MLflow")
    for name in ("mlflow.store.db.utils", "alembic"):  # "creating tables…" at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return tracking.MlflowClient(tracking_uri=uri)
    except Exception as exc:  # mlflow raises its own types for a bad URI
        raise EscapestatError(f"{uri}: MLflow cannot open it ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_mlflow(source: str, metrics: list[str]) -> list[LoggedRun]:
    """The runs of every experiment in the store that logged one of ``metrics``."""
    uri = tracking_uri(source)
    client = _client(uri)
    try:
        experiments = client.search_experiments()
        runs, token = [], None
        while experiments:  # page through: one call returns at most 1000 runs
            page = client.search_runs([e.experiment_id for e in experiments],
                                      order_by=["attributes.start_time ASC"],
                                      max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    except Exception as exc:
        raise EscapestatError(f"{source}: MLflow could not list its runs "
                              f"({_first_line(exc)})") from None
    out = []
    for r in runs:
        name = r.info.run_name or r.info.run_id
        run = LoggedRun(run_name(f"{name}-{r.info.run_id[:8]}"), flatten(dict(r.data.params)),
                        logged=set(r.data.metrics))
        for metric in metrics:
            if metric not in r.data.metrics:
                continue
            for m in client.get_metric_history(r.info.run_id, metric):
                run.add(metric, m.step, m.value, m.timestamp / 1000.0)
        out.append(run)
    return out


class MLflowLog:
    """One MLflow run per escapestat run name, in the experiment ``escapestat`` of the
    store at ``uri``; scalars are metrics at their step, conditions are parameters."""

    def __init__(self, uri: str, experiment: str = "escapestat"):
        self.uri = tracking_uri(uri, create=True)
        self.client = _client(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = (found.experiment_id if found is not None
                           else self.client.create_experiment(experiment))
        self._runs: dict[str, str] = {}

    def _run(self, run: str) -> str:
        if run not in self._runs:
            self._runs[run] = self.client.create_run(self.experiment, run_name=run).info.run_id
        return self._runs[run]

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        entities = require("mlflow.entities", "mlflow", "MLflow")
        now = int(time.time() * 1000)
        self.client.log_batch(self._run(run), metrics=[
            entities.Metric(k, float(v), now, int(step)) for k, v in values.items()])

    def hparams(self, run: str, conditions: dict[str, object]) -> None:
        entities = require("mlflow.entities", "mlflow", "MLflow")
        params = [entities.Param(k, str(v)) for k, v in conditions.items() if v is not None]
        if params:
            self.client.log_batch(self._run(run), params=params)

    def flush(self) -> None:
        """MLflow writes each call through."""

    def close(self) -> None:
        for run_id in self._runs.values():
            self.client.set_terminated(run_id)
        self._runs.clear()
