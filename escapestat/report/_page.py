"""The report: one self-contained HTML page (and a Markdown twin) for a run, a search or a table.

``build_report(path)`` reads what ``path`` holds — a run directory (``run.json``,
``replicas.csv``, optional ``curves.csv``), an optimisation output folder (``optuna.db``,
``trials.csv``, ``compare.json``) or a plain escape table (CSV/Parquet) — and returns a
``Report``: sections of text, tables and matplotlib figures. Every number comes from the
library (``run_summary``, ``summarize``, ``fit_arrhenius``); this module only lays it out.
``write_report`` writes the HTML (figures as base64 PNG data URIs, CSS inline, nothing
fetched from elsewhere) and ``NAME.md`` with the PNGs in ``NAME_files/`` beside it."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from escapestat import vocab
from escapestat.errors import EscapestatError
from escapestat.report._document import Report
from escapestat.report._run_page import _run_report, _table_report
from escapestat.report._search_page import _search_report, _sweep_report
from escapestat.stats._survival import KS_BOOTSTRAP
from escapestat.table import _records as records
from escapestat.vocab import COMPARE_JSON, OPTUNA_DB


# ---------------------------------------------------------------- what a path holds
def kind_of(path: Path) -> str:
    """``run``, ``search`` or ``table``; one clear error for anything else."""
    if not path.exists():
        raise EscapestatError(f"{path}: no such file or directory")
    if path.is_file() or _parts_table(path):
        return "table"
    if (path / OPTUNA_DB).is_file() or (path / COMPARE_JSON).is_file():
        return "search"
    if (path / vocab.RUN_JSON).is_file() or (path / vocab.REPLICAS).is_file():
        return "run"
    if (path / vocab.SWEEP_JSON).is_file():
        return "sweep"
    raise EscapestatError(
        f"{path}: not a run directory (no {vocab.RUN_JSON}), an optimisation output folder "
        f"(no {OPTUNA_DB} or {COMPARE_JSON}), a sweep folder (no {vocab.SWEEP_JSON}) or an "
        "escape table")


def _parts_table(path: Path) -> bool:
    """A folder of parquet parts (``escapes.parquet/part-*.parquet``) is one table."""
    return path.is_dir() and path.suffix.lower() in (".parquet", ".pq")


def default_out(path: str | os.PathLike) -> Path:
    """PATH/report.html for a run or search folder, TABLE-report.html beside a table."""
    path = Path(path)
    if path.is_dir() and not _parts_table(path):
        return path / "report.html"
    return path.with_name(f"{path.stem}-report.html")


def build_report(path: str | os.PathLike, n_bootstrap: int = KS_BOOTSTRAP, seed: int = 0,
                 theory_barrier: float | None = None) -> Report:
    """Read ``path`` (run directory, optimisation folder or escape table) into a Report."""
    path = Path(path)
    kind = kind_of(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning, lifelines' notes
        if kind == "run":
            return _run_report(path, n_bootstrap, seed, theory_barrier)
        if kind == "search":
            return _search_report(path)
        if kind == "sweep":
            return _sweep_report(path)
        return _table_report(path, n_bootstrap, seed, theory_barrier)


def write_report(path: str | os.PathLike, out: str | os.PathLike | None = None,
                 n_bootstrap: int = KS_BOOTSTRAP, seed: int = 0,
                 theory_barrier: float | None = None) -> tuple[Path, Path]:
    """Build the report of ``path`` and write ``out`` (HTML) and its Markdown twin;
    ``theory_barrier``: the barrier to draw and compare with (else the run's own)."""
    out = Path(out) if out is not None else default_out(path)
    if out.is_dir():
        raise EscapestatError(f"{out}: is a directory; give a file name for the report")
    if out.suffix.lower() not in (".html", ".htm"):
        raise EscapestatError(f"{out}: the report is HTML; give a name ending in .html")
    report = build_report(path, n_bootstrap, seed, theory_barrier)
    md, files = out.with_suffix(".md"), out.with_name(f"{out.stem}_files")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if files.exists():
            shutil.rmtree(files)
        files.mkdir()
        for fig in report.figures:
            (files / f"{fig.name}.png").write_bytes(fig.png)
        records.atomic_write(md, lambda tmp: Path(tmp).write_text(
            report.markdown(files.name), encoding="utf-8"))
        records.atomic_write(out, lambda tmp: Path(tmp).write_text(report.html(),
                                                                    encoding="utf-8"))
    except OSError as exc:
        raise EscapestatError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    return out, md


