"""Escape tables: reading and writing them (CSV, TSV, Parquet, parts) and locked appends."""

from __future__ import annotations

from ._append import (  # noqa: F401
    append_row,
    cell_text,
    column_mismatch,
    existing_columns,
)
from ._records import (  # noqa: F401
    DURATION,
    EVENT,
    RUN_JSON,
    TEMPERATURE,
    TEMPERATURE_DIGITS,
    Columns,
    atomic_write,
    delimiter,
    grid_from_run,
    load,
    parquet_parts,
    read_table,
    resolve_grid,
    round_significant,
    run_meta_value,
    validate,
    write_json,
    write_table,
)

__all__ = [
    "DURATION",
    "EVENT",
    "TEMPERATURE",
    "TEMPERATURE_DIGITS",
    "Columns",
    "round_significant",
    "delimiter",
    "read_table",
    "parquet_parts",
    "atomic_write",
    "write_json",
    "write_table",
    "validate",
    "load",
    "RUN_JSON",
    "grid_from_run",
    "run_meta_value",
    "resolve_grid",
    "append_row",
    "existing_columns",
    "column_mismatch",
    "cell_text",
]
