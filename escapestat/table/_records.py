"""The escape-record table: one row per replica and condition, lifelines' convention.

Columns: ``duration`` (> 0, steps unless the run says epochs), ``event`` (1 escaped,
0 right-censored) and condition columns (``temperature``, ``lr``, ``batch_size``,
``weight_decay``, ``noise``, ``seed``, ``replica``, ...). CSV and Parquet both read
and write; every column name is an option so a user's own table works as it is.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from escapestat.errors import EscapestatError

DURATION = "duration"
EVENT = "event"
TEMPERATURE = "temperature"

#: Significant digits numeric conditions (temperatures above all) are rounded to before
#: grouping: 0.3/48 and 0.1/16 differ in the last bit and must be one temperature.
TEMPERATURE_DIGITS = 12

_PARQUET = {".parquet", ".pq"}
_CSV = {".csv", ".txt"}
_TSV = {".tsv"}


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the duration, the event flag, the group and T."""

    duration: str = DURATION
    event: str = EVENT
    group: str | None = None
    temperature: str | None = None


def round_significant(values, digits: int = TEMPERATURE_DIGITS) -> np.ndarray:
    """Round to ``digits`` significant (decimal) digits, so float noise never splits a group."""
    arr = np.asarray(values, dtype=float)
    uniq, inverse = np.unique(arr, return_inverse=True)
    rounded = np.array([float(f"{v:.{digits}g}") if math.isfinite(v) else v for v in uniq])
    return rounded[inverse].reshape(arr.shape)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        return "parquet"
    if suffix in _TSV:
        return "tsv"
    if suffix in _CSV:
        return "csv"
    raise EscapestatError(
        f"{path}: unknown table format {suffix or '(no suffix)'!r}; use .csv, .tsv or .parquet"
    )


def _duplicates(names) -> list[str]:
    seen: set[str] = set()
    twice: set[str] = set()
    for n in names:
        if n in seen:
            twice.add(n)
        seen.add(n)
    return sorted(twice)


_DELIMITERS = (",", "\t", ";", "|")


def delimiter(path: Path, fmt: str) -> str:
    """The text table's delimiter: the extension's (``,`` for .csv, tab for .tsv) when its
    header holds it, else whichever of , tab ; | splits the header most — a tab- or
    ``;``-separated file named ``.csv`` is common, and read whole it is one column."""
    default = "\t" if fmt == "tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return default
    if default in header:
        return default
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else default


def _check_header(path: Path, fmt: str) -> None:
    """Refuse duplicate column names, which pandas would silently rename to ``name.1``."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        else:
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
                names = next(csv.reader(fh, delimiter=delimiter(path, fmt)), [])
    except Exception:  # unreadable here: pandas below gives the clear error
        return
    dups = _duplicates(str(n).strip() for n in names)
    if dups:
        shown = ", ".join(repr(d) for d in dups)
        raise EscapestatError(f"{path}: duplicate column name{'s' if len(dups) > 1 else ''} "
                              f"{shown} in the header; every column needs its own name")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table, turning every I/O or parse problem into one clear error.

    A folder named ``*.parquet`` is read as one table: the concatenation of its part files
    (``*.parquet``, in name order; names starting with ``.`` or ``_`` are skipped), as
    ``escapestat.monitor`` writes them, one part per run. Duplicate column names are
    refused (pandas would rename the second to ``name.1``).
    """
    path = Path(path)
    if not path.exists():
        raise EscapestatError(f"{path}: no such file")
    if path.is_dir() and path.suffix.lower() not in _PARQUET:
        raise EscapestatError(f"{path}: is a directory, expected a .csv or .parquet table "
                              "(or a folder of parquet parts named *.parquet)")
    fmt = _format(path)
    parts = parquet_parts(path) if path.is_dir() else [path]
    if not parts:
        raise EscapestatError(f"{path}: a folder with no parquet parts (*.parquet) in it")
    for part in parts:
        _check_header(part, fmt)
    try:
        if fmt == "parquet":
            df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        else:
            df = pd.read_csv(path, sep=delimiter(path, fmt), skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise EscapestatError(f"{path}: the table is empty") from None
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EscapestatError(f"{path}: cannot read as {fmt}: {first}") from None
    if df.shape[0] == 0:
        raise EscapestatError(f"{path}: the table has a header but no rows")
    df.columns = [str(c).strip() for c in df.columns]
    dups = _duplicates(df.columns)
    if dups:
        raise EscapestatError(f"{path}: duplicate column name(s) {', '.join(map(repr, dups))}")
    return df


def parquet_parts(folder: str | os.PathLike) -> list[Path]:
    """The part files of a folder-of-parts parquet table, in name order (no hidden files)."""
    return sorted(p for p in Path(folder).glob("*.parquet") if p.is_file()
                  and not p.name.startswith((".", "_")))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it into place.

    Readers never see half a file and a crash leaves the old one intact; the file gets
    the usual permissions (mkstemp's would be owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(obj: dict, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON at ``path``, atomically (``atomic_write``)."""
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")

    atomic_write(path, write)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically (CSV, TSV or Parquet by extension)."""
    fmt = _format(Path(path))

    def write(tmp: str) -> None:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")

    return atomic_write(path, write)


def _rows(mask: np.ndarray) -> str:
    """Name the first few offending rows, counted from 1 as in a spreadsheet's data rows."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i + 1) for i in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def _require(df: pd.DataFrame, col: str, what: str) -> None:
    if col not in df.columns:
        have = ", ".join(map(str, df.columns[:12]))
        raise EscapestatError(
            f"missing {what} column {col!r} (columns: {have}); name it with --{what}-col"
        )


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    raw = df[col]
    if raw.dtype == bool:
        return raw.to_numpy(dtype=float)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if bad.any():
        example = raw[bad].iloc[0]
        raise EscapestatError(
            f"column {col!r} is not numeric at {_rows(bad)} (e.g. {example!r})"
        )
    if np.isnan(values).any():
        raise EscapestatError(f"column {col!r} has missing/NaN values at {_rows(np.isnan(values))}")
    if np.isinf(values).any():
        raise EscapestatError(f"column {col!r} has infinite values at {_rows(np.isinf(values))}")
    return values


def _events(df: pd.DataFrame, col: str) -> np.ndarray:
    raw = df[col]
    if raw.dtype == object:
        lowered = raw.astype(str).str.strip().str.lower()
        mapping = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
        if lowered.isin(mapping).all():
            return lowered.map(mapping).to_numpy(dtype=int)
    values = _numeric(df, col)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise EscapestatError(
            f"column {col!r} must be 0 (censored) or 1 (escaped); got {float(values[bad][0])!r} at "
            f"{_rows(bad)}"
        )
    return values.astype(int)


#: Bound on the exposure and on the rate scale: their squares (variances) stay finite.
_SQRT_MAX = math.sqrt(np.finfo(float).max)  # ≈ 1.3e154


def _check_magnitude(durations: np.ndarray, col: str) -> None:
    """Refuse durations so large or so small that exposures, rates or their variances overflow.

    With n rows, n·Σt and n²/min(t) must stay below √(float max) ≈ 1.3e154, so every
    group's exposure E, rate D/E and their squares are finite; subnormal durations
    (1e-320, whose reciprocal is inf) are refused outright.
    """
    n = durations.size
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        total = float(np.sum(durations))
        smallest = float(durations.min())
        big = not (total * n < _SQRT_MAX)
        small = smallest < np.finfo(float).tiny or not (n * n / smallest < _SQRT_MAX)
    if big:
        raise EscapestatError(
            f"column {col!r}: the exposure Σ {col} = {total:g} overflows in the variances "
            f"(values up to {durations.max():g} at {_rows(durations == durations.max())}); "
            "rescale the durations to a larger unit"
        )
    if small:
        bad = durations < np.finfo(float).tiny
        bad = bad if bad.any() else durations == smallest
        raise EscapestatError(
            f"column {col!r}: durations too small for a finite rate (e.g. "
            f"{durations[bad][0]:g} at {_rows(bad)}); rescale the durations to a smaller unit"
        )


def validate(df: pd.DataFrame, columns: Columns = Columns()) -> pd.DataFrame:
    """Check a raw table and return a clean copy with float durations and int events.

    Raises ``EscapestatError`` naming the column and rows for: a missing column,
    non-numeric, NaN or infinite values, zero or negative durations, durations whose
    exposure or rate would overflow, events not 0/1, and an empty table.
    """
    if df.shape[0] == 0:
        raise EscapestatError("the table has no rows")
    _require(df, columns.duration, "duration")
    _require(df, columns.event, "event")
    if columns.group is not None:
        _require(df, columns.group, "group")
    if columns.temperature is not None:
        _require(df, columns.temperature, "temperature")
    out = df.copy()
    durations = _numeric(df, columns.duration)
    nonpos = durations <= 0
    if nonpos.any():
        raise EscapestatError(
            f"column {columns.duration!r} must be > 0; got {durations[nonpos][0]:g} at "
            f"{_rows(nonpos)}"
        )
    _check_magnitude(durations, columns.duration)
    out[columns.duration] = durations
    out[columns.event] = _events(df, columns.event)
    if columns.group is not None and df[columns.group].isna().any():
        raise EscapestatError(
            f"group column {columns.group!r} has missing values at "
            f"{_rows(df[columns.group].isna().to_numpy())}"
        )
    if columns.temperature is not None:
        out[columns.temperature] = temperatures(df, columns.temperature)
    return out


def temperatures(df: pd.DataFrame, col: str) -> np.ndarray:
    """The temperature column as floats, each finite and > 0, or one error naming the rows:
    every command that uses temperatures (``arrhenius``, ``report``, ``regress``) checks
    them here."""
    temps = _numeric(df, col)
    bad = temps <= 0
    if bad.any():
        raise EscapestatError(
            f"column {col!r} must be > 0 at {_rows(bad)}; got {float(temps[bad][0])!r}"
        )
    return temps


def load(path: str | os.PathLike, columns: Columns = Columns()) -> pd.DataFrame:
    """Read and validate an escape-record table in one call."""
    return validate(read_table(path), columns)


RUN_JSON = "run.json"


def _step(value, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise EscapestatError(f"{where} must be a positive number; got {value!r}")
    return float(value)


def _check_every_entries(meta: dict) -> list:
    """Every place a run.json may hold check_every: top level, or the escape section of
    its study or of its conditions (a dict, or a list with one entry per condition)."""
    found = []
    if "check_every" in meta:
        found.append(meta["check_every"])
    for key in ("study", "conditions"):
        section = meta.get(key)
        parts = section if isinstance(section, list) else [section]
        for part in parts:
            if not isinstance(part, dict):
                continue
            escape = part.get("escape")
            if isinstance(escape, dict) and "check_every" in escape:
                found.append(escape["check_every"])
            elif "check_every" in part:
                found.append(part["check_every"])
    return found


def grid_from_run(table: str | os.PathLike) -> float | None:
    """The check_every grid of the run that wrote ``table``, from the run.json beside it.

    None when there is no run.json or it does not record check_every; a run.json that is
    unreadable or records conflicting or invalid values is an error, not a silent default.
    """
    meta_path = Path(table).with_name(RUN_JSON)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EscapestatError(
            f"{meta_path}: cannot read the run's check_every ({type(exc).__name__}); "
            "pass --grid STEP"
        ) from None
    values = {_step(v, f"{meta_path}: check_every") for v in
              (_check_every_entries(meta) if isinstance(meta, dict) else [])}
    if len(values) > 1:
        raise EscapestatError(
            f"{meta_path}: conflicting check_every values {sorted(values)}; pass --grid STEP"
        )
    return values.pop() if values else None


def run_meta_value(table: str | os.PathLike, key: str) -> float | None:
    """A number the run that wrote ``table`` recorded in the run.json beside it (e.g. its
    escape ``threshold``); None when there is none, or it is not a finite number."""
    meta_path = Path(table).with_name(RUN_JSON)
    try:
        value = json.loads(meta_path.read_text(encoding="utf-8")).get(key)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def resolve_grid(grid: float | None, table: str | os.PathLike) -> float | None:
    """The KS null's duration grid: ``grid`` if given (> 0), else the run's check_every."""
    if grid is not None:
        return _step(grid, "--grid")
    return grid_from_run(table)
