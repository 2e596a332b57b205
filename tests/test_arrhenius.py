import numpy as np
import pandas as pd
import pytest

from escapestat.arrhenius import aggregate, fit_arrhenius, temperature_from_lr_batch
from escapestat.errors import EscapestatError
from escapestat.records import Columns
from escapestat.synthetic import arrhenius_table

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
    assert fit.weibull_aft["barrier"] == pytest.approx(0.03, rel=0.08)
    assert fit.weibull_aft["shape"] == pytest.approx(1.0, abs=0.1)
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
    assert fit.dispersion > 1 and fit.method == "quasi-poisson"


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
