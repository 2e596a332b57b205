"""``kind = "deep_linear"``: its [model] keys and the checks of a deep linear trap study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from escapestat.config._model_spec import Bad, ModelSpec

#: Deepest linear net accepted: each layer is its own weight per replica and step, so set-up
#: and every step grow with depth (10⁶ layers spent minutes building the start alone).
MAX_DEPTH = 1000




@dataclass(frozen=True)
class DeepLinearSpec(ModelSpec):
    """f(x) = W_L···W_1 x on a teacher A = U diag(strengths) Vᵀ; ``hidden`` widths
    default to one unit per mode, ``trapped_mode`` to the weakest, ``d_in``/``d_out`` to
    the number of modes; ``rotate``: random singular vectors instead of the axes."""

    hash_kind: ClassVar[bool] = False

    depth: int = 3
    """Number of weight matrices L (2–1000); depth ≥ 3 has a first-order transition and a trap."""
    strengths: tuple[float, ...] = (1.5, 1.25, 1.0)
    """The teacher's singular values s, one per mode."""
    hidden: tuple[int, ...] | None = None
    """Hidden widths, L − 1 of them (default: one unit per mode). Wider layers lower the
    effective barrier."""
    trapped_mode: int | None = None
    """Index of the mode that starts unlearned (default: the weakest)."""
    d_in: int | None = None
    """Input size of the teacher (default: the number of modes)."""
    d_out: int | None = None
    """Output size of the teacher (default: the number of modes)."""
    rotate: bool = False
    """Random singular vectors instead of the coordinate axes."""

    @property
    def trapped_index(self) -> int:
        """The trapped mode: ``trapped_mode``, or the weakest."""
        if self.trapped_mode is not None:
            return self.trapped_mode
        return min(range(len(self.strengths)), key=lambda k: self.strengths[k])

    @property
    def widths(self) -> list[int]:
        """Layer widths [d_in, hidden..., d_out]."""
        k = len(self.strengths)
        hidden = list(self.hidden) if self.hidden is not None else [k] * (self.depth - 1)
        return [self.d_in or k, *hidden, self.d_out or k]

    def replica_bytes(self, study) -> int:
        item = study.run.item_bytes
        widths = self.widths
        params = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
        d = study.data
        samples = 0 if d.kind == "population" else d.n_train + d.n_test
        data = samples * (widths[0] + widths[-1])
        batch = max(max((b.max_value for b in study.dynamics.batch_size), default=0), 1)
        return (4 * params + data + batch * sum(widths)) * item

    def check(self, study, bad: Bad) -> None:
        """Teacher, data, trap, dynamics and order parameter."""
        from escapestat.config._registry import task_kinds

        m, d, i, y, e = self, study.data, study.init, study.dynamics, study.escape
        if m.depth < 2:
            bad("[model] depth", f"must be at least 2, got {m.depth}")
        if m.depth > MAX_DEPTH:
            bad("[model] depth", f"must be at most {MAX_DEPTH} (each layer is trained on its "
                f"own; deeper nets take hours to set up), got {m.depth}")
        if not m.strengths or any(s <= 0 for s in m.strengths):
            bad("[model] strengths", "must be a non-empty list of positive numbers")
        k = len(m.strengths)
        if m.trapped_mode is not None and not 0 <= m.trapped_mode < k:
            bad("[model] trapped_mode", f"must be an index in 0..{k - 1}")
        if m.hidden is not None and (len(m.hidden) != m.depth - 1 or min(m.hidden) < k):
            bad("[model] hidden", f"must list {m.depth - 1} widths, each at least {k} "
                f"(the modes)")
        for key, value in (("d_in", m.d_in), ("d_out", m.d_out)):
            if value is not None and value < k:
                bad(f"[model] {key}", f"must be at least the number of modes ({k})")
        if d.kind not in ("population", "fixed", "fresh"):
            bad("[data] kind", f"must be 'population', 'fixed' or 'fresh', got {d.kind!r}")
        if d.n_train < 1 or d.n_test < 1 or d.label_noise < 0:
            bad("[data]", "n_train and n_test must be ≥ 1 and label_noise ≥ 0")
        if i.kind not in ("aligned", "trained", "random"):
            bad("[init] kind", f"must be 'aligned', 'trained' or 'random', got {i.kind!r}")
        if i.kind == "trained" and (i.beta_trap is None or i.beta_trap <= 0):
            bad("[init] beta_trap", "is required (> 0) when [init] kind = 'trained'")
        if i.noise < 0 or i.scale <= 0 or i.trap_steps < 0 or i.trap_lr <= 0:
            bad("[init]", "noise ≥ 0, scale > 0, trap_steps ≥ 0 and trap_lr > 0 are required")
        if any(not 0 < f < 1e3 for f in i.seed_over_saddle):
            bad("[init] seed_over_saddle", "must be positive ratios to the saddle's amplitude")
        if i.seed_over_saddle and i.kind == "random":
            bad("[init] seed_over_saddle", "seeds a trapped mode; [init] kind 'random' has no trap")
        if y.noise not in ("langevin", "sgd"):
            bad("[dynamics] noise", f"must be 'langevin' or 'sgd', got {y.noise!r}")
        if not y.lr or not all(v.positive for v in y.lr):
            bad("[dynamics] lr", "must be positive")
        if bool(y.beta) == bool(y.beta_over_beta_c):
            bad("[dynamics]", "needs exactly one of beta or beta_over_beta_c")
        if any(v.min_value < 0 for v in y.beta) or any(v < 0 for v in y.beta_over_beta_c):
            bad("[dynamics] beta", "must be ≥ 0")
        if y.noise == "langevin":
            if bool(y.temperature) == bool(y.barrier_over_temperature):
                bad("[dynamics]", "langevin needs exactly one of temperature or "
                    "barrier_over_temperature")
            if not all(v.positive for v in y.temperature) or any(
                    v <= 0 for v in y.barrier_over_temperature):
                bad("[dynamics] temperature", "must be positive")
            if y.batch_size:
                bad("[dynamics] batch_size", "is for noise = 'sgd'; Langevin uses the full data")
        else:
            if not y.batch_size or any(b.min_value < 1 for b in y.batch_size):
                bad("[dynamics] batch_size", "must list batch sizes ≥ 1 for noise = 'sgd'")
            if any(b.is_constant and not float(b.value(0)).is_integer() for b in y.batch_size):
                bad("[dynamics] batch_size", "must be whole numbers")
            if y.temperature or y.barrier_over_temperature:
                bad("[dynamics] temperature", "is set by lr / batch_size for noise = 'sgd'")
            if d.kind == "population":
                bad("[data] kind", "must be 'fixed' or 'fresh' for SGD (minibatches need samples)")
            if d.kind == "fixed" and max(b.max_value for b in y.batch_size) > d.n_train:
                bad("[dynamics] batch_size", f"cannot exceed [data] n_train = {d.n_train}")
        if not 0 < e.threshold < 1:
            bad("[escape] threshold", f"is a fraction of the way to the learned state, in (0, 1); "
                f"got {e.threshold:g}")
        if e.order_parameter not in ("mode", "test_error"):
            bad("[escape] order_parameter", f"must be 'mode' or 'test_error', got "
                f"{e.order_parameter!r}")
        if study.task is not None or study.optimizer is not None:
            bad("[task]" if study.task is not None else "[optimizer]",
                f"is for the grokking models (model kind {' or '.join(map(repr, task_kinds()))})")
        if y.weight_decay:
            bad("[dynamics] weight_decay", "is for the grokking models; deep linear nets use beta")
        if e.measure != "escape":
            bad("[escape] measure", "is for the grokking models ('generalize' or 'delay')")
