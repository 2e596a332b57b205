"""``EscapeCallback`` for the Hugging Face ``Trainer``: an ``EscapeMonitor`` fed by evaluations.

::

    from escapestat.integrations.huggingface import EscapeCallback

    callback = EscapeCallback("runs/escapes.csv", metric="eval_accuracy", threshold=0.95,
                              fallback=0.9, commit_steps=200, lr=args.learning_rate,
                              seed=args.seed)
    trainer = transformers.Trainer(..., callbacks=[callback])
    trainer.train()

The Trainer prefixes evaluation metrics with ``eval_`` (``metric_key_prefix``). Needs
``transformers``.
"""

from __future__ import annotations

from typing import Any

from escapestat.integrations import import_first, scalar_metrics
from escapestat.monitor._monitor import EscapeMonitor

TrainerCallback: Any = import_first(["transformers"], "TrainerCallback",
                                    "'escapestat[huggingface]'",
                                    "escapestat.integrations.huggingface")


class EscapeCallback(TrainerCallback):
    """Feed the Trainer's evaluation metrics to an ``EscapeMonitor``; close at train end.

    Evaluations at one ``state.global_step`` (several eval datasets, or a train-set
    evaluation for the fit metric) are merged into one update: it is sent as soon as it
    holds the escape metric (and the fit metric, if any), else when the step advances or
    training ends; metrics arriving at a step already sent are ignored. Only the world
    process zero updates. The row is written at train end; a crash is covered by atexit
    and the signal handlers (the Trainer has no exception hook).

    Parameters
    ----------
    path, metric, threshold, **options
        Passed to ``EscapeMonitor`` (conditions included), which checks them at once.
    stop_on_decision : bool
        Set ``control.should_training_stop`` once the monitor is ``done`` (default False).

    Attributes
    ----------
    monitor : EscapeMonitor
    """

    def __init__(self, path, metric: str, threshold: float, *, stop_on_decision: bool = False,
                 **options):
        super().__init__()
        self.monitor = EscapeMonitor(path, metric, threshold, **options)
        self.stop_on_decision = stop_on_decision
        self._step: int | None = None
        self._pending: dict[str, float] = {}
        wanted = [self.monitor.criterion]
        if self.monitor.fit_criterion is not None:
            wanted.append(self.monitor.fit_criterion)
        self._wanted = {c.metric for c in wanted}

    def _flush(self) -> None:
        if self._pending and not self.monitor.closed:
            assert self._step is not None  # on_evaluate sets the step before it adds metrics
            self.monitor.update(self._step, self._pending)
        self._pending = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not getattr(state, "is_world_process_zero", True) or self.monitor.closed:
            return control
        step, last = int(state.global_step), self.monitor.last_step
        if last is not None and step <= last:
            return control
        if step != self._step:
            self._flush()
            self._step = step
        self._pending.update(scalar_metrics(metrics))
        if self._wanted <= set(self._pending):
            self._flush()
        if self.stop_on_decision and self.monitor.done:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._flush()
        self.monitor.close()
        return control


__all__ = ["EscapeCallback"]
