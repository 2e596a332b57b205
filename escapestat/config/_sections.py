"""The sections of a study file ([task], [optimizer], [data], [init], [dynamics], [escape],
[run]) as frozen dataclasses, and ``_plain``: any study value as plain data (``as_dict``,
the config hash)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from escapestat.config._grad_filter import check_grad_filter
from escapestat.config._model_spec import ModelSpec
from escapestat.config._schedules import Constant, Schedule
from escapestat.errors import EscapestatError


@dataclass(frozen=True)
class TaskSpec:
    """Modular arithmetic a∘b mod p for the grokking models: each replica its own split."""

    operation: str = "add"
    """`add`, `sub`, `mul`, `div` (b ≠ 0) or `poly` (a² + ab + b²), mod `p`."""
    p: int = 23
    """The modulus (≥ 3)."""
    train_fraction: float = 0.7
    """Fraction of the pairs in each replica's own seeded training split, in (0, 1)."""
    train_rounding: str = "round"
    """How f · N pairs become whole: `round`, or `floor` as Nanda et al.'s `int(f·N)`
    (3,830 of 12,769 pairs at p = 113, f = 0.3, where `round` gives 3,831)."""
    label_noise: float = 0.0
    """Fraction of training labels replaced by random ones, in [0, 1)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """The grokking models' optimizer: ``adamw`` (decoupled decay), ``adam`` (coupled L2,
    as Grokfast's baseline) or ``sgd`` (momentum, L2)."""

    kind: str = "adamw"
    """`adamw` (decoupled weight decay), `adam` (coupled L2, Grokfast's baseline) or `sgd`."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.98
    """Adam's second-moment decay."""
    eps: float = 1e-8
    """Adam's denominator floor."""
    momentum: float = 0.0
    """SGD's momentum (0: none)."""


@dataclass(frozen=True)
class DataSpec:
    """Where the data term's moments come from.

    ``population``: the exact population loss ½‖A − P‖² (whitened inputs, no sampling);
    ``fixed``: a training set of ``n_train`` samples per replica, minibatches drawn
    without replacement each epoch, and a held-out test set; ``fresh``: new samples every step.
    """

    kind: str = "population"
    """`population` (the exact loss, whitened inputs, no sampling), `fixed` (a training set per
    replica plus a test set; minibatches without replacement) or `fresh` (new samples every
    step)."""
    n_train: int = 512
    """Training samples per replica (`fixed`); the batch size when `batch_size` is not given."""
    n_test: int = 512
    """Held-out test samples per replica (`fixed`)."""
    label_noise: float = 0.0
    """Standard deviation of Gaussian noise on the training targets (`fixed`, `fresh`)."""


@dataclass(frozen=True)
class InitSpec:
    """How replicas are put into the trap.

    ``aligned``: the structured trapped start — learned modes at their fixed point at
    β_run, the trapped mode at zero, plus N(0, noise²) on every weight. ``trained``: the
    paper's protocol — random init of scale ``scale``, ``trap_steps`` of full-batch
    gradient descent at ``beta_trap`` with ``trap_lr``; replicas whose trapped mode is
    not below the fall-back level at the switch are reported as untrapped and excluded.
    ``random``: the random init alone, no trap (learning from scratch, e.g. the sparse
    sub-sampling curve). ``seed_over_saddle``, a ladder (one condition each): after the
    trap, give the trapped mode a layer amplitude b₀ = this × the saddle's amplitude at
    β_run along hidden directions the learned modes do not use — the control that tells a
    deterministic roll-off (escape iff b₀ is past the saddle) from activated escape.
    """

    kind: str = "aligned"
    """`aligned` (learned modes at their fixed point, the trapped mode at zero, plus `noise`),
    `trained` (the paper's protocol: a random init of `scale`, `trap_steps` of full-batch GD
    at `beta_trap` with `trap_lr`, then the switch) or `random` (the random init alone, no
    trap)."""
    noise: float = 1e-3
    """Standard deviation of the Gaussian noise on every weight of an `aligned` start."""
    scale: float = 1.0
    """Scale of the random init (`trained`, `random`)."""
    beta_trap: float | None = None
    """L2 strength while trapping (`trained`; default: the run's β)."""
    trap_steps: int = 3000
    """Full-batch gradient steps that put a `trained` start into the trap."""
    trap_lr: float = 0.05
    """Learning rate of those steps."""
    seed_over_saddle: tuple[float, ...] = ()
    """A ladder: give the trapped mode an amplitude of this × the saddle's after the trap, along
    unused hidden directions — the control that tells a deterministic roll-off from activated
    escape."""


@dataclass(frozen=True)
class GradFilterSpec:
    """A validated Grokfast filter spec (``{kind = "ema", alpha, lamb}`` or ``"ma"``)."""

    items: tuple[tuple[str, object], ...]

    @classmethod
    def parse(cls, raw, where: str) -> GradFilterSpec:
        if not isinstance(raw, dict):
            raise EscapestatError(f"{where} must be a table such as "
                                  '{kind = "ema", alpha = 0.98, lamb = 2.0}')
        check_grad_filter(raw, where)  # the filter itself is built per chunk (models)
        return cls(tuple(sorted(raw.items())))

    def as_dict(self) -> dict:
        return dict(self.items)


@dataclass(frozen=True)
class DynamicsSpec:
    """The noise model and the ladder of conditions (their Cartesian product is run).

    Langevin: gradient step plus √(2·lr·T) Gaussian noise, exact temperature T, given as
    ``temperature`` or as ``barrier_over_temperature`` (T = ΔE(β)/x). SGD: minibatch
    noise, reported temperature T = lr / batch_size. β is ``beta`` or ``beta_over_beta_c``.
    ``lr``, ``beta``, ``temperature`` and ``batch_size`` are ladders of schedules: a number
    is a constant, a table a schedule of the step (``schedules``), a list of either a
    ladder. ``grad_filter`` is an optional Grokfast filter (``grad_filter``).
    """

    noise: str = "langevin"
    """`langevin` (gradient step plus √(2·lr·T) Gaussian noise, exact T) or `sgd` (per-replica
    minibatches without replacement; reported T = lr/B)."""
    lr: tuple[Schedule, ...] = (Constant(0.25),)
    """Learning rate."""
    batch_size: tuple[Schedule, ...] = ()
    """SGD's minibatch size (`"full"` for the grokking models: full batch)."""
    temperature: tuple[Schedule, ...] = ()
    """Langevin temperature T."""
    barrier_over_temperature: tuple[float, ...] = ()
    """Langevin: ΔE(β)/T, so T = ΔE/x from the theory barrier (numbers only)."""
    beta: tuple[Schedule, ...] = ()
    """L2 strength β during the run (deep linear nets)."""
    beta_over_beta_c: tuple[float, ...] = ()
    """β as fractions of the trapped mode's critical β_c (numbers only)."""
    weight_decay: tuple[Schedule, ...] = ()
    """Weight decay of the grokking models (takes β's place)."""
    grad_filter: GradFilterSpec | None = None
    """Grokfast filter on the data gradient: `{kind = "ema", alpha, lamb}` or `{kind = "ma",
    window, lamb}`; the L2 term is added after, unfiltered."""


@dataclass(frozen=True)
class EscapeSpec:
    """Escape = the order parameter crosses ``threshold`` and does not fall back below
    ``fallback`` within ``commit_steps``.

    ``mode``: the trapped mode's end-to-end strength as a fraction of its learned value;
    ``test_error``: the fraction of the way test error has fallen from the trapped plateau
    to the learned state's level (threshold 0.5 is the midpoint). For the grokking models
    the order parameter is test accuracy (``threshold`` 0.95 by default there) and train
    accuracy marks the fit (``fit_threshold``, ``fit_fallback``); ``measure`` puts the
    generalisation time (``generalize``) or the delay after the fit (``delay``) into
    ``duration``.
    """

    order_parameter: str = "mode"
    """Deep linear nets: `mode` (the trapped mode's end-to-end strength over its learned value)
    or `test_error` (the fraction of the way from the trapped plateau's test error to the
    learned state's). Grokking models: test accuracy."""
    threshold: float = 0.5
    """The order parameter crosses this at an escape (0.5: halfway; grokking: 0.95 test
    accuracy)."""
    fallback: float = 0.25
    """A crossing commits unless the order parameter falls back below this within `commit_steps`."""
    commit_steps: int = 200
    """Steps a crossing must hold to commit; the recorded time is the crossing step."""
    check_every: int = 10
    """Steps between checks: escape times sit on this grid."""
    measure: str = "escape"
    """Grokking models: `generalize` (the committed generalisation time) or `delay`
    (generalisation minus fit) goes into `duration`."""
    fit_threshold: float = 0.99
    """Grokking models: the train accuracy that marks the fit (deep linear nets mark it with
    `threshold` on the train error)."""
    fit_fallback: float = 0.9
    """The fit's fall-back level (the same commitment rule)."""


@dataclass(frozen=True)
class RunSpec:
    """Replicas per condition, the step budget (right-censoring), seeds and numerics."""

    replicas: int = 256
    """Replicas per condition."""
    max_steps: int = 40_000
    """The step budget: a replica still trapped here is right-censored."""
    seed: int = 0
    """The training seed; each chunk's seed derives from it."""
    chunk_replicas: int = 4096
    """At most this many replicas train as one batched model."""
    dtype: str = "float32"
    """`float32` or `float64`."""
    divergence_limit: float = 1e4
    """A replica whose weights exceed this (or turn non-finite) is diverged."""
    curves: bool = False  # deep linear nets: record per-check curves (grokking models always)
    """Deep linear nets: record per-check curves (`curves.csv`); grokking models always do."""
    hold: bool = False  # escaped replicas train on to the budget (curves show the whole run)
    """Escaped replicas train on to the budget (final values at the budget; curves of the whole
    run)."""

    @property
    def item_bytes(self) -> int:
        """Bytes per number of ``dtype`` (the one place the dtype's name is read)."""
        return 8 if self.dtype == "float64" else 4


def _plain(obj, key: str = ""):
    if isinstance(obj, Schedule):
        if not obj.is_constant:
            return json.loads(obj.describe())
        value = obj.value(0)
        return int(value) if key == "batch_size" else value
    if isinstance(obj, GradFilterSpec):
        return obj.as_dict()
    if isinstance(obj, ModelSpec):
        return {"kind": obj.kind, **{f.name: _plain(getattr(obj, f.name), f.name)
                                     for f in dataclasses.fields(obj)}}
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name), f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v, key) for v in obj]
    return obj
