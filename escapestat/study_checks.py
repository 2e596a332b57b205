"""Range and consistency checks of a parsed study, per kind of model.

Each check calls ``bad(key, why)``, which raises one error line naming the file and the
key (``study._check_semantics``); nothing here imports the schema, so the schema module
stays about the shape of study files and this one about what makes sense in them.
"""

from __future__ import annotations

from .schedules import Schedule

#: Deepest linear net accepted: each layer is its own weight per replica and step, so set-up
#: and every step grow with depth (10⁶ layers spent minutes building the start alone).
MAX_DEPTH = 1000


def _min(schedule: Schedule) -> float:
    return schedule.min_value


def _max(schedule: Schedule) -> float:
    return schedule.max_value


def check_linear(study, bad) -> None:
    """Deep linear studies: teacher, data, trap, dynamics and order parameter."""
    m, d, i, y, e = study.model, study.data, study.init, study.dynamics, study.escape
    if m.depth < 2:
        bad("[model] depth", f"must be at least 2, got {m.depth}")
    if m.depth > MAX_DEPTH:
        bad("[model] depth", f"must be at most {MAX_DEPTH} (each layer is trained on its own; "
            f"deeper nets take hours to set up), got {m.depth}")
    if not m.strengths or any(s <= 0 for s in m.strengths):
        bad("[model] strengths", "must be a non-empty list of positive numbers")
    k = len(m.strengths)
    if m.trapped_mode is not None and not 0 <= m.trapped_mode < k:
        bad("[model] trapped_mode", f"must be an index in 0..{k - 1}")
    if m.hidden is not None and (len(m.hidden) != m.depth - 1 or min(m.hidden) < k):
        bad("[model] hidden", f"must list {m.depth - 1} widths, each at least {k} (the modes)")
    for key in ("d_in", "d_out"):
        if getattr(m, key) is not None and getattr(m, key) < k:
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
    if any(_min(v) < 0 for v in y.beta) or any(v < 0 for v in y.beta_over_beta_c):
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
        if not y.batch_size or any(_min(b) < 1 for b in y.batch_size):
            bad("[dynamics] batch_size", "must list batch sizes ≥ 1 for noise = 'sgd'")
        if any(b.is_constant and not float(b.value(0)).is_integer() for b in y.batch_size):
            bad("[dynamics] batch_size", "must be whole numbers")
        if y.temperature or y.barrier_over_temperature:
            bad("[dynamics] temperature", "is set by lr / batch_size for noise = 'sgd'")
        if d.kind == "population":
            bad("[data] kind", "must be 'fixed' or 'fresh' for SGD (minibatches need samples)")
        if d.kind == "fixed" and max(_max(b) for b in y.batch_size) > d.n_train:
            bad("[dynamics] batch_size", f"cannot exceed [data] n_train = {d.n_train}")
    if not 0 < e.threshold < 1:
        bad("[escape] threshold", f"is a fraction of the way to the learned state, in (0, 1); "
            f"got {e.threshold:g}")
    if e.order_parameter not in ("mode", "test_error"):
        bad("[escape] order_parameter", f"must be 'mode' or 'test_error', got "
            f"{e.order_parameter!r}")
    if study.task is not None or study.optimizer is not None:
        bad("[task]" if study.task is not None else "[optimizer]",
            "is for the grokking models (model kind 'mlp' or 'transformer')")
    if y.weight_decay:
        bad("[dynamics] weight_decay", "is for the grokking models; deep linear nets use beta")
    if e.measure != "escape":
        bad("[escape] measure", "is for the grokking models ('generalize' or 'delay')")


def check_grokking(study, bad) -> None:
    """MLP and transformer studies: task, optimizer, minibatch SGD noise, accuracy escape."""
    from .modular import OPERATIONS, table_size, train_size

    m, t, o, y, e = study.model, study.task, study.optimizer, study.dynamics, study.escape
    if t is None:
        bad("[task]", f"is required for model kind {m.kind!r} (operation, p, train_fraction)")
    if t.operation not in OPERATIONS:
        bad("[task] operation", f"must be one of {', '.join(OPERATIONS)}, got {t.operation!r}")
    if t.p < 3:
        bad("[task] p", f"must be at least 3, got {t.p}")
    if not 0 < t.train_fraction < 1:
        bad("[task] train_fraction", f"must be in (0, 1), got {t.train_fraction}")
    if not 0 <= t.label_noise < 1:
        bad("[task] label_noise", f"must be in [0, 1), got {t.label_noise}")
    if o is not None and o.kind not in ("adamw", "sgd"):
        bad("[optimizer] kind", f"must be 'adamw' or 'sgd', got {o.kind!r}")
    if o is not None:
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(o, key) < 1:
                bad(f"[optimizer] {key}", f"must be in [0, 1), got {getattr(o, key):g} (at 1 "
                    f"the moment never forgets its start and every replica diverges)")
        if not o.eps > 0:
            bad("[optimizer] eps", f"must be positive, got {o.eps:g}")
        if not 0 <= o.momentum < 1:
            bad("[optimizer] momentum", f"must be in [0, 1), got {o.momentum:g}")
    if m.activation not in ("quadratic", "relu", "gelu"):
        bad("[model] activation", f"must be 'quadratic', 'relu' or 'gelu', got {m.activation!r}")
    if min(m.width, m.d_model, m.n_heads, m.d_mlp) < 1 or m.d_model % m.n_heads:
        bad("[model]", "width, d_model, n_heads and d_mlp must be ≥ 1, d_model a multiple of "
            "n_heads")
    if m.init_scale <= 0:
        bad("[model] init_scale", "must be positive")
    if y.noise != "sgd":
        bad("[dynamics] noise", "must be 'sgd' for the grokking models (minibatch noise)")
    if y.beta or y.beta_over_beta_c or y.temperature or y.barrier_over_temperature:
        bad("[dynamics]", "beta and temperature are for deep linear nets; the grokking "
            "models take weight_decay and batch_size")
    if not y.lr or not all(v.positive for v in y.lr):
        bad("[dynamics] lr", "must be positive")
    if not y.weight_decay or any(_min(v) < 0 for v in y.weight_decay):
        bad("[dynamics] weight_decay", "is required, ≥ 0")
    if not y.batch_size or any(_min(b) < 1 for b in y.batch_size):
        bad("[dynamics] batch_size", "must list batch sizes ≥ 1 (or \"full\")")
    if any(b.is_constant and not float(b.value(0)).is_integer() for b in y.batch_size):
        bad("[dynamics] batch_size", "must be whole numbers")
    n_train = train_size(table_size(t.operation, t.p), t.train_fraction)
    if any(_max(b) > n_train for b in y.batch_size):
        bad("[dynamics] batch_size", f"cannot exceed the {n_train} training pairs of "
            f"p = {t.p} at train_fraction {t.train_fraction:g}; \"full\" trains on all of them")
    if e.measure not in ("generalize", "delay"):
        bad("[escape] measure", f"must be 'generalize' or 'delay', got {e.measure!r}")
    if not 0 < e.fit_fallback < e.fit_threshold <= 1:
        bad("[escape] fit_fallback", "must be between 0 and fit_threshold (≤ 1)")
    if e.threshold > 1:
        bad("[escape] threshold", "is a test accuracy, at most 1")
    if study.init.seed_over_saddle:
        bad("[init] seed_over_saddle", "is for deep linear nets (it seeds a trapped mode)")


