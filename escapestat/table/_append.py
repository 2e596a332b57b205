"""Appending rows to an escape table that many processes write at once.

CSV/TSV: ``O_APPEND`` and an exclusive ``fcntl.flock`` (a ``filelock`` where there is
no fcntl), the header only into an empty
file, each row in one ``os.write``, then ``fsync`` — so no row is lost or torn. Parquet
cannot be appended to: a ``.parquet`` table is a folder of one part file per row
(written atomically), which ``records.read_table`` reads as one table. A row whose
columns differ from the table's is refused, not filled.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.table._records import _format, atomic_write, parquet_parts


def cell_text(value) -> str:
    """A value as CSV text: missing as empty, whole floats without ".0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return str(value)


def _csv_line(values, delimiter: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        return [c.strip() for c in next(csv.reader(fh, delimiter=delimiter), [])]


def column_mismatch(path: Path, have: list[str], want: list[str]) -> EscapestatError | None:
    """The error for a row whose columns differ from the table's (None when they agree)."""
    missing, extra = [c for c in have if c not in want], [c for c in want if c not in have]
    if not missing and not extra:
        return None
    what = "; ".join(part for part in (
        f"this run lacks {', '.join(map(repr, missing))}" if missing else "",
        f"this run adds {', '.join(map(repr, extra))}" if extra else "") if part)
    return EscapestatError(f"{path}: the table's columns differ from this run's ({what}); "
                           "log the same conditions and metrics in every run of one table, "
                           "or write to another table")


def existing_columns(path: str | os.PathLike) -> list[str] | None:
    """The columns of the table at ``path`` (CSV header, or a parquet part's schema), if any."""
    path = Path(path)
    fmt = _format(path)
    if fmt == "parquet":
        if path.is_file():
            raise EscapestatError(f"{path}: a parquet table written by monitors is a folder of "
                                  "part files, one per run; this is a file")
        parts = parquet_parts(path) if path.is_dir() else []
        if not parts:
            return None
        import pyarrow.parquet as pq

        return list(pq.read_schema(parts[0]).names)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return _csv_header(path, "\t" if fmt == "tsv" else ",")


def append_row(path: str | os.PathLike, row: Mapping[str, object]) -> Path:
    """Append one row to an escape table that many processes may append to at once.

    CSV/TSV: the file is opened with ``O_APPEND`` and locked with an exclusive
    ``fcntl.flock``; the header is written only when the file is empty, the row (in the
    header's column order) with one ``os.write``, then ``fsync``. A row whose columns
    differ from the header is refused (nothing is written). ``.parquet``: ``path`` is a
    folder and the row becomes its own part file ``part-<run_id>.parquet`` (temp file +
    ``os.replace``), readable as one table by ``records.read_table``. ``flock`` is
    advisory and may not hold across machines on network file systems.
    """
    path = Path(path)
    fmt = _format(path)
    if fmt == "parquet":
        return _write_part(path, row)
    return _append_csv(path, row, "\t" if fmt == "tsv" else ",")


@contextlib.contextmanager
def _exclusive(fd: int, path: Path) -> Iterator[None]:
    """An exclusive lock on the open table: ``fcntl.flock`` where there is one (released
    with the descriptor), else (Windows) a ``filelock`` on ``TABLE.lock`` beside it."""
    try:
        import fcntl
    except ImportError:
        from filelock import FileLock

        with FileLock(str(path) + ".lock"):
            yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield


def _last_byte(fd: int, size: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, 1, size - 1)
    with open(fd, "rb", closefd=False) as fh:  # Windows: no pread
        fh.seek(size - 1)
        return fh.read(1)


def _append_csv(path: Path, row: Mapping[str, object], delimiter: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with _exclusive(fd, path):
            _append_locked(fd, path, row, delimiter)
    finally:
        os.close(fd)  # releases the flock
    return path


def _append_locked(fd: int, path: Path, row: Mapping[str, object], delimiter: str) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        columns, data = list(row), _csv_line(list(row), delimiter)
    else:
        columns = _csv_header(path, delimiter)
        error = column_mismatch(path, columns, list(row))
        if error is not None:
            raise error
        data = "" if _last_byte(fd, size) == b"\n" else "\n"
    data += _csv_line([cell_text(row[c]) for c in columns], delimiter)
    view = memoryview(data.encode("utf-8"))
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _write_part(folder: Path, row: Mapping[str, object]) -> Path:
    import pandas as pd

    have = existing_columns(folder)
    if have is not None and (error := column_mismatch(folder, have, list(row))) is not None:
        raise error
    frame = pd.DataFrame([dict(row)])
    return atomic_write(folder / f"part-{row['run_id']}.parquet",
                        lambda tmp: frame.to_parquet(tmp, index=False))


__all__ = ["append_row", "existing_columns", "column_mismatch", "cell_text"]
