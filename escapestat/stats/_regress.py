r"""Scaling laws of the escape rate: a censored log-linear model on condition columns.

Per replica i, escape is exponential with rate k_i and the censored likelihood is that of
D_i ~ Poisson(μ_i) with

.. math:: \log \mu_i = \log t_i + x_i^\top \beta ,

t_i the replica's duration (exposure, censored or not) and x_i its row of a patsy
design, e.g. ``log(lr) + log(weight_decay)``. Summing D and t over cells of identical
covariates leaves the likelihood unchanged, so the Poisson GLM is fitted per cell, where
the Pearson dispersion means something. A rate coefficient a on log(x) means k ∝ x^a,
so τ = 1/k ∝ x^(−a): the *τ exponent* is the negated rate coefficient. Covariance and
intervals use the quasi-Poisson scale and t quantile of the Arrhenius fit: both
are ``fit_poisson_glm``, the one censored Poisson GLM. A lifelines Weibull AFT model on the
same covariates, fitted to the replica rows, is a cross-check that does not assume a
constant hazard: its coefficients are exponents of τ directly, and they agree with the
GLM's when ρ ≈ 1.
"""

from __future__ import annotations

import ast
import builtins
import math
from dataclasses import asdict, dataclass
from typing import TypedDict

import numpy as np
import pandas as pd
from scipy import stats

from escapestat.errors import EscapestatError, did_you_mean
from escapestat.stats import _strata
from escapestat.stats._aft import first_sentence, fit_weibull_aft
from escapestat.stats._poisson_glm import fit_poisson_glm
from escapestat.stats._survival import LEVEL, poisson_rate_ci
from escapestat.table._records import TEMPERATURE, Columns, round_significant, temperatures

#: Functions a formula may call besides patsy's own (C, I, Q, center, standardize, ...).
NAMESPACE = {"log": np.log, "log2": np.log2, "log10": np.log10, "exp": np.exp,
             "sqrt": np.sqrt, "np": np}
_LOGS = {"log", "log2", "log10"}
_INTERCEPT = "Intercept"
_EVENTS, _EXPOSURE, _N = "__events__", "__exposure__", "__n__"


def _patsy():
    import patsy

    return patsy


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Formula:
    """A parsed right-hand side: its text, the table columns it reads, and those under log().

    ``parse`` refuses a two-sided formula, a syntax error, a formula with no terms and a
    name that is neither a column nor a known function (with a did-you-mean).
    """

    text: str
    columns: tuple[str, ...]
    logged: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, table_columns) -> Formula:
        patsy = _patsy()
        have = [str(c) for c in table_columns]
        if "~" in text:
            raise EscapestatError(
                f"formula {text!r}: give only the right-hand side (the response is the "
                "escape count with a log-exposure offset), e.g. 'log(lr) + log(weight_decay)'"
            )
        try:
            desc = patsy.ModelDesc.from_formula(text)
        except patsy.PatsyError as exc:
            raise EscapestatError(f"formula {text!r}: syntax error: {_one_line(exc)}") from None
        if not any(term.factors for term in desc.rhs_termlist):
            raise EscapestatError(
                f"formula {text!r} has no terms; e.g. 'log(lr) + log(batch_size)'")
        known = set(NAMESPACE) | set(getattr(patsy.builtins, "__all__", ())) | set(dir(builtins))
        used: dict[str, None] = {}
        logged: dict[str, None] = {}
        for term in desc.rhs_termlist:
            for factor in term.factors:
                code = factor.name()
                try:
                    tree = ast.parse(code, mode="eval")
                except SyntaxError as exc:
                    raise EscapestatError(f"formula {text!r}: syntax error in {code!r}: "
                                          f"{exc.msg}") from None
                for name in _names(tree):
                    if name in have:
                        used[name] = None
                    elif name not in known:
                        raise EscapestatError(
                            f"formula {text!r}: no column {name!r}{did_you_mean(name, have)} "
                            f"(columns: {', '.join(have[:12])})")
                for call in ast.walk(tree):
                    if _is_log(call):
                        logged.update(dict.fromkeys(n for n in _names(call) if n in have))
        return cls(text, tuple(used), tuple(logged))


def _names(tree: ast.AST) -> list[str]:
    """Column-like names read by an expression: bare names and Q("...") strings."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.append(node.id)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "Q" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append(node.args[0].value)
    return out


def _is_log(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name in _LOGS


def _rows(mask) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i + 1) for i in idx[:5])
    return f"row{'s' if len(idx) > 1 else ''} {shown}{' ...' if len(idx) > 5 else ''}"


def _check_columns(df: pd.DataFrame, formula: Formula) -> pd.DataFrame:
    """Missing values anywhere, and under log(): numbers > 0. Returns the table with the
    logged columns as floats."""
    out = df.copy()
    if TEMPERATURE in formula.columns:  # physics: checked as arrhenius checks it
        out[TEMPERATURE] = temperatures(df, TEMPERATURE)
    for col in formula.columns:
        missing = df[col].isna().to_numpy()
        if missing.any():
            raise EscapestatError(f"column {col!r} has missing values at {_rows(missing)}")
    for col in formula.logged:
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(values)
        if bad.any():
            raise EscapestatError(f"column {col!r} is under log() but is not numeric at "
                                  f"{_rows(bad)} (e.g. {raw[bad].iloc[0]!r})")
        bad = ~(values > 0) | ~np.isfinite(values)
        if bad.any():
            raise EscapestatError(f"column {col!r} is under log() and must be a finite number "
                                  f"> 0; got {values[bad][0]:g} at {_rows(bad)}")
        out[col] = values
    return out


def regress_strata(df: pd.DataFrame, formula: str, by=(), pool: bool = False,
                   lr_col: str = "lr", batch_col: str = "batch_size") -> list[_strata.Stratum]:
    """Strata for a regression: condition columns outside the formula must be constant.

    A condition column (``strata.CONDITION_COLUMNS``, ``*_schedule``) that the formula does
    not read and that varies within a ``by`` stratum is refused unless ``pool``: its effect
    would be folded silently into the exponents. ``condition`` (a label) is exempt, and so
    is ``temperature`` when it equals lr / batch size row-wise and the formula reads both.
    """
    parsed = Formula.parse(formula, df.columns)
    by = list(dict.fromkeys(by))
    both = [c for c in by if c in parsed.columns]
    if both:
        raise EscapestatError(f"column {both[0]!r} is both in --by and in the formula; a "
                              "stratum holds one value of it, so its exponent is not identified")
    exempt = {*parsed.columns, *by, "condition"}
    if {lr_col, batch_col} <= set(parsed.columns) and (
            _strata._temperature_is_lr_over_batch(df, TEMPERATURE, lr_col, batch_col)):
        exempt.add(TEMPERATURE)
    checked = _strata.condition_columns(df, exclude=exempt)
    out = []
    for key, rows in _strata._split(df, by):
        differing = _strata._differing(rows, checked)
        if differing and not pool:
            where = "within the table" + (
                " at " + ", ".join(f"{c}={v}" for c, v in key) if key else "")
            first = differing[0].split(" ")[0]
            raise EscapestatError(
                f"conditions outside the formula differ {where}: {'; '.join(differing)}; add "
                f"them to the formula, fit them apart with --by {first}, or pool them "
                "knowingly with --pool")
        out.append(_strata.Stratum(key, rows, tuple(d.split(" ")[0] for d in differing)))
    return out


@dataclass(frozen=True)
class Term:
    """One design column: τ exponent = −rate coefficient, both with the fit's interval."""

    term: str
    tau_exponent: float
    tau_exponent_ci: tuple[float, float]
    rate_coef: float
    rate_coef_ci: tuple[float, float]
    p: float


class Intercept(TypedDict):
    """``RateRegression.intercept_``: log k at x = 0 and log τ = −log k, with intervals."""

    rate_coef: float
    rate_coef_ci: tuple[float, float]
    log_tau: float
    log_tau_ci: tuple[float, float]


def _identify(x: pd.DataFrame, events: np.ndarray) -> None:
    """Refuse terms that take one value, escape at one value only, or are collinear."""
    for name in x.columns:
        if name == _INTERCEPT:
            continue
        values = np.unique(round_significant(x[name].to_numpy()))
        if values.size < 2:
            raise EscapestatError(f"term {name!r} takes a single value ({values[0]:.4g}) in "
                                  "every row: its exponent is not identified; drop it or "
                                  "vary it")
        hit = np.unique(round_significant(x[name].to_numpy()[events > 0]))
        if hit.size < 2:
            raise EscapestatError(
                f"escapes only where term {name!r} = {hit[0]:.4g}: its exponent is not "
                "identified (run longer so that escapes occur at two or more of its values)")
    rank = 0
    for j, name in enumerate(x.columns):
        new = np.linalg.matrix_rank(x.iloc[:, : j + 1].to_numpy())
        if new == rank:
            raise EscapestatError(f"term {name!r} is a combination of the terms before it "
                                  "(collinear): its exponent is not identified")
        rank = new


def _p_value(estimate: float, se: float, nu: float) -> float:
    z = abs(estimate / se) if se > 0 else math.inf
    dist = stats.norm if math.isinf(nu) else stats.t(nu)
    return float(2 * dist.sf(z))


@dataclass(frozen=True)
class AftTerm:
    """One term's τ exponent in the Weibull-AFT cross-check, with its Wald CI and p."""

    term: str
    tau_exponent: float
    tau_exponent_ci: tuple[float, float]
    p: float


@dataclass(frozen=True)
class AftExponents:
    """``RateRegression.aft_``: the Weibull-AFT cross-check of every exponent, and the
    Weibull shape ρ; its intervals assume no extra scatter between conditions. Without a
    fit, ``note`` says why."""

    terms: tuple[AftTerm, ...] | None
    shape: float | None
    shape_ci: tuple[float, float] | None
    note: str | None = None

    def term(self, name: str) -> AftTerm | None:
        """The cross-check of term ``name`` (None when it has none)."""
        return next((t for t in self.terms or () if t.term == name), None)

    def as_dict(self) -> dict:
        out: dict = {"terms": None if self.terms is None else [asdict(t) for t in self.terms],
                     "shape": self.shape, "shape_ci": self.shape_ci}
        if self.note is not None:
            out["note"] = self.note
        return out


def _weibull_aft(x: pd.DataFrame, durations, events, level: float) -> AftExponents:
    """Cross-check: lifelines WeibullAFTFitter, log λ = a + xᵀb on the replica rows; b are
    exponents of τ (log τ = log λ + log Γ(1 + 1/ρ)), ρ the Weibull shape."""
    names = [c for c in x.columns if c != _INTERCEPT]
    data = pd.DataFrame({f"x{j}": x[c].to_numpy(dtype=float) for j, c in enumerate(names)})
    centre, spread = data.mean(), data.std(ddof=0).replace(0, 1.0)
    data = (data - centre) / spread  # O(1) covariates for the optimiser; undone below
    data["duration"] = np.asarray(durations, dtype=float)
    data["event"] = np.asarray(events, dtype=int)
    z = float(stats.norm.ppf(0.5 + level / 2))
    try:
        aft = fit_weibull_aft(data, level)
        terms: list[AftTerm] = []
        for j, name in enumerate(names):
            b = float(aft.params_[("lambda_", f"x{j}")]) / spread.iloc[j]
            se = float(aft.standard_errors_[("lambda_", f"x{j}")]) / spread.iloc[j]
            terms.append(AftTerm(name, b, (b - z * se, b + z * se), _p_value(b, se, math.inf)))
        log_rho = float(aft.params_[("rho_", _INTERCEPT)])
        se_rho = float(aft.standard_errors_[("rho_", _INTERCEPT)])
    except Exception as exc:  # lifelines raises several types when the fit cannot converge
        return AftExponents(None, None, None, first_sentence(exc))
    return AftExponents(tuple(terms), math.exp(log_rho),
                        (math.exp(log_rho - z * se_rho), math.exp(log_rho + z * se_rho)))


class RateRegression:
    r"""Censored log-linear model of the escape rate on condition columns.

    .. math::

        D_c \sim \text{Poisson}(\mu_c), \qquad
        \log \mu_c = \log E_c + x_c^\top \beta, \qquad
        \tau \propto \textstyle\prod_j x_j^{-\beta_j} \text{ for terms } \log x_j

    with D_c escapes and E_c exposure (Σ durations, censored included) summed over the
    replicas of cell c (identical covariates): the exact censored-exponential MLE. The
    covariance is Poisson's times the Pearson dispersion φ̂ and intervals are ± t_df·SE
    (``fit_poisson_glm``, the GLM ``arrhenius`` uses too); p-values are the matching
    two-sided t tests.

    Parameters
    ----------
    level : confidence level of every interval (0.95).
    crosscheck : also fit a lifelines Weibull AFT model on the replica rows.

    Attributes
    ----------
    formula_ : the right-hand side fitted.
    terms_ : list of ``Term`` (one per design column but the intercept).
    intercept_ : log k at x = 0 with its CI, and log τ = −log k (None without one).
    dispersion_ : Pearson χ²/df over cells (None with no residual df).
    scale_, quantile_, quantile_df_ : φ̂, the t quantile and its degrees of freedom.
    method_ : ``"quasi-poisson"`` or ``"poisson"`` (no residual df).
    n_rows_, n_cells_, events_, exposure_ : replicas, cells, escapes and Σ durations.
    cells_ : per cell: the formula's columns, ``n``, ``events``, ``exposure``.
    aft_ : the Weibull AFT cross-check (``AftExponents``; None without ``crosscheck``):
        τ exponents with CIs and the shape, or a ``note`` when it did not converge.
    covariance_ : the scaled covariance of β (design-column order, intercept first).
    """

    def __init__(self, level: float = LEVEL, crosscheck: bool = True):
        self.level = level
        self.crosscheck = crosscheck

    def fit(self, df: pd.DataFrame, formula: str, columns: Columns = Columns()
            ) -> RateRegression:
        """Fit ``formula`` (right-hand side only) to a validated escape table ``df``."""

        patsy = _patsy()
        parsed = Formula.parse(formula, df.columns)
        own = [c for c in (columns.duration, columns.event) if c in parsed.columns]
        if own:
            raise EscapestatError(f"formula {formula!r} reads {own[0]!r}, the escape data "
                                  "itself; use condition columns only")
        df = _check_columns(df, parsed)
        events = df[columns.event].to_numpy(dtype=int)
        durations = df[columns.duration].to_numpy(dtype=float)
        if events.sum() == 0:
            hi = poisson_rate_ci(0, float(durations.sum()), self.level)[1]
            raise EscapestatError(f"no escapes in {len(df)} replicas: the rate is below "
                                  f"{hi:.3g} overall and no exponent can be fitted")
        env = patsy.EvalEnvironment([NAMESPACE])
        try:
            rows_x = patsy.dmatrix(formula, df, eval_env=env, NA_action="raise",
                                   return_type="dataframe")
        except patsy.PatsyError as exc:
            raise EscapestatError(f"formula {formula!r}: {_one_line(exc)}") from None
        bad = ~np.isfinite(rows_x.to_numpy()).all(axis=1)
        if bad.any():
            name = rows_x.columns[~np.isfinite(rows_x.to_numpy()).all(axis=0)][0]
            raise EscapestatError(f"term {name!r} is not a finite number at {_rows(bad)}")
        # Cells of identical covariates: D and E summed, so the Pearson dispersion has cells.
        keys = {c: round_significant(df[c]) if pd.api.types.is_numeric_dtype(df[c])
                and not pd.api.types.is_bool_dtype(df[c]) else df[c].to_numpy()
                for c in parsed.columns}
        grouped = pd.DataFrame(keys).assign(
            **{_EVENTS: events, _EXPOSURE: durations, _N: 1}).groupby(
            list(parsed.columns), sort=True, dropna=False)
        cells = grouped[[_EVENTS, _EXPOSURE, _N]].sum().reset_index()
        x = patsy.build_design_matrices([rows_x.design_info], cells, NA_action="raise",
                                        return_type="dataframe")[0]
        d = cells[_EVENTS].to_numpy(dtype=float)
        e = cells[_EXPOSURE].to_numpy(dtype=float)
        _identify(x, d)
        names = list(x.columns)
        intercept = names.index(_INTERCEPT) if _INTERCEPT in names else None
        glm = fit_poisson_glm(d, e, x.to_numpy(dtype=float), intercept, self.level)
        params, q, nu, se = glm.params, glm.quantile, glm.quantile_df, glm.se

        self.formula_ = formula
        self.terms_ = []
        self.intercept_: Intercept | None = None
        for j, name in enumerate(names):
            b, lo, hi = float(params[j]), float(params[j] - q * se[j]), float(params[j] + q * se[j])
            if j == intercept:
                self.intercept_ = {"rate_coef": b, "rate_coef_ci": (lo, hi),
                                   "log_tau": -b, "log_tau_ci": (-hi, -lo)}
                continue
            self.terms_.append(Term(name, -b, (-hi, -lo), b, (lo, hi), _p_value(b, se[j], nu)))
        self.dispersion_ = glm.dispersion
        self.scale_, self.quantile_, self.quantile_df_ = glm.scale, q, nu
        self.method_ = glm.method
        self.n_rows_, self.n_cells_ = len(df), len(cells)
        self.events_, self.exposure_ = int(events.sum()), float(durations.sum())
        self.cells_ = cells.rename(columns={_EVENTS: "events", _EXPOSURE: "exposure", _N: "n"})
        self.covariance_ = glm.covariance
        self.aft_ = (_weibull_aft(rows_x, durations, events, self.level)
                     if self.crosscheck else None)
        return self

    def as_dict(self) -> dict:
        """The ``regress --json`` object."""
        return {
            "formula": self.formula_,
            "terms": [asdict(t) for t in self.terms_],
            "intercept": self.intercept_,
            "dispersion": self.dispersion_,
            "scale": self.scale_,
            "quantile_df": self.quantile_df_,
            "method": self.method_,
            "n_rows": self.n_rows_,
            "n_cells": self.n_cells_,
            "events": self.events_,
            "aft": {} if self.aft_ is None else self.aft_.as_dict(),
        }


def fit_regression(df: pd.DataFrame, formula: str, columns: Columns = Columns(),
                   level: float = LEVEL, crosscheck: bool = True) -> RateRegression:
    """``RateRegression(level, crosscheck).fit(df, formula, columns)``."""
    return RateRegression(level, crosscheck).fit(df, formula, columns)


__all__ = ["NAMESPACE", "Formula", "RateRegression", "Term", "fit_regression",
           "regress_strata"]
