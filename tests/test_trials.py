"""The trial engine end to end on small, fast Langevin studies."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from escapestat.errors import EscapestatError
from escapestat.study import conditions, parse_study
from escapestat.trials import plan_chunks, run_chunk, run_study

FAST = """
name = "fast"
[model]
depth = 3
strengths = [1.5, 1.0]
[data]
kind = "population"
[init]
kind = "aligned"
noise = 0.001
[dynamics]
noise = "langevin"
lr = 0.25
beta_over_beta_c = 0.5
barrier_over_temperature = [1.5, 2.5]
[escape]
commit_steps = 50
check_every = 10
[run]
replicas = 24
max_steps = 3000
seed = 3
chunk_replicas = 20
"""


@pytest.fixture
def study():
    return parse_study(FAST)


def test_plan_covers_every_replica_once(study):
    conds = conditions(study)
    chunks = plan_chunks(study, conds)
    pairs = [(c, r) for ch in chunks for c, r in zip(ch.condition, ch.replica, strict=True)]
    assert sorted(pairs) == sorted((c, r) for c in range(len(conds)) for r in range(24))
    assert max(len(ch.condition) for ch in chunks) <= 20
    assert len({ch.seed(3) for ch in chunks}) == len(chunks)


def test_langevin_escapes_hot_faster_than_cold(study, tmp_path):
    result = run_study(study, tmp_path / "run", device="cpu")
    df = result.escapes
    assert set(df["status"]) <= {"escaped", "censored"}
    assert len(result.replicas) == 48
    by_t = df.groupby("temperature")["event"].mean()
    assert by_t.iloc[-1] > 0.8  # hottest: T = ΔE/1.5, escape within a few hundred steps
    hot = df[df["temperature"] == df["temperature"].max()]
    cold = df[df["temperature"] == df["temperature"].min()]
    assert hot["duration"].mean() < cold["duration"].mean()
    esc = df[df["event"] == 1]["duration"]
    assert (esc > 0).all() and (esc <= 3000).all() and (esc % 10 == 0).all()
    assert (df.loc[df["event"] == 0, "duration"] == 3000).all()
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "complete" and meta["units"] == "steps"
    assert {"config_hash", "chunk_seeds", "versions", "device"} <= set(meta)


def test_same_seed_same_table_and_resume(study, tmp_path):
    a = run_study(study, tmp_path / "a", device="cpu").replicas
    b = run_study(study, tmp_path / "b", device="cpu").replicas
    pd.testing.assert_frame_equal(a, b)
    # Kill-and-resume: drop the last finished chunk and the final tables, then resume.
    chunk_files = sorted((tmp_path / "b" / "chunks").glob("chunk-*.csv"))
    kept = chunk_files[0].read_bytes()
    chunk_files[-1].unlink()
    (tmp_path / "b" / "escapes.csv").unlink()
    meta_path = tmp_path / "b" / "run.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": "running"}))
    with pytest.raises(EscapestatError, match="--resume"):
        run_study(study, tmp_path / "b", device="cpu")
    c = run_study(study, tmp_path / "b", device="cpu", resume=True).replicas
    pd.testing.assert_frame_equal(a, c)
    assert chunk_files[0].read_bytes() == kept  # finished chunks are not redone
    other = study.with_overrides(seed=4)
    with pytest.raises(EscapestatError, match="different study"):
        run_study(other, tmp_path / "b", device="cpu", resume=True)


def test_divergence_is_flagged_not_escaped(tmp_path):
    text = FAST.replace("lr = 0.25", "lr = 3.0").replace("max_steps = 3000", "max_steps = 200")
    study = parse_study(text)
    df = run_study(study, tmp_path / "div", device="cpu").replicas
    assert (df["status"] == "diverged").all()
    assert (df["event"] == 0).all()


def test_untrapped_replicas_are_excluded():
    text = FAST.replace('kind = "aligned"\nnoise = 0.001', 'kind = "trained"\nscale = 2.0\n'
                        'beta_trap = 0.05\ntrap_steps = 300\ntrap_lr = 0.1')
    study = parse_study(text)
    conds = conditions(study)
    chunk = plan_chunks(study, conds)[0]
    df = run_chunk(study, conds, chunk, torch.device("cpu"))
    # A weak L2 during trapping lets large inits learn every mode: nothing is trapped.
    assert (df["status"] == "untrapped").mean() > 0.5
    assert np.all(df.loc[df["status"] == "untrapped", "event"] == 0)


@pytest.mark.parametrize("data", ["population", "fixed"])
def test_test_error_order_parameter_agrees_with_mode(data, tmp_path):
    """Escape by test-error midpoint happens at about the same times as by mode strength."""
    base = FAST.replace('kind = "population"', f'kind = "{data}"\nn_train = 256\nn_test = 256')
    alt = base.replace("[escape]", '[escape]\norder_parameter = "test_error"')
    by_mode = run_study(parse_study(base), tmp_path / "mode", device="cpu").escapes
    by_error = run_study(parse_study(alt), tmp_path / "error", device="cpu").escapes
    for df in (by_mode, by_error):
        assert df.groupby("temperature")["event"].mean().max() > 0.8
    tau = [df.groupby("temperature")["duration"].mean() for df in (by_mode, by_error)]
    ratio = tau[1] / tau[0]
    assert ((ratio > 0.67) & (ratio < 1.5)).all(), ratio


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_is_reproducible_and_escapes(study, tmp_path):
    a = run_study(study, tmp_path / "a", device="cuda")
    b = run_study(study, tmp_path / "b", device="cuda")
    pd.testing.assert_frame_equal(a.replicas, b.replicas)
    assert "cuda" in a.meta["device"]
    by_t = a.escapes.groupby("temperature")["event"].mean()
    assert by_t.iloc[-1] > 0.8
    cpu = run_study(study, tmp_path / "c", device="cpu").escapes
    # Different random streams, same physics: mean times agree within sampling error.
    ratio = (a.escapes.groupby("temperature")["duration"].mean()
             / cpu.groupby("temperature")["duration"].mean())
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio


PAPER_SGD = """
name = "paper-sgd"
[model]
depth = 3
strengths = [0.9, 0.8]
hidden = [10, 10]
d_in = 2
d_out = 2
rotate = true
[data]
kind = "fixed"
[init]
kind = "trained"
beta_trap = 0.361
trap_steps = 3000
trap_lr = 0.08
[dynamics]
noise = "sgd"
lr = 0.08
batch_size = [16, 512]
beta = 0.2
[run]
replicas = 16
max_steps = 2000
seed = 1
"""


def test_sgd_cannot_leave_a_converged_trap(tmp_path):
    """Design §1: in a rank-r state every SGD gradient lies in the learned directions."""
    df = run_study(parse_study(PAPER_SGD), tmp_path / "sgd", device="cpu").replicas
    assert set(df["batch_size"]) == {16, 512}
    assert np.allclose(df["temperature"], 0.08 / df["batch_size"])
    trapped = df[df["status"] != "untrapped"]
    assert len(trapped) >= 16  # β_trap = 0.361 is just above β_sp(0.8) = 0.351
    assert (trapped["status"] == "censored").all()  # absorbing: no escape, full batch or not
