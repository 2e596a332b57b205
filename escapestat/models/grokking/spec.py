"""What every grokking model shares: the task, the optimizer, minibatch noise, accuracy escape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from escapestat.config._model_spec import Bad, ModelSpec

#: The optimizers a grokking model trains with (``[optimizer] kind``).
OPTIMIZERS = ("adamw", "adam", "sgd")




@dataclass(frozen=True)
class GrokkingSpec(ModelSpec):
    """A model of a∘b mod p; ``init_scale`` is Omnigrok's α (it multiplies the init)."""

    learns_task: ClassVar[bool] = True
    escape_defaults: ClassVar[dict[str, Any]] = {
        "threshold": 0.95, "fallback": 0.9, "measure": "generalize", "check_every": 50}

    init_scale: float = 1.0
    """Omnigrok's α: multiplies every weight of the initialisation."""

    def check_model(self, bad: Bad) -> None:
        """This kind's own [model] keys."""

    def sizes(self, p: int, batch: int) -> tuple[int, int]:
        """(parameters, activations of one training batch) per replica, as numbers."""
        raise NotImplementedError

    def replica_bytes(self, study) -> int:
        from escapestat.config._task import table_size

        item = study.run.item_bytes
        t = study.task
        batch = max(b.max_value for b in study.dynamics.batch_size)
        params, acts = self.sizes(t.p, int(batch))
        split = 8 * table_size(t.operation, t.p)  # the replica's permutation of the pairs
        return 4 * params * item + acts * item + split

    def check(self, study, bad: Bad) -> None:
        """Task, optimizer, minibatch SGD noise and accuracy escape."""
        from escapestat.config._task import OPERATION_NAMES as OPERATIONS
        from escapestat.config._task import TRAIN_ROUNDINGS, table_size, train_size

        t, o, y, e = study.task, study.optimizer, study.dynamics, study.escape
        if t is None:
            bad("[task]", f"is required for model kind {self.kind!r} (operation, p, "
                f"train_fraction)")
        if t.operation not in OPERATIONS:
            bad("[task] operation", f"must be one of {', '.join(OPERATIONS)}, got "
                f"{t.operation!r}")
        if t.p < 3:
            bad("[task] p", f"must be at least 3, got {t.p}")
        if not 0 < t.train_fraction < 1:
            bad("[task] train_fraction", f"must be in (0, 1), got {t.train_fraction}")
        if t.train_rounding not in TRAIN_ROUNDINGS:
            bad("[task] train_rounding", f"must be 'round' or 'floor', got {t.train_rounding!r}")
        if not 0 <= t.label_noise < 1:
            bad("[task] label_noise", f"must be in [0, 1), got {t.label_noise}")
        if o is not None and o.kind not in OPTIMIZERS:
            bad("[optimizer] kind", f"must be one of {', '.join(map(repr, OPTIMIZERS))}, got "
                f"{o.kind!r}")
        if o is not None:
            for key, value in (("beta1", o.beta1), ("beta2", o.beta2)):
                if not 0 <= value < 1:
                    bad(f"[optimizer] {key}", f"must be in [0, 1), got {value:g} (at 1 the "
                        f"moment never forgets its start and every replica diverges)")
            if not o.eps > 0:
                bad("[optimizer] eps", f"must be positive, got {o.eps:g}")
            if not 0 <= o.momentum < 1:
                bad("[optimizer] momentum", f"must be in [0, 1), got {o.momentum:g}")
        self.check_model(bad)
        if self.init_scale <= 0:
            bad("[model] init_scale", "must be positive")
        if y.noise != "sgd":
            bad("[dynamics] noise", "must be 'sgd' for the grokking models (minibatch noise)")
        if y.beta or y.beta_over_beta_c or y.temperature or y.barrier_over_temperature:
            bad("[dynamics]", "beta and temperature are for deep linear nets; the grokking "
                "models take weight_decay and batch_size")
        if not y.lr or not all(v.min_value >= 0 and v.max_value > 0 for v in y.lr):
            bad("[dynamics] lr", "must be ≥ 0 at every step and > 0 at some (a warm-up may "
                "start at 0, as PyTorch's LambdaLR(min(t/steps, 1)) does)")
        if not y.weight_decay or any(v.min_value < 0 for v in y.weight_decay):
            bad("[dynamics] weight_decay", "is required, ≥ 0")
        if not y.batch_size or any(b.min_value < 1 for b in y.batch_size):
            bad("[dynamics] batch_size", "must list batch sizes ≥ 1 (or \"full\")")
        if any(b.is_constant and not float(b.value(0)).is_integer() for b in y.batch_size):
            bad("[dynamics] batch_size", "must be whole numbers")
        n_train = train_size(table_size(t.operation, t.p), t.train_fraction, t.train_rounding)
        if any(b.max_value > n_train for b in y.batch_size):
            bad("[dynamics] batch_size", f"cannot exceed the {n_train} training pairs of "
                f"p = {t.p} at train_fraction {t.train_fraction:g}; \"full\" trains on all "
                f"of them")
        if e.measure not in ("generalize", "delay"):
            bad("[escape] measure", f"must be 'generalize' or 'delay', got {e.measure!r}")
        if not 0 < e.fit_fallback < e.fit_threshold <= 1:
            bad("[escape] fit_fallback", "must be between 0 and fit_threshold (≤ 1)")
        if e.threshold > 1:
            bad("[escape] threshold", "is a test accuracy, at most 1")
        if study.init.seed_over_saddle:
            bad("[init] seed_over_saddle", "is for deep linear nets (it seeds a trapped mode)")
