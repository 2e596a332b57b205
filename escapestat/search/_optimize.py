"""`optimize` and `compare` as library calls: search, constant-only search, validation.

Files in the output folder: ``optuna.db`` (the embedded storage, unless a URL is given),
``trials.csv`` (every trial of both searches), ``compare.csv`` and ``compare.json`` (one
row per arm), ``compare_arms.csv`` (every arm's replicas).
Every worker of a shared study runs ``optimize`` with the same storage and study name;
the trial budget is shared, and each trial is run by one worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from escapestat.engine._cluster import ClusterSpec, as_cluster
from escapestat.engine._loop import ClusterReady
from escapestat.errors import EscapestatError
from escapestat.search._arm_result import ArmComparison
from escapestat.search._compare import Arm, contrast_rows, pick_arms, run_arms, with_ablations
from escapestat.search._identity import check_identity, search_identity
from escapestat.search._search import (
    CONSTANT_SUFFIX,
    ArmRun,
    Objective,
    SearchOutcome,
    edge_notes,
    open_search,
    outcome,
    run_search,
    trials_frame,
)
from escapestat.search._space import SearchSpec, build_study, load_search
from escapestat.search._storage import HEARTBEAT_SECONDS, embedded_url, open_storage, redact
from escapestat.trackers import open_log
from escapestat.vocab import COMPARE_ARMS, COMPARE_CSV, COMPARE_JSON, TRIALS  # noqa: F401


@dataclass(frozen=True)
class OptimizeResult:
    """A search (and its constant-only twin) with compare's arms; ``as_dict()`` is the
    JSON contract."""

    study_name: str
    storage: str
    out_dir: Path
    search: SearchOutcome
    constant: SearchOutcome | None
    compare: list[ArmComparison] | None
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. best values at a range's edge

    def as_dict(self) -> dict[str, Any]:
        """The ``optimize --json`` / ``compare --json`` object (the storage URL without its
        password)."""
        s, best = self.search, self.search.best
        const = None if self.constant is None else self.constant.best
        return {
            "study_name": self.study_name, "storage": self.storage,
            "n_trials": len(s.trials), "n_complete": s.counts.get("complete", 0),
            "n_pruned": s.counts.get("pruned", 0), "n_failed": s.counts.get("fail", 0),
            "best": None if best is None else {
                "params": best.user_attrs.get("overrides"), "value": best.value,
                "median": best.user_attrs.get("median"),
                "median_ci": best.user_attrs.get("median_ci"),
                "events": best.user_attrs.get("events"), "n": best.user_attrs.get("n")},
            "constant_best": None if const is None else {
                "params": const.user_attrs.get("overrides"), "value": const.value,
                "median": const.user_attrs.get("median")},
            "compare": None if self.compare is None else [r.as_dict() for r in self.compare],
            "notes": self.notes,
            "out": str(self.out_dir),
        }


@dataclass
class _Setup:
    raw: dict
    spec: SearchSpec
    source: str
    name: str
    storage_url: str
    storage: Any
    budget: int
    identity: dict[str, Any]


def _setup(study_file: str | Path, out_dir: Path, storage_url: str | None,
           study_name: str | None, trials: int | None, heartbeat: int) -> _Setup:
    path = Path(study_file)
    if not path.is_file():
        raise EscapestatError(f"{path}: no such study file")
    raw, spec = load_search(path.read_text(encoding="utf-8"), str(path))
    if trials is not None:
        spec = dataclasses.replace(spec, trials=trials)
    base = build_study(raw, {}, str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url or embedded_url(out_dir)
    return _Setup(raw, spec, str(path), study_name or base.name, url,
                  open_storage(url, heartbeat), base.run.max_steps, search_identity(base, spec))


def optimize(study_file: str | Path, out_dir: str | Path, storage_url: str | None = None,
             study_name: str | None = None, trials: int | None = None, device: str = "auto",
             compare: bool = True, heartbeat: int = HEARTBEAT_SECONDS,
             on_trial: Callable[[str, optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
             on_arm: Callable[[Arm, ArmRun], None] | None = None,
             cluster: ClusterSpec | str | None = None,
             on_cluster: Callable[[ClusterReady], None] | None = None,
             log: str | None = None) -> OptimizeResult:
    """Search the study's ``[search]`` space, then the constant-only space with the same
    trial budget, then (``compare``) re-run the arms on fresh seeds, on ``cluster`` if
    given (see ``compare_searches``). ``log`` (``tensorboard:DIR``, ``mlflow:URI``): each
    trial's reported values, parameters and score also go to that tracker."""
    out_dir = Path(out_dir)
    cluster = as_cluster(cluster)
    if log is not None:  # a typo or a missing package is found before any trial
        open_log(log).close()
    s = _setup(study_file, out_dir, storage_url, study_name, trials, heartbeat)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    callbacks = [] if on_trial is None else [
        lambda study, trial: on_trial(study.study_name, study, trial)]
    where = f" in {redact(s.storage_url)}"
    main = open_search(s.storage, s.name, s.spec, s.budget, s.identity, where)
    run_search(main, Objective(s.raw, s.spec, s.source, device, False, worker, log), s.spec.trials,
               callbacks)
    cst = None
    if s.spec.constant_search and s.spec.shape_params:
        cst = open_search(s.storage, s.name + CONSTANT_SUFFIX, s.spec, s.budget, s.identity,
                          where)
        run_search(cst, Objective(s.raw, s.spec, s.source, device, True, worker, log),
                   s.spec.trials, callbacks)
    # Other workers may have finished trials meanwhile: report the storage's state now.
    # Nothing scheduled searched: the search itself is the constant-only one.
    search = outcome(main)
    constant = outcome(cst) if cst is not None else search if s.spec.constant_search else None
    _write_trials(out_dir, search, constant)
    notes = _edge_notes(s.spec, search, constant)
    rows = None
    if compare:
        rows = _compare(s, search, constant, device, out_dir, on_arm, cluster, on_cluster)
    return OptimizeResult(s.name, redact(s.storage_url), out_dir, search, constant, rows,
                          notes)


def _edge_notes(spec: SearchSpec, search: SearchOutcome,
                constant: SearchOutcome | None) -> list[str]:
    return edge_notes(spec, search) + (edge_notes(spec, constant)
                                       if constant is not search else [])


def _write_trials(out_dir: Path, search: SearchOutcome, constant: SearchOutcome | None) -> None:
    """``trials.csv`` from the storage's state, replaced atomically (workers share a folder)."""
    frames = [search] + ([constant] if constant is not None and constant is not search else [])
    tmp = out_dir / f".{TRIALS}.{os.getpid()}.tmp"
    trials_frame(*frames).to_csv(tmp, index=False)
    os.replace(tmp, out_dir / TRIALS)


def compare_searches(study_file: str | Path, out_dir: str | Path, storage_url: str | None = None,
                     study_name: str | None = None, device: str = "auto",
                     on_arm: Callable[[Arm, ArmRun], None] | None = None,
                     cluster: ClusterSpec | str | None = None,
                     on_cluster: Callable[[ClusterReady], None] | None = None
                     ) -> OptimizeResult:
    """Re-run the arms of finished searches (e.g. after many workers) on fresh seeds.

    ``cluster`` (a ``ClusterSpec``, or ``local``, ``local:N``, ``tcp://HOST:PORT``): each
    arm is one task on that Dask cluster, ``on_cluster`` told where once; the arms' seeds,
    hence their replicas, are the same as in one process."""
    out_dir = Path(out_dir)
    cluster = as_cluster(cluster)
    s = _setup(study_file, out_dir, storage_url, study_name, None, HEARTBEAT_SECONDS)
    search = outcome(_load(s, s.name))
    constant = None
    if s.spec.constant_search and s.spec.shape_params:
        constant = outcome(_load(s, s.name + CONSTANT_SUFFIX))
    elif s.spec.constant_search:
        constant = search
    rows = _compare(s, search, constant, device, out_dir, on_arm, cluster, on_cluster)
    return OptimizeResult(s.name, redact(s.storage_url), out_dir, search, constant, rows,
                          _edge_notes(s.spec, search, constant))


def _load(s: _Setup, name: str) -> optuna.Study:
    try:
        study = optuna.load_study(study_name=name, storage=s.storage)
    except KeyError:
        raise EscapestatError(f"no search named {name!r} in {redact(s.storage_url)}: run "
                              f"'escapestat optimize' first") from None
    check_identity(study, s.identity, f" in {redact(s.storage_url)}")
    return study


def _compare(s: _Setup, search: SearchOutcome, constant: SearchOutcome | None, device: str,
             out_dir: Path, on_arm, cluster: ClusterSpec | None = None,
             on_cluster: Callable[[ClusterReady], None] | None = None
             ) -> list[ArmComparison]:
    arms = pick_arms(s.spec, search, constant)
    if not arms:
        raise EscapestatError("nothing to compare: no complete feasible trial and no baselines")
    arms, ablations = with_ablations(s.raw, s.source, arms)
    runs = run_arms(s.raw, s.spec, s.source, arms, device, on_arm, cluster, on_cluster)
    rows = contrast_rows(arms, runs, s.spec, ablations, seed=s.spec.seed)
    records = [r.as_dict() for r in rows]
    flat = pd.DataFrame([{k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
                          for k, v in r.items()} for r in records])
    flat.to_csv(out_dir / COMPARE_CSV, index=False)
    (out_dir / COMPARE_JSON).write_text(json.dumps(records, indent=2, default=str) + "\n",
                                        encoding="utf-8")
    pd.concat([run.survival.assign(arm=name) for name, run in runs.items()],
              ignore_index=True).to_csv(out_dir / COMPARE_ARMS, index=False)
    return rows
