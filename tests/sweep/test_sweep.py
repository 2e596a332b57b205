"""Hysteresis sweeps: jump and loop rules on scripted strengths, the physics of small sweeps
(K loops for K modes at depth 3, none at depth 2), study-file errors, and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from escapestat.errors import EscapestatError
from escapestat.report._sweep_figure import write_sweep
from escapestat.sweep._hysteresis import (
    find_loop,
    jump_betas,
    jump_quantiles,
    mode_loop,
    reference_strength,
)
from escapestat.sweep._sweep import SweepResult, parse_sweep_study, run_sweep
from escapestat.theory._landscape import critical_beta, spinodal, stationary_points


def sweep_toml(depth=3, strengths=(0.9, 0.8), temperature=0.0015, beta_low=0.05,
               beta_high=0.5, points=16, steps=250, replicas=32, seed=1):
    return f"""
name = "test-sweep"
[model]
depth = {depth}
strengths = {list(strengths)}
[dynamics]
noise = "langevin"
lr = 0.25
temperature = {temperature}
[run]
replicas = {replicas}
seed = {seed}
[sweep]
beta_low = {beta_low}
beta_high = {beta_high}
points = {points}
steps_per_point = {steps}
"""


# ---------------------------------------------------------------- rules on scripted arrays


def test_jump_betas_interpolates_between_grid_points():
    betas = [0.0, 1.0, 2.0, 3.0]
    values = np.array([
        [1.0, 0.8, 0.2, 0.0],  # crosses 0.5 between 1 and 2: 1 + 0.3/0.6
        [1.0, 1.0, 1.0, 0.9],  # never drops
        [0.2, 0.1, 0.0, 0.0],  # already below at the first point
        [1.0, 0.3, 0.9, 0.1],  # a transient dip at 1 is not counted: 2 + 0.4/0.8
        [1.0, np.nan, 0.0, 0.0],  # diverged
    ]).T
    got = jump_betas(betas, values, 0.5, rising=False)
    np.testing.assert_allclose(got[[0, 2, 3]], [1.5, 0.0, 2.5])
    assert np.isposinf(got[1]) and np.isnan(got[4])


def test_jump_betas_rising_on_a_descending_grid():
    betas = [3.0, 2.0, 1.0, 0.0]  # the down branch, in the order visited
    values = np.array([[0.0, 0.1, 0.7, 0.9], [0.0, 0.0, 0.1, 0.2]]).T
    got = jump_betas(betas, values, 0.5, rising=True)
    assert got[0] == pytest.approx(2.0 - 0.4 / 0.6)
    assert np.isneginf(got[1])  # never relearned: beyond the end of the sweep


def test_quantiles_count_never_as_beyond_the_sweep():
    assert jump_quantiles(np.array([0.3, 0.4, np.inf]))[0] == pytest.approx(0.4)
    assert jump_quantiles(np.array([0.3, np.inf, np.inf]))[0] is None
    assert jump_quantiles(np.array([np.nan, np.nan])) == (None, None, None)


def test_find_loop_needs_more_than_one_grid_step():
    up, step = np.full(9, 0.40), 0.05
    assert find_loop(up, np.full(9, 0.20), step) == (pytest.approx(0.2), True)
    assert find_loop(up, np.full(9, 0.37), step)[1] is False  # within one grid step
    assert find_loop(up, np.full(9, -np.inf), step) == (None, True)  # open loop
    assert find_loop(np.full(9, np.inf), np.full(9, np.nan), step) == (None, False)


def test_reference_strength_is_half_the_learned_strength_at_beta_c():
    # Why the threshold is not s/2: at L = 3 the learned branch is at s/2 exactly at β_c.
    for depth, s in [(3, 0.9), (3, 1.5), (4, 1.0)]:
        a = stationary_points(depth, s, critical_beta(depth, s))[1]
        assert a**depth == pytest.approx(2 * reference_strength(depth, s, 0.1), rel=1e-6)
        assert a**depth == pytest.approx(s * (depth - 2) / (depth - 1), rel=1e-6)
    assert reference_strength(2, 0.9, 0.1) == pytest.approx(0.8)


def test_mode_loop_from_scripted_branches():
    betas = np.stack([np.linspace(0.1, 0.5, 5), np.linspace(0.5, 0.1, 5)])
    up = np.array([0.8, 0.7, 0.6, 0.0, 0.0])  # drops between 0.3 and 0.4
    down = np.array([0.0, 0.0, 0.0, 0.0, 0.8])  # relearns between 0.2 and 0.1
    values = np.stack([up, down])[:, :, None].repeat(3, axis=2)
    m = mode_loop(0, 3, 0.9, betas, values, beta_low=0.1, threshold=0.5, grid_step=0.1,
                  temperature=1e-3)
    assert 0.3 < m.up_jump < 0.4 and 0.1 < m.down_jump < 0.2 and m.loop and m.closed
    assert m.beta_c == pytest.approx(critical_beta(3, 0.9))
    assert m.down_barrier_over_t > 0 and m.dropped == m.relearned == 1.0


# ---------------------------------------------------------------- small sweeps


@pytest.fixture(scope="module")
def two_modes() -> SweepResult:
    return run_sweep(parse_sweep_study(sweep_toml(), "two"))


@pytest.fixture(scope="module")
def three_modes() -> SweepResult:
    text = sweep_toml(strengths=(1.5, 1.0, 0.6), temperature=0.003, beta_high=0.9, points=24)
    return run_sweep(parse_sweep_study(text, "three"))


@pytest.mark.parametrize("name", ["two_modes", "three_modes"])
def test_one_loop_per_mode(request, name):
    result = request.getfixturevalue(name)
    step = result.sweep.sweep.grid_step
    assert result.loops == len(result.modes) and result.diverged == 0
    for m in result.modes:
        assert m.beta_c == pytest.approx(critical_beta(3, m.strength))
        assert m.beta_sp == pytest.approx(spinodal(3, m.strength))
        assert m.beta_c < m.up_jump <= m.beta_sp + step, m
        assert m.closed and m.down_jump < m.beta_c, m
    ups = [m.up_jump for m in sorted(result.modes, key=lambda m: m.strength)]
    assert ups == sorted(ups)  # weaker modes drop out first


def test_depth_two_has_no_loop():
    text = sweep_toml(depth=2, strengths=(0.9, 0.5), temperature=0.0003, beta_high=1.2)
    result = run_sweep(parse_sweep_study(text, "two"))
    assert result.loops == 0
    for m in result.modes:
        assert abs(m.up_jump - m.down_jump) <= result.sweep.sweep.grid_step
        assert not m.loop and m.up_jump < m.strength  # continuous: crosses below β = s


def test_same_seed_same_sweep():
    text = sweep_toml(points=4, steps=40, replicas=4)
    a, b = (run_sweep(parse_sweep_study(text, "s")) for _ in range(2))
    np.testing.assert_array_equal(a.strengths, b.strengths)
    c = run_sweep(parse_sweep_study(text.replace("seed = 1", "seed = 2"), "s"))
    assert not np.array_equal(a.strengths, c.strengths)


def test_sgd_leaves_loops_open():
    text = sweep_toml(points=6, steps=100, replicas=8).replace(
        'noise = "langevin"', 'noise = "sgd"').replace(
        "temperature = 0.0015", "batch_size = 16").replace(
        "[dynamics]", '[data]\nkind = "fixed"\nn_train = 64\n[dynamics]')
    result = run_sweep(parse_sweep_study(text, "sgd"))
    assert result.sweep.temperature is None and result.loops == 2
    assert all(not m.closed for m in result.modes) and "SGD" in result.notes[-1]


def test_outputs(two_modes, tmp_path):
    paths = write_sweep(two_modes, tmp_path, study_text="x")
    table = pd.read_csv(paths["csv"])
    assert set(table["branch"]) == {"up", "down"} and len(table) == 2 * 16 * 2
    assert {"beta", "mode", "median", "q10", "q90", "median_over_s"} <= set(table.columns)
    saved = json.loads(paths["json"].read_text())
    assert saved["loops"] == 2 and saved["modes"][0]["beta_sp"] == pytest.approx(
        spinodal(3, 0.9))
    assert paths["png"].stat().st_size > 10_000


def test_report_of_a_sweep_folder(two_modes, tmp_path):
    from escapestat.report._page import build_report, kind_of

    write_sweep(two_modes, tmp_path, study_text="x")
    assert kind_of(tmp_path) == "sweep"
    report = build_report(tmp_path)
    (table,) = [b for b in report.sections[0].blocks if hasattr(b, "frame")]
    assert list(table.frame["loop"]) == ["yes", "yes"]
    assert table.frame["β_sp"].tolist() == [f"{spinodal(3, s):.3g}" for s in (0.9, 0.8)]
    assert [f.name for f in report.figures] == ["sweep"]
    assert "data:image/png;base64," in report.html()


# ---------------------------------------------------------------- study files and the CLI


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[: t.index("[sweep]")], "no [sweep] table"),
    (lambda t: t.replace("beta_high = 0.5", "beta_high = 0.05"), "[sweep] beta_high must be"),
    (lambda t: t.replace("points = 16", "points = 2"), "[sweep] points must be at least 3"),
    (lambda t: t.replace("beta_high", "beta_hihg"), "did you mean 'beta_high'"),
    (lambda t: t.replace("[sweep]", "[swep]"), "did you mean 'sweep'"),
    (lambda t: t.replace("lr = 0.25", "lr = 0.25\nbeta = 0.3"), "[dynamics] beta is not used"),
    (lambda t: t + "\n[escape]\nthreshold = 0.5\n", "[escape] has no meaning"),
    (lambda t: t.replace("beta_low = 0.05", "beta_low = 0.4"), "above mode 1's spinodal"),
    (lambda t: t.replace("temperature = 0.0015", ""), "[dynamics] temperature is required"),
    (lambda t: t.replace("temperature = 0.0015", "temperature = [0.1, 0.2]"),
     "must be one number"),
    (lambda t: t.replace("depth = 3", "depth = 1"), "[model] depth"),
])
def test_bad_study_is_one_line(edit, message, cli, tmp_path):
    with pytest.raises(EscapestatError) as info:
        parse_sweep_study(edit(sweep_toml()), "s.toml")
    assert message in str(info.value)
    path = tmp_path / "bad.toml"
    path.write_text(edit(sweep_toml()))
    code, stdout, stderr = cli("sweep", path, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 1 and stdout == ""
    assert stderr.strip().startswith("error:") and len(stderr.strip().splitlines()) == 1
    assert message in " ".join(stderr.split()) and "Traceback" not in stderr


def test_cli_json(cli, tmp_path):
    path = tmp_path / "k2.toml"
    path.write_text(sweep_toml())
    out = tmp_path / "run"
    code, stdout, stderr = cli("sweep", path, "--out", out, "--device", "cpu", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["loops"] == 2 and summary["out"] == str(out)
    assert [m["loop"] for m in summary["modes"]] == [True, True]
    assert (out / "sweep.csv").exists() and (out / "sweep.png").exists()
    assert (out / "study.toml").read_text() == path.read_text()


def test_cli_table_depth_two_and_usage_errors(cli, tmp_path):
    path = tmp_path / "l2.toml"
    path.write_text(sweep_toml(depth=2, strengths=(0.9,), beta_high=1.2, points=5, steps=60,
                               replicas=4))
    code, stdout, stderr = cli("sweep", path, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, stderr
    assert "Hysteresis per mode" in stdout and "0 of 1 modes show a loop" in stdout
    assert "sweep.json" in stderr
    code, _, stderr = cli("sweep", path, "--device", "tpu")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    code, _, stderr = cli("sweep", tmp_path / "missing.toml")
    assert code == 1 and "no such study file" in stderr
    if not torch.cuda.is_available():
        code, _, stderr = cli("sweep", path, "--device", "cuda")
        assert code == 1 and "no CUDA device" in stderr
