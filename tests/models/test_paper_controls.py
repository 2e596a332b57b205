"""The controls that decide a trap's mechanism: seeded amplitudes, the trapped components
against the rounding floor, the full-batch (noiseless) verdict, and the sparse curve."""

import numpy as np
import pandas as pd
import pytest
import torch

from escapestat.config._study import conditions, parse_study
from escapestat.engine._trials import run_study
from escapestat.errors import EscapestatError
from escapestat.models.deep_linear import _ensemble as ens
from escapestat.models.deep_linear import _tasks as tasks
from escapestat.models.deep_linear.model import rounding_floor, seed_mode, trapped_component
from escapestat.stats._stability import Trend
from escapestat.stats._summary import run_summary
from escapestat.stats._verdict import ABSORBING, ACTIVATED, DETERMINISTIC, NOT_REACHED, mechanism
from escapestat.theory._landscape import stationary_points


def _aligned(strengths=(1.5, 1.0), amps=(1.1, 0.0), widths=(2, 4, 4, 2), r=6):
    g = torch.Generator().manual_seed(0)
    teacher = tasks.make_teacher(strengths, widths[0], widths[-1], rotate=True, generator=g,
                                 dtype=torch.float64)
    net = ens.DeepLinearEnsemble.aligned(r, teacher, widths, amps, 0.0, dtype=torch.float64)
    return teacher, net, g


def test_seed_mode_adds_b_to_the_power_L_and_leaves_the_learned_mode():
    teacher, net, g = _aligned()
    before = tasks.mode_strengths(net.end_to_end(), teacher)
    b = torch.linspace(0.1, 0.6, 6, dtype=torch.float64)
    seed_mode(net, teacher, 1, b, g)
    after = tasks.mode_strengths(net.end_to_end(), teacher)
    torch.testing.assert_close(after[:, 1] - before[:, 1], b**3)
    torch.testing.assert_close(after[:, 0], before[:, 0])
    # Nothing leaks between the modes: the end-to-end map is exactly the two modes.
    expect = torch.einsum("ok,rk,ik->roi", teacher.u, after, teacher.v)
    torch.testing.assert_close(net.end_to_end(), expect)


def test_trapped_component_is_what_the_layers_carry_beyond_the_learned_modes():
    teacher, net, g = _aligned()
    zero = trapped_component(net, learned=1)
    assert torch.all(zero < 1e-12)  # an exact trap: nothing beyond the learned mode
    seed_mode(net, teacher, 1, torch.full((6,), 0.3, dtype=torch.float64), g)
    torch.testing.assert_close(trapped_component(net, learned=1),
                               torch.full((6,), 0.3, dtype=torch.float64))
    floor = rounding_floor(net)
    assert torch.all((floor > 1e-17) & (floor < 1e-15))  # float64 eps × ‖W‖ ~ 1
    net.weights[0][2] = float("nan")
    comp = trapped_component(net, learned=1)
    assert torch.isnan(comp[2]) and torch.isfinite(comp[[0, 1, 3, 4, 5]]).all()


SEEDED = """
name = "seeded"
[model]
depth = 3
strengths = [1.5, 1.0]
rotate = true
[data]
kind = "fixed"
n_train = 512
n_test = 64
[init]
kind = "aligned"
noise = 0.0
seed_over_saddle = [0.5, 1.6]
[dynamics]
noise = "sgd"
lr = 0.2
batch_size = [64, 512]
beta_over_beta_c = 0.6
[escape]
commit_steps = 100
check_every = 10
[run]
replicas = 12
max_steps = 4000
seed = 5
"""


def test_seeded_amplitude_escapes_iff_past_the_saddle_with_or_without_noise(tmp_path):
    """A deterministic roll-off: b₀ above the saddle escapes, below it stays, minibatch
    noise or the full-batch twin alike; the full-batch twin's verdict is deterministic."""
    study = parse_study(SEEDED)
    assert sorted({c.seed_over_saddle for c in conditions(study)}) == [0.5, 1.6]
    result = run_study(study, tmp_path / "run", device="cpu")
    df = result.replicas
    assert set(df["status"]) <= {"escaped", "censored"}
    by = df.groupby(["seed_over_saddle", "batch_size"])["event"].mean()
    assert (by.loc[0.5] == 0).all(), by
    assert (by.loc[1.6] == 1).all(), by
    times = df[df["event"] == 1].groupby("batch_size")["duration"].median()
    assert times.loc[64] == pytest.approx(times.loc[512], rel=0.2)  # noise hardly matters
    assert df.loc[df["batch_size"] == 512, "full_batch"].all()
    assert not df.loc[df["batch_size"] == 64, "full_batch"].any()
    # The seeded amplitude is where it was put: b₀³ over the learned strength.
    s = study.model.strengths[1]
    beta = conditions(study)[0].beta.value(0)
    saddle, learned = stationary_points(3, s, beta)
    q = df.groupby("seed_over_saddle")["switch_order_parameter"].median()
    assert q.loc[0.5] == pytest.approx((0.5 * saddle) ** 3 / learned**3, rel=0.1)
    rows = {(c["seed_over_saddle"], c["batch_size"]): c
            for c in run_summary(df, n_bootstrap=49,
                                 threshold=study.escape.threshold).as_dict()["conditions"]}
    assert rows[(1.6, 512)]["verdict"] == DETERMINISTIC
    assert "no noise" in rows[(1.6, 512)]["verdict_reason"]
    assert rows[(0.5, 512)]["verdict"] == ABSORBING
    # The minibatch run against its twin: it escapes alike, so noise is not what drives it.
    assert rows[(1.6, 64)]["verdict"] == DETERMINISTIC
    assert "full-batch twin" in rows[(1.6, 64)]["verdict_reason"]
    assert rows[(1.6, 64)]["twin_logrank_p"] >= 0.05
    from escapestat.report._run_page import condition_labels

    labels = condition_labels(df)  # the report tells the seeded conditions apart
    assert len(set(labels.values())) == len(labels) and "b₀/saddle = 1.6" in labels[3]


def _table(durations, events, condition, batch_size, full_batch):
    n = len(durations)
    return pd.DataFrame({
        "duration": durations, "event": events, "condition": condition,
        "status": np.where(np.asarray(events) == 1, "escaped", "censored"),
        "weight_decay": 0.2, "lr": 0.08, "batch_size": batch_size,
        "temperature": 0.08 / batch_size, "barrier_theory": 0.006, "noise": "sgd",
        "full_batch": full_batch, "weight_decay_schedule": "constant",
        "lr_schedule": "constant", "grad_filter": "none", "replica": np.arange(n)})


def test_a_twin_that_stays_trapped_leaves_the_minibatch_verdict_alone():
    """Exponential escapes under SGD, none at full batch: the noise does it — activated."""
    rng = np.random.default_rng(4)
    t = np.ceil(rng.exponential(300.0, 200) / 10) * 10
    sgd = _table(np.minimum(t, 3000), (t <= 3000).astype(int), 0, 64, False)
    twin = _table(np.full(200, 3000.0), np.zeros(200, int), 1, 512, True)
    rows = run_summary(pd.concat([sgd, twin]), n_bootstrap=99, grid=10).as_dict()["conditions"]
    assert rows[0]["twin_events"] == 0 and rows[0]["twin_logrank_p"] < 1e-6
    assert rows[0]["verdict"] == ACTIVATED
    assert rows[1]["verdict"] == NOT_REACHED  # a table without the order parameter's record
    # The same escapes in the twin too: now the delay needs no noise.
    twin = _table(np.minimum(t, 3000)[::-1], (t <= 3000).astype(int)[::-1], 1, 512, True)
    rows = run_summary(pd.concat([sgd, twin]), n_bootstrap=99, grid=10).as_dict()["conditions"]
    assert rows[0]["verdict"] == DETERMINISTIC and rows[1]["verdict"] == DETERMINISTIC


def test_noiseless_runs_are_never_called_activated():
    assert mechanism(50, 40, (0.8, 1.2), 0.6).mechanism == ACTIVATED
    v = mechanism(50, 40, (0.8, 1.2), 0.6, noiseless=True)
    assert v.mechanism == DETERMINISTIC and "no noise" in v.reason
    flat = Trend(50, 0.02, 0.0, 2000.0, 0.6, 0.5, 4000.0)
    assert mechanism(50, 0, None, None, 0.01, noiseless=True,
                     trend=flat).mechanism == ABSORBING


SPARSE = """
name = "sparse"
[model]
depth = 3
strengths = [0.9, 0.8]
d_in = 12
hidden = [6, 6]
rotate = true
[data]
kind = "fixed"
n_train = 16
n_test = 256
[init]
kind = "random"
scale = 1.0
[dynamics]
noise = "sgd"
lr = 0.1
batch_size = 16
beta = 0.0025
[escape]
order_parameter = "test_error"
threshold = 0.99
fallback = 0.9
commit_steps = 50
check_every = 10
[run]
replicas = 16
max_steps = 1500
seed = 2
"""


def test_sparse_curve_records_fit_generalisation_and_error_curves(tmp_path):
    result = run_study(parse_study(SPARSE), tmp_path / "run", device="cpu")
    df = result.replicas
    both = df.dropna(subset=["fit_time", "generalize_time"])
    assert len(both) >= 8
    # Fewer samples than inputs: the training set is fitted before the test set is.
    assert (both["generalize_time"] >= both["fit_time"]).all()
    assert both["delay"].median() > 0
    assert {"final_train_error", "final_test_error"} <= set(df.columns)
    curves = result.curves
    assert {"train_error", "test_error", "order_parameter"} <= set(curves["metric"])
    assert df["full_batch"].all()  # B = n_train: plain gradient descent
    first = curves[curves["step"] == 0].set_index("metric")["median"]
    last = curves[curves["step"] == curves["step"].max()].set_index("metric")["median"]
    assert last["train_error"] < 0.01 * first["train_error"]
    assert (tmp_path / "run" / "curves.csv").is_file()


@pytest.mark.parametrize("patch, message", [
    ("seed_over_saddle = [0.5, 1.6]", "seed_over_saddle = [-1.0]"),
    ('kind = "aligned"\nnoise = 0.0', 'kind = "random"'),
    ('kind = "aligned"', 'kind = "randomm"'),
])
def test_bad_controls_name_the_key(patch, message):
    text = SEEDED.replace(patch, message)
    with pytest.raises(EscapestatError, match=r"\[init\]"):
        parse_study(text)


def test_seed_above_the_spinodal_is_a_clear_error(tmp_path):
    text = SEEDED.replace("beta_over_beta_c = 0.6", "beta = 0.5")  # β_sp(1.0) = 0.472
    with pytest.raises(EscapestatError, match="no saddle|no learned state"):
        run_study(parse_study(text), tmp_path / "run", device="cpu")


def test_runs_without_the_controls_keep_their_tables(tmp_path):
    """Old studies gain only the switch columns and ``full_batch``; no seed column."""
    text = SEEDED.replace("seed_over_saddle = [0.5, 1.6]\n", "").replace(
        "replicas = 12", "replicas = 4").replace("max_steps = 4000", "max_steps = 50")
    df = run_study(parse_study(text), tmp_path / "run", device="cpu").replicas
    assert "seed_over_saddle" not in df.columns
    assert pd.api.types.is_float_dtype(df["switch_trapped_component"])
    assert np.isfinite(df["rounding_floor"]).all()


def test_hold_trains_generalised_replicas_on_so_curves_show_the_whole_run(tmp_path):
    text = SPARSE.replace("d_in = 12", "d_in = 4").replace("max_steps = 1500", "max_steps = 800")
    held = run_study(parse_study(text.replace("seed = 2", "seed = 2\nhold = true")),
                     tmp_path / "held", device="cpu")
    free = run_study(parse_study(text), tmp_path / "free", device="cpu")
    assert (free.replicas["event"] == 1).all()  # every replica generalises early
    assert free.curves["step"].max() < 800 and held.curves["step"].max() == 800
    # Trained on, their errors fall further than where the free run stopped recording.
    assert (held.replicas["final_test_error"].median()
            < free.replicas["final_test_error"].median())
    cols = ["duration", "event", "fit_time"]  # the same escapes either way
    pd.testing.assert_frame_equal(held.replicas[cols], free.replicas[cols])


PAPER_TRAP = """
name = "paper-trap"
[model]
depth = 3
strengths = [0.9, 0.8]
hidden = [10, 10]
rotate = true
[data]
kind = "fixed"
[init]
kind = "trained"
scale = 0.5
beta_trap = 0.361
trap_steps = 3000
trap_lr = 0.05
[dynamics]
noise = "sgd"
lr = 0.08
batch_size = 64
beta = 0.2
[run]
replicas = 16
max_steps = 80
seed = 11
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_papers_trap_leaves_only_rounding_error_in_the_trapped_directions(dtype, tmp_path):
    """Design §1: after the trap the trapped directions hold nothing but rounding error —
    within a few eps·‖W‖ in either dtype, so 10⁹ times smaller in float64."""
    text = PAPER_TRAP.replace("seed = 11", f'seed = 11\ndtype = "{dtype}"')
    df = run_study(parse_study(text), tmp_path / dtype, device="cpu").replicas
    trapped = df[df["status"] != "untrapped"]
    assert len(trapped) >= 8
    ratio = trapped["switch_trapped_component"] / trapped["rounding_floor"]
    assert ratio.median() < 10, ratio.describe()
    eps = np.finfo(dtype).eps
    assert trapped["rounding_floor"].median() == pytest.approx(eps, rel=0.5)  # ‖W‖ ≈ 1
