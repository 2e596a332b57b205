"""The one-mode landscape against the design's reference values and its own definitions."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from escapestat.errors import EscapestatError
from escapestat.theory._landscape import (
    barrier,
    critical_beta,
    landscape,
    mode_loss,
    phase_diagram,
    spinodal,
    stationary_points,
)


def test_reference_values_depth3():
    # L = 3, s = 1: β_c ≈ 0.397, β_sp ≈ 0.472, ΔE(β_c) ≈ 0.0337, ΔE(β_c/2) ≈ 0.0039
    bc = critical_beta(3, 1.0)
    assert bc == pytest.approx(0.397, abs=5e-4)
    assert spinodal(3, 1.0) == pytest.approx(0.472, abs=5e-4)
    assert barrier(3, 1.0, bc) == pytest.approx(0.0337, abs=5e-5)
    assert barrier(3, 1.0, 0.5 * bc) == pytest.approx(0.0039, abs=5e-5)
    # The paper's "critical" values are the spinodals of its modes.
    assert spinodal(3, 0.8) == pytest.approx(0.351, abs=5e-4)
    assert spinodal(3, 0.9) == pytest.approx(0.411, abs=5e-4)
    assert critical_beta(3, 0.8) == pytest.approx(0.295, abs=5e-4)
    assert critical_beta(3, 0.9) == pytest.approx(0.345, abs=5e-4)


@pytest.mark.parametrize("depth", [3, 4, 5])
@pytest.mark.parametrize("s", [0.5, 1.0, 2.0])
def test_definitions_hold(depth, s):
    # β_sp is the maximum of g(a) = a^{L−2}(s − a^L), found here by brute force.
    grid = np.linspace(0, s ** (1 / depth), 200001)
    assert spinodal(depth, s) == pytest.approx((grid ** (depth - 2) * (s - grid**depth)).max(),
                                               rel=1e-8)
    # At β_c the learned state and zero are equally deep.
    bc = critical_beta(depth, s)
    _, learned = stationary_points(depth, s, bc)
    assert mode_loss(learned, depth, s, bc) == pytest.approx(mode_loss(0, depth, s, bc), rel=1e-9)
    # The saddle is the loss maximum between zero and the learned minimum.
    beta = 0.7 * bc
    saddle, learned = stationary_points(depth, s, beta)
    peak = minimize_scalar(lambda a: -mode_loss(a, depth, s, beta), bounds=(0, learned),
                           method="bounded", options={"xatol": 1e-12})
    assert saddle == pytest.approx(peak.x, rel=1e-5)
    assert barrier(depth, s, beta) == pytest.approx(-peak.fun - mode_loss(0, depth, s, beta),
                                                    rel=1e-8)


def test_barrier_monotone_and_vanishing():
    betas = np.linspace(0.01, 0.99, 50) * spinodal(3, 1.0)
    dE = np.array([barrier(3, 1.0, b) for b in betas])
    assert np.all(np.diff(dE) > 0)
    assert barrier(3, 1.0, 1e-6) < 1e-15
    assert barrier(3, 1.0, 0.0) == 0.0


def test_zero_not_a_trap():
    assert barrier(2, 1.0, 0.3) is None  # depth 2: continuous, zero is unstable below s
    assert barrier(3, 1.0, 0.48) is None  # above the spinodal only zero exists
    scape = landscape(2, 1.0, 0.3)
    assert scape.transition == "continuous"
    assert scape.beta_c == scape.beta_sp == 1.0
    assert scape.learned == pytest.approx(0.7)
    assert scape.saddle is None
    scape = landscape(3, 1.0, 0.48)
    assert scape.learned is None and scape.barrier is None


def test_landscape_strengths_are_end_to_end():
    scape = landscape(3, 1.0, 0.3)
    saddle, learned = stationary_points(3, 1.0, 0.3)
    assert scape.saddle == pytest.approx(saddle**3)
    assert scape.learned == pytest.approx(learned**3)
    assert scape.transition == "first-order"


@pytest.mark.parametrize("args", [(1, 1.0, 0.1), (3, -1.0, 0.1), (3, 1.0, -0.1), (2.5, 1, 0.1)])
def test_bad_arguments(args):
    with pytest.raises(EscapestatError):
        landscape(*args)


def test_phase_diagram_labels():
    df = phase_diagram(3, [1.0], [0.2, 0.43, 0.5])
    assert list(df["phase"]) == ["zero metastable", "learned metastable", "zero only"]


def test_cli_json(cli):
    code, stdout, stderr = cli("theory", "--depth", 3, "--strength", 1, "--beta", 0.3, "--json")
    assert code == 0, stderr
    out = json.loads(stdout)
    assert set(out) == {"depth", "strength", "beta", "beta_c", "beta_sp", "barrier", "saddle",
                        "learned", "transition", "phase"}
    assert out["barrier"] == pytest.approx(barrier(3, 1.0, 0.3))
    _, stdout, _ = cli("theory", "--depth", 2, "--strength", 1, "--beta", 0.3, "--json")
    assert json.loads(stdout)["barrier"] is None


def test_cli_bad_depth_one_line(cli):
    code, stdout, stderr = cli("theory", "--depth", 1, "--strength", 1)
    assert code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "depth must be" in stderr


def test_depth_two_never_calls_zero_metastable(cli):
    """Depth 2 is a continuous transition: below β = s the zero state is no trap."""
    for beta in ("0.3", "0.9"):
        code, out, err = cli("theory", "--depth", "2", "--strength", "1", "--beta", beta)
        assert code == 0, err
        assert "zero metastable" not in out and "is metastable" not in out
        assert "learned only" in out and "never a trap" in out
    code, out, _ = cli("theory", "--depth", "3", "--strength", "1", "--beta", "0.3")
    assert code == 0 and "zero metastable" in out
