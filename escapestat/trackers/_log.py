"""``--log KIND:TARGET``: where escapes and per-check metrics go besides the tables."""

from __future__ import annotations

from typing import Protocol

from escapestat.errors import EscapestatError, did_you_mean

_KINDS = ("tensorboard", "mlflow")


class TrackerLog(Protocol):
    """A tracker that escapestat writes to: scalar series and conditions, per named run."""

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None: ...

    def hparams(self, run: str, conditions: dict[str, object]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def parse_log_spec(spec: str) -> tuple[str, str]:
    """``tensorboard:DIR`` or ``mlflow:URI`` (an mlruns folder or a tracking URI) as
    (kind, target); anything else is one clear error."""
    kind, sep, target = str(spec).partition(":")
    if not sep or not target:
        raise EscapestatError(f"--log {spec!r}: write KIND:TARGET, e.g. tensorboard:runs/tb "
                              "or mlflow:sqlite:///mlflow.db")
    if kind not in _KINDS:
        raise EscapestatError(f"--log {spec!r}: unknown tracker {kind!r}"
                              f"{did_you_mean(kind, _KINDS)}; choose {' or '.join(_KINDS)}")
    return kind, target


def open_log(spec: str) -> TrackerLog:
    """The tracker named by ``spec`` (``parse_log_spec``), ready to write."""
    kind, target = parse_log_spec(spec)
    if kind == "tensorboard":
        from escapestat.trackers._tensorboard import TensorBoardLog

        return TensorBoardLog(target)
    from escapestat.trackers._mlflow import MLflowLog

    return MLflowLog(target)
