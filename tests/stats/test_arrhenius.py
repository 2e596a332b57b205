import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from escapestat.errors import EscapestatError
from escapestat.stats._arrhenius import (
    QUASI_POISSON,
    aggregate,
    check_theory_barrier,
    fit_arrhenius,
    quasi_poisson_scale,
    temperature_from_lr_batch,
    with_temperature,
)
from escapestat.stats._synthetic import arrhenius_table
from escapestat.table._records import Columns

COLS = Columns(temperature="temperature")


def test_barrier_recovered_with_censoring_and_zero_event_temperature():
    temps = [0.03 / 3, 0.03 / 4, 0.03 / 5, 0.03 / 6, 0.03 / 8, 0.03 / 14]
    df = arrhenius_table(0.03, -np.log(120), temps, 256, 4e4, seed=2)
    assert aggregate(df, COLS)["events"].iloc[0] == 0  # coldest: no escapes, still used
    fit = fit_arrhenius(df, COLS)
    lo, hi = fit.barrier_ci
    assert lo < 0.03 < hi
    se = (hi - lo) / (2 * 1.96)
    assert abs(fit.barrier - 0.03) < 3 * se and se < 0.05 * 0.03  # unbiased and precise
    assert fit.log_prefactor == pytest.approx(-np.log(120), abs=0.3)
    assert fit.weibull_aft.barrier == pytest.approx(0.03, rel=0.08)
    assert fit.weibull_aft.shape == pytest.approx(1.0, abs=0.1)
    assert fit.rate(0.01) == pytest.approx(np.exp(fit.log_prefactor - fit.barrier / 0.01))


def test_glm_equals_censored_exponential_mle():
    """The GLM maximises Σ_j [D_j log k_j − k_j E_j]; check the score is zero at the fit."""
    df = arrhenius_table(0.02, -np.log(50), [0.004, 0.005, 0.007], 64, 2e4, seed=4)
    fit = fit_arrhenius(df, COLS, crosscheck=False)
    agg = aggregate(df, COLS)
    k = fit.rate(agg["temperature"].to_numpy())
    resid = agg["events"].to_numpy() - k * agg["exposure"].to_numpy()
    assert abs(resid.sum()) < 1e-6 * agg["events"].sum()
    inv_t = 1 / agg["temperature"].to_numpy()
    assert abs((resid * inv_t).sum()) < 1e-6 * (agg["events"].to_numpy() * inv_t).sum()


def test_overdispersion_switches_to_quasi_poisson():
    rng = np.random.default_rng(0)
    frames = []
    for t in [0.005, 0.006, 0.007, 0.008, 0.01]:
        rate = np.exp(-np.log(100) - 0.03 / t) * rng.choice([0.3, 3.0])  # extra scatter
        frames.append(pd.DataFrame({"duration": rng.exponential(1 / rate, 200), "event": 1,
                                    "temperature": t}))
    fit = fit_arrhenius(pd.concat(frames), COLS)
    assert fit.dispersion > 1 and fit.method == QUASI_POISSON
    assert fit.scale == fit.dispersion and fit.quantile_df == 3  # R's quasipoisson


@pytest.mark.parametrize(
    "temps, message",
    [([0.01], "at least two temperatures"), ([0.0001, 0.00011], "no escapes at any"),
     ([0.0001, 0.02], "only one temperature")],
)
def test_unidentified_fits_are_clear_errors(temps, message):
    df = arrhenius_table(0.03, -np.log(120), temps, 32, 1e3, seed=1)
    with pytest.raises(EscapestatError, match=message):
        fit_arrhenius(df, COLS)


def test_temperature_from_lr_batch():
    df = pd.DataFrame({"lr": [0.08, 0.01], "batch_size": [64, 16]})
    temps = temperature_from_lr_batch(df, "lr", "batch_size")
    np.testing.assert_allclose(temps, [0.00125, 6.25e-4])


def test_lr_over_batch_float_noise_is_one_temperature():
    """0.3/48 and 0.1/16 differ in the last bit; they are one T, not two groups."""
    assert 0.3 / 48 != 0.1 / 16  # the premise
    df = pd.DataFrame({"lr": [0.3, 0.1, 0.2], "batch_size": [48, 16, 16]})
    temps = temperature_from_lr_batch(df, "lr", "batch_size")
    assert temps.nunique() == 2 and temps.iloc[0] == temps.iloc[1] == 0.00625


def test_aggregate_groups_after_rounding():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"duration": rng.exponential(100, 6), "event": 1,
                       "temperature": [0.3 / 48, 0.1 / 16, 0.3 / 48, 0.2, 0.2, 0.2]})
    agg = aggregate(df, COLS)
    assert agg["temperature"].tolist() == [0.00625, 0.2] and agg["n"].tolist() == [3, 3]
    # so the fit has 2 temperatures (df 0, plain Poisson), not 3
    df.loc[[0, 1], "event"] = [1, 1]
    fit = fit_arrhenius(df, COLS, crosscheck=False)
    assert len(fit.temperatures) == 2 and fit.dispersion is None and fit.method == "poisson"


def test_with_temperature_adds_rounded_t_and_says_so():
    df = pd.DataFrame({"duration": [1.0, 2.0], "event": [1, 1], "lr": [0.3, 0.1],
                       "batch_size": [48, 16]})
    out, note = with_temperature(df, "temperature")
    assert out["temperature"].nunique() == 1 and "lr / batch_size" in note
    assert "temperature" not in df.columns  # the caller's table is left as it was
    same, none = with_temperature(out, "temperature")
    assert same is out and none is None


def _three_temperature_table(middle_exposure: float) -> pd.DataFrame:
    """Events and exposures per temperature (one row per escape); Pearson χ² is smooth in E."""
    temps, events = [1 / 5, 1 / 4, 1 / 3], [50, 120, 300]
    exposures = [d / math.exp(-1 / t) for d, t in zip(events, temps, strict=True)]
    exposures[1] = middle_exposure
    return pd.concat(
        pd.DataFrame({"duration": e / d, "event": np.ones(d, int), "temperature": t})
        for t, d, e in zip(temps, events, exposures, strict=True)
    )


def test_barrier_ci_is_continuous_across_dispersion_one():
    """The old z→t switch made the width jump 6.5× between φ̂ = 0.998 and 1.010 (df 1)."""
    base = 120 / math.exp(-4)

    def dispersion(e: float) -> float:
        return fit_arrhenius(_three_temperature_table(e), COLS, crosscheck=False).dispersion

    widths = {}
    for target in (0.998, 1.010):
        e = optimize.brentq(lambda x, target=target: dispersion(x) - target, base, 3 * base,
                            xtol=1e-9 * base)
        fit = fit_arrhenius(_three_temperature_table(e), COLS, crosscheck=False)
        assert fit.dispersion == pytest.approx(target, abs=1e-6)
        widths[target] = fit.barrier_ci[1] - fit.barrier_ci[0]
    assert widths[1.010] / widths[0.998] == pytest.approx(1.0, abs=0.03)


def test_quasi_poisson_scale_rule():
    # no residual df: plain Poisson, normal quantile
    assert quasi_poisson_scale(0.0, 0) == (1.0, pytest.approx(stats.norm.ppf(0.975)), math.inf)
    # φ̂ = χ²/df, t on df: the dispersion is not shrunk towards 1 (that cost coverage)
    scale, q, nu = quasi_poisson_scale(6.0, 2)
    assert scale == pytest.approx(3.0) and nu == 2
    assert q == pytest.approx(stats.t.ppf(0.975, 2))
    assert quasi_poisson_scale(0.5, 2)[0] == pytest.approx(0.25)  # below 1 too, as in R
    # continuous and monotone in the Pearson χ²
    grid = np.linspace(0.01, 10, 1000)  # χ² steps of 0.01 from 0.01: no step moves ≥ 1%
    widths = np.array([q * math.sqrt(s)
                       for s, q, _ in (quasi_poisson_scale(c, 3) for c in grid[100:])])
    assert np.all(np.diff(widths) > 0) and np.max(widths[1:] / widths[:-1]) < 1.01


def test_log_rate_band_uses_the_parameter_quantile():
    df = arrhenius_table(0.03, -np.log(120), [0.006, 0.0075, 0.01, 0.015], 64, 4e4, seed=7)
    fit = fit_arrhenius(df, COLS, crosscheck=False)
    cov = np.asarray(fit.covariance)
    assert fit.dispersion is not None and fit.quantile > stats.norm.ppf(0.975)
    assert (fit.barrier_ci[1] - fit.barrier) / math.sqrt(cov[1, 1]) == pytest.approx(fit.quantile)
    t = np.array([0.007, 0.012])
    lo, hi = fit.log_rate_band(t)
    x = np.column_stack([np.ones(2), -1 / t])
    se = np.sqrt(np.einsum("ij,jk,ik->i", x, cov, x))
    np.testing.assert_allclose((hi - lo) / 2, fit.quantile * se)
    np.testing.assert_allclose((hi + lo) / 2, np.log(fit.rate(t)))


def test_versus_theory_and_bad_theory_barrier():
    df = arrhenius_table(0.03, -np.log(120), [0.006, 0.0075, 0.01], 64, 4e4, seed=7)
    fit = fit_arrhenius(df, COLS, crosscheck=False)
    ratio = fit.versus_theory(0.03)
    assert ratio["barrier_ratio"] == pytest.approx(fit.barrier / 0.03)
    assert ratio["barrier_ratio_ci"] == pytest.approx(tuple(v / 0.03 for v in fit.barrier_ci))
    assert fit.tau0 == pytest.approx(math.exp(-fit.log_prefactor))
    check_theory_barrier(None)
    for bad in (0.0, -0.01, math.nan, math.inf):
        with pytest.raises(EscapestatError, match="theory barrier must be a finite number > 0"):
            check_theory_barrier(bad)
        with pytest.raises(EscapestatError):
            fit.versus_theory(bad)


@pytest.mark.parametrize("duration, message", [(1e308, "not a finite"), (1e-320, "not a finite")])
def test_estimator_entry_refuses_infinite_exposure_or_rate(duration, message):
    """Library users who skip records.validate still get a clear error, not inf/NaN."""
    df = pd.DataFrame({"duration": [duration] * 4, "event": 1,
                       "temperature": [0.1, 0.1, 0.2, 0.2]})
    with pytest.raises(EscapestatError, match=message) as info:
        fit_arrhenius(df, COLS, crosscheck=False)
    assert "'duration'" in str(info.value)


def test_a_rate_that_falls_with_temperature_is_a_finding_not_a_barrier(cli, tmp_path):
    """Escape slower with more noise (as grokking showed): reported as a direction."""
    import json

    # k = k₀·e^{+0.02/T}: τ 200 at T = 0.01 rising to ≈ 900 at T = 0.04 (a "barrier" of −0.02)
    df = arrhenius_table(-0.02, -math.log(200) - 2.0, [0.01, 0.0141, 0.02, 0.0283, 0.04], 100,
                         3000.0, seed=0)
    path = tmp_path / "slower.csv"
    df.to_csv(path, index=False)
    code, out, err = cli("arrhenius", path)
    assert code == 0, err
    assert "slower with more noise" in out and "no barrier" in out and "barrier ΔE" not in out
    code, out, err = cli("arrhenius", path, "--json")
    assert json.loads(out)["direction"] == "slower with more noise"
