"""The ``[search]`` table as values: its settings (``SearchSpec``) and each searched
parameter (``Param``), with the names of the samplers, objectives and pruners."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from escapestat.config._schedules import SHAPES

SAMPLERS = ("tpe", "gp", "cmaes", "random")
OBJECTIVES = ("rmst", "log_tau")
PRUNERS = ("median", "hyperband", "none")
#: Sections a search may vary. ``run`` and ``escape`` fix the budget and what counts as an
#: escape, and ``task`` the problem: varying them would compare unlike things.
SEARCHABLE = ("dynamics", "optimizer", "model", "init")
_PARAM_KEYS = ("low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched value: a float or int range (``log`` for a log scale), or ``choices``."""

    path: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @property
    def target(self) -> str:
        """The path in the study: ``path`` without a ``@shape`` qualifier."""
        parent, _, key = self.path.rpartition(".")
        return f"{parent.partition('@')[0]}.{key}"

    @property
    def only_for(self) -> str | None:
        """The shape that a ``schedule@shape.key`` path applies to, if qualified."""
        return self.path.rpartition(".")[0].partition("@")[2] or None

    @property
    def parent(self) -> str:
        return self.target.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.target.rpartition(".")[2]

    def applies(self, shape: str) -> bool:
        """Whether this key is sampled when its schedule has ``shape``."""
        return self.key in SHAPES[shape].keys() and self.only_for in (None, shape)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(
                self.step, float):
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        assert self.low is not None and self.high is not None  # a range: the parser sets both
        return trial.suggest_float(self.path, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """Values that a check should try: the ends of a range, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpec:
    """The ``[search]`` table of a study file. ``seed`` seeds the sampler; trials all train on
    the study's ``run.seed``; ``compare`` re-runs arms on ``compare_seed`` (default
    ``run.seed + 1``), never used in the search."""

    trials: int = 40
    """Trials per search (the constant-only search gets as many)."""
    sampler: str = "tpe"
    """`tpe` (multivariate, grouped), `gp`, `cmaes` or `random`."""
    seed: int = 0
    """The sampler's seed; each trial's sampler is seeded from it and the trial's number, so
    workers never repeat each other."""
    objective: str = "rmst"
    """`rmst`: log of the restricted mean time not yet escaped (a diverged replica never
    escapes); `log_tau`: log(exposure / escapes)."""
    max_final_test_error: float | None = None
    """Grokking models: a constraint on the mean test error at the budget."""
    max_final_loss: float | None = None
    """Deep linear nets: a constraint on the mean loss at the budget."""
    pruner: str = "median"
    """`median`, `hyperband` or `none`."""
    checkpoints: int = 10
    """Intermediate values per trial, for the pruner."""
    top: int = 3
    """How many best trials `compare` re-runs."""
    compare_replicas: int | None = None
    """Replicas per arm in `compare` (default: `[run] replicas`)."""
    compare_seed: int | None = None
    """The seed of `compare`'s arms (default: `[run] seed` + 1, never used by the search)."""
    constant_search: bool = True
    """Also search the same space with every schedule held constant (the bar a schedule must
    clear)."""
    space: tuple[Param, ...] = ()
    """`[search.space]`: dotted paths into the study (`"dynamics.lr"`,
    `"dynamics.weight_decay.shape"`, `"dynamics.weight_decay@pulse.start"`), each a range
    `{low, high, log, step}` or `{choices = [...]}`."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """`[search.baselines]`: named arms `compare` always runs, each a table of overrides."""

    def param(self, path: str) -> Param:
        return next(p for p in self.space if p.path == path)

    @property
    def shape_params(self) -> dict[str, Param]:
        """Searched schedule shapes, by the schedule's path."""
        return {p.parent: p for p in self.space if p.key == "shape"}
