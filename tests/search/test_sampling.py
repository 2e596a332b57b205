"""Samplers seeded per trial: workers sharing a study never repeat each other's draws."""

from __future__ import annotations

import optuna
import pytest

from escapestat.search._sampling import make_sampler, trial_seed
from escapestat.search._space import load_search, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = """
name = "s"
[task]
operation = "add"
p = 23
[model]
kind = "mlp"
width = 64
[dynamics]
noise = "sgd"
lr = 1e-2
weight_decay = 1.0
batch_size = 64
[run]
replicas = 2
max_steps = 100
[search]
trials = 12
sampler = "SAMPLER"
[search.space]
"dynamics.lr" = {low = 1e-3, high = 0.3, log = true}
"dynamics.weight_decay" = {low = 0.1, high = 5.0, log = true}
"""


def _workers(storage, spec, n_trials: int) -> list[optuna.Study]:
    """Two workers on one storage, each with its own sampler built from the same spec,
    taking turns (the order two processes would interleave in)."""
    optuna.create_study(storage=storage, study_name="shared")
    workers = [optuna.load_study(study_name="shared", storage=storage,
                                 sampler=make_sampler(spec)) for _ in range(2)]
    for i in range(n_trials):
        workers[i % 2].optimize(lambda t: _score(spec, t), n_trials=1)
    return workers


def _score(spec, trial) -> float:
    values = suggest(spec, trial)
    return abs(values["dynamics.lr"] - 0.03) + abs(values["dynamics.weight_decay"] - 1.0)


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes"])
def test_two_workers_never_repeat_each_others_parameters(sampler, tmp_path):
    _, spec = load_search(STUDY.replace("SAMPLER", sampler), "s.toml")
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    trials = _workers(storage, spec, 8)[0].trials
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(params) == 8 and len(set(params)) == 8, params


def test_one_worker_alone_replays_the_same_search(tmp_path):
    _, spec = load_search(STUDY.replace("SAMPLER", "tpe"), "s.toml")
    runs = []
    for name in ("a", "b"):
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / name}.db",
                                    sampler=make_sampler(spec))
        study.optimize(lambda t: _score(spec, t), n_trials=6)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    assert trial_seed(0, 1) != trial_seed(0, 0) != trial_seed(1, 0)
