"""``EscapeCallback`` for PyTorch Lightning: an ``EscapeMonitor`` fed at validation end.

::

    from escapestat.integrations.lightning import EscapeCallback

    callback = EscapeCallback("runs/escapes.csv", metric="val_acc", threshold=0.95,
                              fallback=0.9, commit_steps=200, fit_metric="train_acc",
                              fit_threshold=0.99, lr=lr, seed=seed)
    trainer = lightning.Trainer(callbacks=[callback], ...)
    trainer.fit(model)

Needs ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any

from escapestat.integrations import import_first, scalar_metrics
from escapestat.monitor._monitor import EscapeMonitor

Callback: Any = import_first(["lightning.pytorch", "pytorch_lightning"], "Callback",
                             "'escapestat[lightning]'", "escapestat.integrations.lightning")


class EscapeCallback(Callback):
    """Feed ``trainer.callback_metrics`` to an ``EscapeMonitor`` after every validation.

    At each validation end (sanity checks skipped) the monitor is updated at
    ``trainer.global_step`` with every scalar logged metric; a validation at a step
    already seen is skipped. Only the global-zero process updates, so a distributed run
    writes one row. The row is written at fit end, or on an exception with
    ``ended_by = "exception <type>"``; atexit and the signal handlers cover the rest.

    Parameters
    ----------
    path, metric, threshold, **options
        Passed to ``EscapeMonitor`` (conditions included), which checks them at once.
    stop_on_decision : bool
        Set ``trainer.should_stop`` once the monitor is ``done`` (default False).

    Attributes
    ----------
    monitor : EscapeMonitor
    """

    def __init__(self, path, metric: str, threshold: float, *, stop_on_decision: bool = False,
                 **options):
        super().__init__()
        self.monitor = EscapeMonitor(path, metric, threshold, **options)
        self.stop_on_decision = stop_on_decision

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(trainer, "sanity_checking", False) or not getattr(trainer, "is_global_zero",
                                                                     True):
            return
        step, last = int(trainer.global_step), self.monitor.last_step
        if self.monitor.closed or (last is not None and step <= last):
            return
        self.monitor.update(step, scalar_metrics(trainer.callback_metrics))
        if self.stop_on_decision and self.monitor.done:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self.monitor.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.monitor.close(f"exception {type(exception).__name__}")


__all__ = ["EscapeCallback"]
