"""Never pool conditions silently: split a table into strata that are each fitted apart.

A fit over rows whose conditions differ (β, weight decay, width, a schedule, ...) mixes
laws: the shipped two-β Langevin control pooled into one Arrhenius line has a Pearson
dispersion of 118. ``fit_strata`` and ``arrhenius_strata`` return one ``Stratum`` per
combination of the ``by`` columns and refuse, with one line naming the columns, any
stratum in which another condition column still takes more than one value, unless
``pool=True`` (then the stratum says what it pooled).

Condition columns are the names in ``CONDITION_COLUMNS`` plus any column ending in
``_schedule``. Numeric values are compared after rounding to ``TEMPERATURE_DIGITS``
significant digits, so float noise is never a second condition.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from escapestat.errors import EscapestatError
from escapestat.table._records import TEMPERATURE, round_significant

#: Columns that describe what a replica was run at (besides ``*_schedule`` columns).
CONDITION_COLUMNS = (
    TEMPERATURE, "weight_decay", "beta", "lr", "batch_size", "noise", "width", "depth",
    "hidden", "momentum", "optimizer", "task", "model", "barrier_theory", "condition",
    "seed_over_saddle",
)
SCHEDULE_SUFFIX = "_schedule"
#: What the engine writes in a ``*_schedule`` column for a value held fixed during the run.
CONSTANT = "constant"


@dataclass(frozen=True)
class Stratum:
    """Rows fitted together: the values of the ``by`` columns, and what was pooled knowingly."""

    key: tuple[tuple[str, object], ...]
    rows: pd.DataFrame = field(compare=False, repr=False)
    pooled: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``beta=0.3, width=8``, or ``all`` for an unstratified table."""
        return ", ".join(f"{col}={value}" for col, value in self.key) or "all"

    @property
    def slug(self) -> str:
        """The label made safe for a file name."""
        return re.sub(r"[^A-Za-z0-9=.+-]+", "_", self.label.replace(", ", "_"))

    def as_dict(self) -> dict:
        return dict(self.key)

    def file_for(self, path: str | os.PathLike) -> Path:
        """``path`` for an unstratified table, else ``NAME-COL=VALUE.EXT`` beside it."""
        path = Path(path)
        return path if not self.key else path.with_name(f"{path.stem}-{self.slug}{path.suffix}")


def condition_columns(df: pd.DataFrame, exclude=()) -> list[str]:
    """The table's condition columns (known names and ``*_schedule``), minus ``exclude``."""
    skip = set(exclude)
    return [
        str(c) for c in df.columns
        if (c in CONDITION_COLUMNS or str(c).endswith(SCHEDULE_SUFFIX)) and c not in skip
    ]


def _canonical(series: pd.Series) -> pd.Series:
    """Values as compared: numbers rounded to 12 significant digits, text stripped."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return series
    if pd.api.types.is_numeric_dtype(series):
        return pd.Series(round_significant(series.to_numpy(dtype=float)), index=series.index)
    return series.map(lambda v: v.strip() if isinstance(v, str) else v)


def _python(value):
    """A numpy scalar as a plain Python value (for labels and JSON)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _show(values) -> str:
    shown = ", ".join("NaN" if pd.isna(v) else str(_python(v)) for v in values[:4])
    return shown + (", ..." if len(values) > 4 else "")


def _differing(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """``col (n values: a, b, ...)`` for each column taking more than one value in ``rows``."""
    out = []
    for col in columns:
        values = pd.unique(_canonical(rows[col]))
        if len(values) > 1:
            out.append(f"{col} ({len(values)} values: {_show(sorted(values, key=str))})")
    return out


def _split(df: pd.DataFrame, by) -> list[tuple[tuple[tuple[str, object], ...], pd.DataFrame]]:
    """Rows per combination of the ``by`` columns (canonical values), in sorted order."""
    by = list(dict.fromkeys(by))
    if not by:
        return [((), df)]
    for col in by:
        if col not in df.columns:
            have = ", ".join(map(str, df.columns[:12]))
            raise EscapestatError(f"no column {col!r} to stratify by (columns: {have})")
        missing = df[col].isna().to_numpy()
        if missing.any():
            rows = ", ".join(str(i + 1) for i in np.flatnonzero(missing)[:5])
            raise EscapestatError(f"column {col!r} (--by) has missing values at row(s) {rows}")
    keys = pd.DataFrame({col: _canonical(df[col]) for col in by}, index=df.index)
    out = []
    for values, idx in keys.groupby(by, sort=True).groups.items():
        values = values if isinstance(values, tuple) else (values,)
        out.append((tuple((c, _python(v)) for c, v in zip(by, values, strict=True)), df.loc[idx]))
    return out


def _refuse(where: str, differing: list[str], first: str, group: bool = False
            ) -> EscapestatError:
    apart = f"--group-col {first} or --by {first}" if group else f"--by {first}"
    return EscapestatError(
        f"conditions differ {where}: {'; '.join(differing)}; fit them apart with "
        f"{apart} or pool them knowingly with --pool"
    )


def fit_strata(
    df: pd.DataFrame, group_col: str | None = None, by=(), pool: bool = False
) -> list[Stratum]:
    """Strata for per-condition summaries; every condition column is constant per group.

    Within each ``by`` stratum and each value of ``group_col`` (the whole stratum without
    one), no condition column (temperature included) may take two values unless ``pool``.
    Numeric group values are rounded to 12 significant digits in the returned rows.
    """
    checked = condition_columns(df, exclude={group_col, *by})
    strata = []
    for key, rows in _split(df, by):
        if group_col is not None and group_col in rows.columns:
            rows = rows.assign(**{group_col: _canonical(rows[group_col])})
            parts = rows.groupby(group_col, sort=True, dropna=False)
        else:
            parts = [(None, rows)]
        pooled: dict[str, None] = {}
        for value, part in parts:
            differing = _differing(part, checked)
            if differing and not pool:
                where = "within the table" if group_col is None else (
                    f"within {group_col}={_python(value)}")
                if key:
                    where += " of " + ", ".join(f"{c}={v}" for c, v in key)
                raise _refuse(where, differing, differing[0].split(" ")[0],
                              group=group_col is None)
            pooled.update(dict.fromkeys(d.split(" ")[0] for d in differing))
        strata.append(Stratum(key, rows, tuple(pooled)))
    return strata


def _temperature_is_lr_over_batch(
    df: pd.DataFrame, temperature_col: str, lr_col: str, batch_col: str
) -> bool:
    """True when T == lr / batch on every row (T was computed from them)."""
    if not {temperature_col, lr_col, batch_col} <= set(df.columns):
        return False
    t = pd.to_numeric(df[temperature_col], errors="coerce").to_numpy(dtype=float)
    lr = pd.to_numeric(df[lr_col], errors="coerce").to_numpy(dtype=float)
    batch = pd.to_numeric(df[batch_col], errors="coerce").to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = lr / batch
    ok = np.isfinite(ratio) & np.isfinite(t) & (batch > 0)
    return bool(ok.all()) and bool(np.allclose(round_significant(ratio),
                                               round_significant(t), rtol=1e-9, atol=0))


def _check_constant(df: pd.DataFrame, schedule_cols: list[str], temperature_col: str) -> None:
    """Refuse rows whose temperature (or lr, batch size for T = lr/B) follows a schedule."""
    for col in schedule_cols:
        if col not in df.columns:
            continue
        values = df[col]
        text = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        bad = (text != CONSTANT).to_numpy() & values.notna().to_numpy()
        if bad.any():
            rows = ", ".join(str(i + 1) for i in np.flatnonzero(bad)[:5])
            example = str(values[bad].iloc[0])
            example = example if len(example) <= 60 else example[:57] + "..."
            raise EscapestatError(
                f"column {col!r} is not {CONSTANT!r} at row(s) {rows} (e.g. {example}): an "
                f"Arrhenius fit needs a constant {temperature_col} per condition; leave "
                "scheduled conditions out of the table"
            )


def arrhenius_strata(
    df: pd.DataFrame,
    temperature_col: str = TEMPERATURE,
    by=(),
    pool: bool = False,
    lr_col: str = "lr",
    batch_col: str = "batch_size",
) -> list[Stratum]:
    """Strata for Arrhenius fits: only the temperature may vary within one.

    Condition columns other than the temperature and ``condition`` must be constant per
    ``by`` stratum unless ``pool``; ``lr_col`` and ``batch_col`` are exempt when
    T == lr / batch row-wise. A temperature that follows a schedule (a
    ``<temperature>_schedule``, or for T = lr/B an lr or batch-size schedule column that
    is not ``"constant"``) is refused even with ``pool``.
    """
    lr_batch = _temperature_is_lr_over_batch(df, temperature_col, lr_col, batch_col)
    schedules = [f"{temperature_col}{SCHEDULE_SUFFIX}"]
    if lr_batch:
        schedules += [f"{lr_col}{SCHEDULE_SUFFIX}", f"{batch_col}{SCHEDULE_SUFFIX}"]
    _check_constant(df, schedules, temperature_col)
    exempt = {temperature_col, "condition", *by, *schedules}
    if lr_batch:
        exempt |= {lr_col, batch_col}
    checked = condition_columns(df, exclude=exempt)
    strata = []
    for key, rows in _split(df, by):
        differing = _differing(rows, checked)
        if differing and not pool:
            where = "across the Arrhenius fit" + (
                " of " + ", ".join(f"{c}={v}" for c, v in key) if key else "")
            raise _refuse(where, differing, differing[0].split(" ")[0])
        strata.append(Stratum(key, rows, tuple(d.split(" ")[0] for d in differing)))
    return strata
