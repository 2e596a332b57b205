"""Scaling-law regression of the escape rate (``escapestat regress``).

Ground truth in every simulation here: the mean escape time is

    τ = C · lr^(−1) · wd^(−0.5),   i.e. the rate k = lr · wd^0.5 / C,

so the *τ exponents* are (−1, −0.5) and the *rate coefficients* of log(lr), log(wd) are
(+1, +0.5). Escape times are exponential, censored at a step budget (~20% censored).
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from escapestat.errors import EscapestatError
from escapestat.stats._arrhenius import fit_arrhenius, quasi_poisson_scale
from escapestat.stats._regress import RateRegression, fit_regression, regress_strata
from escapestat.stats._synthetic import arrhenius_table
from escapestat.table._records import Columns

TAU_EXPONENTS = {"log(lr)": -1.0, "log(weight_decay)": -0.5}  # τ ∝ lr^-1 · wd^-0.5
C = 2000.0
BUDGET = 3000.0
FORMULA = "log(lr) + log(weight_decay)"


def simulate(rng, n=32, lrs=(0.5, 1, 2, 4), wds=(0.25, 1, 4), budget=BUDGET):
    """n replicas per (lr, wd) cell with τ = C / (lr · wd^0.5), censored at ``budget``."""
    lr, wd = np.meshgrid(lrs, wds)
    lr, wd = np.repeat(lr.ravel(), n), np.repeat(wd.ravel(), n)
    tau = C * lr**-1.0 * wd**-0.5
    t = rng.exponential(tau)
    return pd.DataFrame({"duration": np.minimum(t, budget), "event": (t <= budget).astype(int),
                         "lr": lr, "weight_decay": wd, "batch_size": 64})


@pytest.fixture(scope="module")
def grid():
    return simulate(np.random.default_rng(5))


@pytest.fixture(scope="module")
def fitted(grid):
    return fit_regression(grid, FORMULA)


def test_tau_exponents_recovered_and_negated(grid, fitted):
    assert 0.1 < 1 - grid["event"].mean() < 0.3  # about 20% censored at the budget
    assert [t.term for t in fitted.terms_] == list(TAU_EXPONENTS)
    for t in fitted.terms_:
        truth = TAU_EXPONENTS[t.term]
        lo, hi = t.tau_exponent_ci
        assert lo < truth < hi, (t.term, t.tau_exponent_ci)
        assert t.rate_coef == pytest.approx(-t.tau_exponent)  # τ exponent = −rate coefficient
        assert t.rate_coef_ci == pytest.approx((-hi, -lo))
        assert t.tau_exponent < 0 and t.p < 1e-4
    # The intercept is log k at lr = wd = 1, i.e. log τ there is log C.
    lo, hi = fitted.intercept_["log_tau_ci"]
    assert lo < math.log(C) < hi


def test_glm_is_the_censored_exponential_mle(grid, fitted):
    """Score equations of Σ_c [D_c log μ_c − μ_c], μ_c = E_c·exp(xᵀβ): zero at the fit."""
    cells = fitted.cells_
    b0 = fitted.intercept_["rate_coef"]
    b = [t.rate_coef for t in fitted.terms_]
    x = np.column_stack([np.log(cells["lr"]), np.log(cells["weight_decay"])])
    mu = cells["exposure"].to_numpy() * np.exp(b0 + x @ b)
    resid = cells["events"].to_numpy() - mu
    assert abs(resid.sum()) < 1e-6 * cells["events"].sum()
    for j in range(2):
        assert abs((resid * x[:, j]).sum()) < 1e-6 * cells["events"].sum()
    assert fitted.n_cells_ == 12 and fitted.n_rows_ == len(grid)
    assert cells["n"].sum() == len(grid) and cells["events"].sum() == grid["event"].sum()


def test_quasi_poisson_scale_over_cells_as_in_arrhenius(grid, fitted):
    cells = fitted.cells_
    b0 = fitted.intercept_["rate_coef"]
    b = np.array([t.rate_coef for t in fitted.terms_])
    mu = cells["exposure"] * np.exp(b0 + np.log(cells["lr"]) * b[0]
                                    + np.log(cells["weight_decay"]) * b[1])
    chi2 = float((((cells["events"] - mu) ** 2) / mu).sum())
    scale, q, nu = quasi_poisson_scale(chi2, 12 - 3)
    assert fitted.dispersion_ == pytest.approx(chi2 / 9)
    assert (fitted.scale_, fitted.quantile_, fitted.quantile_df_) == pytest.approx((scale, q, nu))
    assert fitted.method_ == "quasi-poisson"


def test_same_numbers_as_arrhenius_for_minus_one_over_t():
    df = arrhenius_table(0.03, -np.log(120), [0.03 / 3, 0.03 / 4, 0.03 / 6], 96, 4e4, seed=3)
    arr = fit_arrhenius(df, Columns(temperature="temperature"), crosscheck=False)
    reg = fit_regression(df, "I(-1 / temperature)", crosscheck=False)
    (term,) = reg.terms_
    assert term.rate_coef == pytest.approx(arr.barrier, rel=1e-6)
    assert term.rate_coef_ci == pytest.approx(arr.barrier_ci, rel=1e-6)
    assert reg.intercept_["rate_coef"] == pytest.approx(arr.log_prefactor, rel=1e-6)


def test_weibull_aft_crosscheck_agrees(fitted):
    aft = fitted.aft_
    lo, hi = aft.shape_ci
    assert lo < 1 < hi  # exponential escape
    for glm, a in zip(fitted.terms_, aft.terms, strict=True):
        assert a.term == glm.term and aft.term(glm.term) == a
        assert a.tau_exponent == pytest.approx(glm.tau_exponent, abs=0.1)
        alo, ahi = a.tau_exponent_ci
        assert alo < TAU_EXPONENTS[glm.term] < ahi


def test_exponent_ci_coverage():
    """95% CIs over 200 simulated censored datasets cover the true τ exponents 90–99%."""
    rng = np.random.default_rng(20240611)
    hits = dict.fromkeys(TAU_EXPONENTS, 0)
    reps = 200
    for _ in range(reps):
        fit = RateRegression(crosscheck=False).fit(simulate(rng), FORMULA)
        for t in fit.terms_:
            lo, hi = t.tau_exponent_ci
            hits[t.term] += lo < TAU_EXPONENTS[t.term] < hi
    for term, hit in hits.items():
        assert 0.90 <= hit / reps <= 0.99, (term, hit / reps)


def test_overdispersed_cells_widen_the_intervals():
    rng = np.random.default_rng(1)
    df = simulate(rng, n=64)
    plain = fit_regression(df, FORMULA, crosscheck=False)
    # A hidden factor per cell (×3 or ×1/3 on τ) the formula does not see.
    factor = np.repeat(rng.choice([1 / 3, 3.0], 12), 64)
    t = rng.exponential(C * df["lr"] ** -1.0 * df["weight_decay"] ** -0.5 * factor)
    noisy = df.assign(duration=np.minimum(t, 1e5), event=(t <= 1e5).astype(int))
    fit = fit_regression(noisy, FORMULA, crosscheck=False)
    assert fit.dispersion_ > 3 and fit.scale_ > 3
    width = np.diff(fit.terms_[0].tau_exponent_ci)[0]
    assert width > 1.5 * np.diff(plain.terms_[0].tau_exponent_ci)[0]


@pytest.mark.parametrize(
    ("formula", "table", "message"),
    [
        ("log(lr) + log(weight_decy)", None, "no column 'weight_decy' (did you mean "
                                             "'weight_decay'?)"),
        ("log(lr) +", None, "syntax error"),
        ("duration ~ log(lr)", None, "only the right-hand side"),
        ("log(lr) + log(batch_size)", None, "term 'log(batch_size)' takes a single value"),
        ("log(lr)", lambda d: d.assign(lr=d["lr"] - 0.5), "must be a finite number > 0"),
        ("log(lr)", lambda d: d.assign(lr=d["lr"].astype(str).where(d.index > 3, "fast")),
         "is under log() but is not numeric at rows 1, 2, 3, 4"),
        ("log(lr)", lambda d: d.assign(event=0), "no escapes"),
        ("log(lr)", lambda d: d.assign(event=(d["lr"] == 4).astype(int)),
         "escapes only where term 'log(lr)'"),
        ("log(lr) + I(2 * log(lr))", None, "collinear"),
        ("0", None, "has no terms"),
        ("log(duration)", None, "reads 'duration', the escape data itself"),
    ],
)
def test_clear_one_line_errors(grid, formula, table, message):
    df = grid if table is None else table(grid)
    with pytest.raises(EscapestatError) as info:
        fit_regression(df, formula, crosscheck=False)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_strata_refuse_silent_pooling(grid):
    with pytest.raises(EscapestatError, match="weight_decay .*--by weight_decay.*--pool"):
        regress_strata(grid, "log(lr)")
    strata = regress_strata(grid, "log(lr)", by=["weight_decay"])
    assert [s.key for s in strata] == [(("weight_decay", v),) for v in (0.25, 1, 4)]
    (pooled,) = regress_strata(grid, "log(lr)", pool=True)
    assert pooled.pooled == ("weight_decay",)
    with pytest.raises(EscapestatError, match="both in --by and in the formula"):
        regress_strata(grid, FORMULA, by=["lr"])


@pytest.fixture
def grid_csv(grid, tmp_path):
    path = tmp_path / "grid.csv"
    grid.to_csv(path, index=False)
    return path


def test_cli_json(cli, grid_csv):
    code, out, err = cli("regress", grid_csv, FORMULA, "--json")
    assert code == 0, err
    payload = json.loads(out)  # one JSON object and nothing else on stdout
    assert set(payload) == {"formula", "terms", "intercept", "dispersion", "scale",
                            "quantile_df", "method", "n_rows", "n_cells", "events", "aft"}
    assert set(payload["terms"][0]) == {"term", "tau_exponent", "tau_exponent_ci",
                                        "rate_coef", "rate_coef_ci", "p"}
    assert set(payload["aft"]) == {"terms", "shape", "shape_ci"}
    assert payload["terms"][0]["tau_exponent"] < 0 < payload["terms"][0]["rate_coef"]


def test_cli_table_fits_80_columns_and_says_negated(cli, grid_csv):
    code, out, _ = cli("regress", grid_csv, FORMULA)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "log(weight_decay)" in out and "Weibull AFT" in out
    assert "τ exponent = − rate coefficient" in out


def test_cli_by_and_errors(cli, grid_csv):
    code, out, _ = cli("regress", grid_csv, "log(lr)", "--by", "weight_decay", "--json")
    assert code == 0
    strata = json.loads(out)["strata"]
    assert [s["stratum"] for s in strata] == [{"weight_decay": v} for v in (0.25, 1, 4)]
    code, out, err = cli("regress", grid_csv, "log(lr) + log(weight_decy)")
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error:") and "did you mean 'weight_decay'" in line
    code, out, _ = cli("regress", "--help")
    assert code == 0 and "Example: escapestat regress" in out


def test_a_failed_aft_note_is_a_whole_sentence():
    from escapestat.stats._aft import first_sentence as _first_sentence

    lifelines_like = ValueError(
        "Convergence halted due to matrix inversion problems. Suspicion is high collinearity."
        " Please see the following tips in the lifelines documentation: https://lifelines."
        "readthedocs.io/en/latest/Examples.html#problems-with-convergence\nMatrix is singular.")
    assert _first_sentence(lifelines_like) == ("Convergence halted due to matrix inversion "
                                               "problems.")
    long = _first_sentence(ValueError("word " * 100))
    assert long.endswith("word …") and len(long) <= 162
