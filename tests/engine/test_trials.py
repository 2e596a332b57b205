"""The trial engine end to end on small, fast Langevin studies."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fake_models import ScriptedEscapes
from testdata import FAST  # noqa: E402

from escapestat.config._study import conditions, parse_study
from escapestat.engine import _loop
from escapestat.engine._trials import plan_chunks, run_chunk, run_study
from escapestat.errors import EscapestatError
from escapestat.stats._survival import ExponentialRate


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


def test_reading_back_a_complete_run_writes_nothing(study, tmp_path):
    out = tmp_path / "r"
    first = run_study(study, out, device="cpu", study_text=FAST)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    again = run_study(study, out, device="cpu", study_text=FAST + "\n# edited comment\n")
    pd.testing.assert_frame_equal(first.replicas, again.replicas)
    now = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert now == files


def test_a_different_study_is_refused_at_a_finished_run(study, tmp_path):
    run_study(study, tmp_path / "r", device="cpu")
    for resume in (False, True):
        with pytest.raises(EscapestatError, match="different study"):
            run_study(study.with_overrides(seed=4), tmp_path / "r", device="cpu", resume=resume)


def test_resume_on_another_device_says_so(study, tmp_path):
    out = tmp_path / "r"
    run_study(study, out, device="cpu")
    sidecars = sorted((out / "chunks").glob("chunk-*.json"))
    assert len(sidecars) >= 2
    info = json.loads(sidecars[0].read_text())
    assert {"device", "dtype", "versions"} <= set(info)
    sidecars[0].write_text(json.dumps({**info, "device": "cuda (some GPU)"}))
    sidecars[-1].with_suffix(".csv").unlink()
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    result = run_study(study, out, device="cpu", resume=True)
    assert any("different device" in n and "cuda (some GPU)" in n for n in result.notes)
    assert json.loads((out / "run.json").read_text())["notes"] == result.notes


def test_divergence_is_a_competing_risk_in_the_survival_table(tmp_path):
    text = FAST.replace("lr = 0.25", "lr = 3.0").replace("max_steps = 3000", "max_steps = 200")
    result = run_study(parse_study(text), tmp_path / "div", device="cpu")
    df = result.replicas
    assert (df["status"] == "diverged").all() and (df["event"] == 0).all()
    assert (df["duration"] > 0).all() and (df["duration"] <= 200).all()
    # Kept in escapes.csv as censored at the step it diverged, counted and reported.
    assert len(result.escapes) == len(df)
    with pytest.raises(EscapestatError, match="no usable replicas"):
        result.require_usable()


def _scripted(monkeypatch, escape_rate, divergence_rate):
    def factory(study, conds, generator, device, batch_size):
        return ScriptedEscapes(len(conds), escape_rate, divergence_rate, generator, device)

    monkeypatch.setattr(_loop, "build_model", factory)  # the loop builds the model


def test_divergence_does_not_inflate_the_rate(monkeypatch, tmp_path):
    """Escape and divergence at equal rates: dropping the diverged doubles the rate."""
    _scripted(monkeypatch, 1 / 400, 1 / 400)
    text = FAST.replace("replicas = 24", "replicas = 1000").replace(
        "chunk_replicas = 20", "chunk_replicas = 4096").replace("max_steps = 3000",
                                                                "max_steps = 2000")
    df = run_study(parse_study(text), tmp_path / "cr", device="cpu").escapes
    assert set(df["status"]) == {"escaped", "censored", "diverged"}
    for _, part in df.groupby("temperature"):
        rate = part["event"].sum() / part["duration"].sum()
        assert rate == pytest.approx(1 / 400, rel=0.12)  # truth, within ~3 SE
        kept = part[part["status"] != "diverged"]
        assert kept["event"].sum() / kept["duration"].sum() > 1.5 / 400  # the old bias


def test_crossings_near_the_budget_are_decided_not_guessed(monkeypatch, tmp_path):
    """No escape after the budget; a crossing before it commits (runs on) and counts."""
    _scripted(monkeypatch, 1 / 300, 0.0)
    text = FAST.replace("max_steps = 3000", "max_steps = 600").replace(
        "replicas = 24", "replicas = 400").replace("chunk_replicas = 20", "chunk_replicas = 800")
    df = run_study(parse_study(text), tmp_path / "b", device="cpu").escapes
    escaped = df[df["event"] == 1]["duration"]
    assert escaped.max() <= 600 and (escaped > 600 - 50).any()  # commit_steps = 50
    censored = df[df["event"] == 0]["duration"]
    assert (censored == 600).all()
    assert df["event"].mean() == pytest.approx(1 - np.exp(-600 / 300), abs=0.06)


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


SCHEDULED = FAST.replace("barrier_over_temperature = [1.5, 2.5]", "temperature = TEMP").replace(
    "beta_over_beta_c = 0.5", "beta = BETA").replace("replicas = 24", "replicas = 300").replace(
    "chunk_replicas = 20", "chunk_replicas = 4096")


def _temperature_study(temp: str):
    from escapestat.theory._landscape import barrier, critical_beta

    beta = 0.5 * critical_beta(3, 1.0)
    de = barrier(3, 1.0, beta)
    return parse_study(SCHEDULED.replace("BETA", repr(beta)).replace(
        "TEMP", temp.replace("HOT", repr(de / 2)).replace("COLD", repr(de / 20))))


def test_a_temperature_schedule_reaches_the_engine(tmp_path):
    """Hot until step 300, then far too cold to cross: the escaped fraction is the constant
    hot run's fraction crossed by step 300 (the cold phase only lets crossings commit)."""
    hot = run_study(_temperature_study("HOT"), tmp_path / "hot", device="cpu").escapes
    cold = run_study(_temperature_study("COLD"), tmp_path / "cold", device="cpu").escapes
    stepped = run_study(_temperature_study(
        "{shape = 'steps', values = [HOT, COLD], at = [300]}"), tmp_path / "s", device="cpu")
    df = stepped.escapes
    assert (df["temperature_schedule"] != "constant").all()
    crossed_by = (hot["event"] == 1) & (hot["duration"] <= 300)
    expect, n = crossed_by.mean(), len(df)
    assert 0.2 < expect < 0.8  # the test is informative: the switch falls mid-escape
    se = (expect * (1 - expect) / n) ** 0.5 * 2**0.5
    assert abs(df["event"].mean() - expect) < 3.5 * se, (df["event"].mean(), expect)
    assert cold["event"].mean() < 0.05 < df["event"].mean()
    # Replicas already past the saddle at the switch roll on down and cross a little later.
    assert df.loc[df["event"] == 1, "duration"].max() <= 300 + 300


def test_annealing_escapes_far_sooner_than_constant_cold(tmp_path):
    """Design §8: hot-then-cold Langevin annealing beats constant cold temperature."""
    cold = run_study(_temperature_study("COLD"), tmp_path / "cold", device="cpu").escapes
    anneal = run_study(_temperature_study(
        "{shape = 'cosine', start = HOT, end = COLD, steps = 1500}"), tmp_path / "a",
        device="cpu").escapes
    # Censoring only at the budget: with over half escaped the sample median is KM's.
    assert anneal["event"].mean() > 0.55 and cold["event"].mean() < 0.05
    cold_rate = ExponentialRate().fit(cold["duration"], cold["event"])
    assert np.median(anneal["duration"]) < 0.1 * cold_rate.tau_ci_[0]  # ≥ 10× sooner


def test_hold_trains_escaped_replicas_to_the_budget_and_measures_their_final_loss(study):
    """With ``hold``, escapes are still recorded when they commit, nothing is dropped, and
    every replica gets a final loss at the budget: low for the escaped (they sit in the
    learned state), high for those still trapped."""
    from escapestat.engine._trials import run_chunk_output

    conds = conditions(study)
    chunk = plan_chunks(study, conds)[0]
    seen = []
    table = run_chunk_output(study, conds, chunk, torch.device("cpu"),
                             watch=lambda t, *_: seen.append(t), hold=True).table
    assert seen[-1] == study.run.max_steps  # ran to the budget although ...
    escaped = table["status"] == "escaped"
    assert escaped.sum() >= 3 and (table.loc[escaped, "duration"] < 2000).all()  # ... many left
    assert table["final_loss"].notna().all()
    trapped = table["status"] == "censored"
    assert trapped.any()
    assert table.loc[escaped, "final_loss"].max() < table.loc[trapped, "final_loss"].min()
    plain = run_chunk(study, conds, chunk, torch.device("cpu"))
    assert "final_loss" not in plain and len(plain) == len(table)
