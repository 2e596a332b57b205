"""How a search draws and stops trials: per-trial seeded samplers and pruners.

Workers sharing a study each hold a sampler; seeded alike, they would draw the same
start-up points (seen on SQLite and PostgreSQL: trials 0 and 1 identical). Trial numbers
are unique across workers (the storage hands them out), so a sampler seeded per trial from
(``[search] seed``, trial number) makes every worker draw differently, while one worker
alone replays the same search.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import optuna

from escapestat.search._space import SearchSpec


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number`` of a search seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler built afresh before every trial, seeded by ``trial_seed``.

    The samplers used here keep nothing between trials that they do not rebuild from the
    study's trials (TPE, GP and random read the history; CMA-ES keeps its state in the
    trials' system attributes), so rebuilding changes only where the randomness comes from.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _base_sampler(spec: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    startup = min(10, max(2, spec.trials // 4))
    if spec.sampler == "tpe":
        with warnings.catch_warnings():  # ``group`` is flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=startup)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped: spaces that change with a searched shape), GP, CMA-ES or
    random, seeded per trial; TPE and GP read the trials' constraints while sampling, the
    others meet them only when the best trial is chosen."""
    return TrialSeededSampler(lambda seed: _base_sampler(spec, seed), spec.seed)


def make_pruner(spec: SearchSpec, budget: int) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(3, spec.trials // 8),
                                           n_warmup_steps=budget // spec.checkpoints)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=budget // spec.checkpoints,
                                              max_resource=budget)
    return optuna.pruners.NopPruner()
