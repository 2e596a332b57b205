"""Statistics of escape times (no torch): rates, Kaplan–Meier, RMST, the Poisson check,
Arrhenius and rate regressions, strata, verdicts, arm contrasts and run summaries."""

from __future__ import annotations

from ._arrhenius import (  # noqa: F401
    ArrheniusFit,
    aggregate,
    check_theory_barrier,
    fit_arrhenius,
    temperature_from_lr_batch,
    with_temperature,
)
from ._contrast import (  # noqa: F401
    MedianRatio,
    TimeRatio,
    incidence_median_ratio,
    logrank_p,
    median_ratio,
    time_ratio,
)
from ._curves import (  # noqa: F401
    curve_bands,
)
from ._frailty import (  # noqa: F401
    FrailtyFit,
    fit_frailty_arrhenius,
)
from ._incidence import (  # noqa: F401
    CENSOR,
    DIVERGE,
    ESCAPE,
    EscapeIncidence,
    incidence_median_ci,
)
from ._per_stratum import (  # noqa: F401
    GroupSummaries,
    StratumFit,
    arrhenius_by,
    fit_each,
    strata_json,
    summaries_json,
)
from ._poisson_glm import (  # noqa: F401
    QUASI_POISSON,
    PoissonGLMFit,
    fit_poisson_glm,
    quasi_poisson_scale,
)
from ._regress import (  # noqa: F401
    RateRegression,
    Term,
    fit_regression,
    regress_strata,
)
from ._stability import (  # noqa: F401
    LEVEL,
    Trend,
    trend,
)
from ._strata import (  # noqa: F401
    CONDITION_COLUMNS,
    Stratum,
    arrhenius_strata,
    condition_columns,
    fit_strata,
)
from ._summary import (  # noqa: F401
    grokking_times,
    run_summary,
)
from ._survival import (  # noqa: F401
    KS_BOOTSTRAP,
    ExponentialRate,
    GroupSummary,
    KaplanMeierMedian,
    RestrictedMean,
    describe,
    kaplan_meier,
    poisson_check,
    poisson_rate_ci,
    restricted_mean,
    summarize,
    weibull_shape,
)
from ._verdict import (  # noqa: F401
    ABSORBING,
    ACTIVATED,
    DETERMINISTIC,
    INCONCLUSIVE,
    NOT_REACHED,
    Verdict,
    mechanism,
)

__all__ = [
    "LEVEL",
    "Trend",
    "trend",
    "ACTIVATED",
    "DETERMINISTIC",
    "ABSORBING",
    "NOT_REACHED",
    "INCONCLUSIVE",
    "Verdict",
    "mechanism",
    "KS_BOOTSTRAP",
    "poisson_rate_ci",
    "ExponentialRate",
    "kaplan_meier",
    "restricted_mean",
    "KaplanMeierMedian",
    "RestrictedMean",
    "poisson_check",
    "weibull_shape",
    "GroupSummary",
    "describe",
    "summarize",
    "FrailtyFit",
    "fit_frailty_arrhenius",
    "QUASI_POISSON",
    "quasi_poisson_scale",
    "PoissonGLMFit",
    "fit_poisson_glm",
    "StratumFit",
    "fit_each",
    "strata_json",
    "GroupSummaries",
    "summaries_json",
    "arrhenius_by",
    "ArrheniusFit",
    "check_theory_barrier",
    "aggregate",
    "fit_arrhenius",
    "temperature_from_lr_batch",
    "with_temperature",
    "CENSOR",
    "ESCAPE",
    "DIVERGE",
    "EscapeIncidence",
    "incidence_median_ci",
    "MedianRatio",
    "median_ratio",
    "incidence_median_ratio",
    "TimeRatio",
    "time_ratio",
    "logrank_p",
    "curve_bands",
    "RateRegression",
    "Term",
    "fit_regression",
    "regress_strata",
    "CONDITION_COLUMNS",
    "Stratum",
    "condition_columns",
    "fit_strata",
    "arrhenius_strata",
    "grokking_times",
    "run_summary",
]
