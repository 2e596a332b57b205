"""One loop that fits every stratum of a table: `arrhenius` and `regress` on the command
line, a run's summary and the report all fit through it, so a stratum's error reads the
same everywhere and a per-stratum ``--json`` has one shape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import pandas as pd

from escapestat.errors import EscapestatError
from escapestat.stats._arrhenius import ArrheniusFit, fit_arrhenius
from escapestat.stats._strata import Stratum, arrhenius_strata
from escapestat.stats._survival import GroupSummary
from escapestat.table._records import Columns


class _Fitted(Protocol):
    def as_dict(self) -> dict: ...


F = TypeVar("F", bound=_Fitted)


@dataclass(frozen=True)
class StratumFit(Generic[F]):
    """A stratum with its fit, or with the one line that says why it has none."""

    stratum: Stratum
    fit: F | None = None
    error: str | None = None

    @property
    def fitted(self) -> F:
        """The fit; a stratum without one raises its error here."""
        if self.fit is None:
            raise EscapestatError(self.error or "not fitted")
        return self.fit

    def to_dict(self, **extra: Any) -> dict:
        """The fit's JSON object (its ``as_dict()``), then ``extra``, then what was pooled."""
        payload = {**self.fitted.as_dict(), **extra}
        if self.stratum.pooled:
            payload["pooled"] = list(self.stratum.pooled)
        return payload


def fit_each(strata: Iterable[Stratum], fit: Callable[[pd.DataFrame], F],
             keep_errors: bool = False) -> list[StratumFit[F]]:
    """``fit(rows)`` for every stratum. An error names its stratum (``beta=0.3: …``) and
    is raised, or with ``keep_errors`` kept on that stratum while the others are fitted."""
    out: list[StratumFit[F]] = []
    for s in strata:
        try:
            out.append(StratumFit(s, fit(s.rows)))
        except EscapestatError as exc:
            if not keep_errors:
                raise EscapestatError(f"{s.label}: {exc}" if s.key else str(exc)) from None
            out.append(StratumFit(s, None, str(exc)))
    return out


def strata_json(results: Sequence[StratumFit], by: bool,
                extra: Callable[[StratumFit], dict] = lambda r: {}) -> dict:
    """The ``--json`` of a per-stratum fit: ``{"strata": [{"stratum": {COL: VALUE}, …}]}``
    with ``--by``, else the one stratum's object."""
    if by:
        return {"strata": [{"stratum": r.stratum.as_dict(), **r.to_dict(**extra(r))}
                           for r in results]}
    return results[0].to_dict(**extra(results[0]))


@dataclass(frozen=True)
class GroupSummaries:
    """``fit``'s result for one stratum: a ``GroupSummary`` per value of the group column."""

    groups: tuple[GroupSummary, ...]

    def as_dict(self) -> dict:
        return {"groups": [g.as_dict() for g in self.groups]}


def summaries_json(results: Sequence[StratumFit[GroupSummaries]], by: bool) -> dict:
    """``fit --json``: with ``--by`` each stratum with what it pooled (always listed) and
    its groups, else the one stratum's object."""
    if by:
        return {"strata": [{"stratum": r.stratum.as_dict(), "pooled": list(r.stratum.pooled),
                            **r.fitted.as_dict()} for r in results]}
    return results[0].to_dict()


def arrhenius_by(rows: pd.DataFrame, by: Sequence[str], grid: float | None = None
                 ) -> list[StratumFit[ArrheniusFit]]:
    """An Arrhenius fit per value of the ``by`` columns of a run's table (no cross-check);
    a stratum that cannot be fitted, or that mixes conditions, keeps its error."""
    parts = rows.groupby(list(by), sort=True) if by else [((), rows)]
    out: list[StratumFit[ArrheniusFit]] = []
    for key, part in parts:
        values = key if isinstance(key, tuple) else (key,)
        stratum = Stratum(tuple(zip(by, values, strict=True)), part)
        try:
            (checked,) = arrhenius_strata(part)
            fit = fit_arrhenius(checked.rows, Columns(temperature="temperature"),
                                crosscheck=False, grid=grid)
        except EscapestatError as exc:
            out.append(StratumFit(stratum, None, str(exc)))
        else:
            out.append(StratumFit(stratum, fit))
    return out
