"""Escape detection inside a user's own training loop (``EscapeMonitor``)."""

from __future__ import annotations

from ._ingest import IngestResult, ingest  # noqa: F401
from ._monitor import (  # noqa: F401
    CENSORED,
    DIVERGED,
    ESCAPED,
    RUNNING,
    UNTRAPPED,
    Criterion,
    EscapeMonitor,
    append_row,
    existing_columns,
)

__all__ = [
    "CENSORED",
    "DIVERGED",
    "ESCAPED",
    "RUNNING",
    "UNTRAPPED",
    "Criterion",
    "EscapeMonitor",
    "IngestResult",
    "append_row",
    "existing_columns",
    "ingest",
]
