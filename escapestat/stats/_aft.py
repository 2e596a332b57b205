"""The Weibull-AFT cross-check's fit, on distinct rows with their counts as weights.

Why: ``arrhenius`` and ``regress`` set a lifelines ``WeibullAFTFitter`` beside their
Poisson fits. On the engine's tables durations sit on the check grid, so a million
replica rows hold a few thousand distinct (duration, event, covariates) rows; the
likelihood of the rows is that of the distinct rows weighted by their counts (integer
frequency weights, so lifelines' standard errors stay the model-based ones), at a
fraction of the memory (802 MB peak for 10⁶ rows before). Tables whose distinct rows
exceed ``MAX_ROWS`` skip the cross-check with a note rather than fill the memory.
"""

from __future__ import annotations

import warnings

import pandas as pd

#: Distinct rows above which the cross-check is skipped (its memory grows with them).
MAX_ROWS = 200_000

_WEIGHT = "__rows"


def fit_weibull_aft(data: pd.DataFrame, level: float):
    """lifelines' WeibullAFTFitter on ``data`` (columns ``duration``, ``event`` and the
    covariates), fitted once per distinct row with its count as the weight. Raises
    ``ValueError`` when there are more than ``MAX_ROWS`` distinct rows; lifelines' own
    exceptions when the fit fails."""
    from lifelines import WeibullAFTFitter

    grouped = data.groupby(list(data.columns), sort=True).size().rename(_WEIGHT).reset_index()
    if len(grouped) > MAX_ROWS:
        raise ValueError(f"skipped: {len(grouped):,} distinct rows, more than {MAX_ROWS:,}")
    grouped[_WEIGHT] = grouped[_WEIGHT].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WeibullAFTFitter(alpha=1 - level).fit(grouped, "duration", "event",
                                                     weights_col=_WEIGHT)


def first_sentence(exc: Exception, limit: int = 160) -> str:
    """An exception's first sentence (lifelines' messages go on with numbered tips), whole
    words up to ``limit`` characters, closed by a full stop or an ellipsis."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    sentence = line.split(". ")[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " …"
    return sentence if sentence.endswith("…") else sentence + "."
