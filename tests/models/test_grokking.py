"""Grokking through the engine: study files, the fit milestone, measures, curves, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from testdata import GROK  # noqa: E402

from escapestat.config._study import parse_study
from escapestat.engine._trials import run_study
from escapestat.errors import EscapestatError


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    return run_study(parse_study(GROK), tmp_path_factory.mktemp("g") / "run", device="cpu")


def test_grokking_run_records_fit_generalisation_and_delay(grokked):
    df = grokked.escapes
    assert (df["status"] == "escaped").all()  # lr 2e-2 groks in a few hundred steps
    assert (df["fit_time"] < df["generalize_time"]).all()
    assert (df["first_cross_time"] <= df["generalize_time"]).all()
    np.testing.assert_allclose(df["delay"], df["generalize_time"] - df["fit_time"])
    assert (df["duration"] == df["generalize_time"]).all() and (df["measure"] == "generalize").all()
    assert (df["final_train_accuracy"] >= 0.99).all() and (df["final_test_accuracy"] >= 0.9).all()
    assert (df["duration"] % 20 == 0).all()  # on the check grid


def test_denormal_flushing_does_not_leak_out_of_the_run(grokked):
    tiny = np.array([1e-320])
    assert tiny[0] > 0 and (tiny * 1.0)[0] > 0  # numpy keeps its denormals after a run


def test_curves_show_the_grokking_curve(grokked):
    curves = grokked.curves
    test = curves[curves["metric"] == "test_accuracy"].sort_values("step")
    train = curves[curves["metric"] == "train_accuracy"].sort_values("step")
    assert set(curves.columns) >= {"condition", "metric", "step", "n", "q10", "median", "q90"}
    assert (test["q10"] <= test["median"]).all() and (test["median"] <= test["q90"]).all()
    assert test["median"].iloc[0] < 0.2 and test["median"].iloc[-1] > 0.9
    # Train accuracy rises before test accuracy: the grokking delay, in the bands.
    first = lambda d, level: d.loc[d["median"] >= level, "step"].min()  # noqa: E731
    assert first(train, 0.99) < first(test, 0.95)
    assert (grokked.out_dir / "curves.csv").exists()


def test_delay_measure_and_unfit_replicas(tmp_path):
    text = GROK.replace("[escape]", '[escape]\nmeasure = "delay"')
    df = run_study(parse_study(text), tmp_path / "d", device="cpu").escapes
    np.testing.assert_allclose(df["duration"], df["generalize_time"] - df["fit_time"])
    # A budget too short to fit anything: every replica is unfit, none in the survival table.
    short = text.replace("max_steps = 800", "max_steps = 20")
    result = run_study(parse_study(short), tmp_path / "u", device="cpu")
    assert (result.replicas["status"] == "unfit").all() and result.escapes.empty


def test_non_finite_loss_is_divergence(tmp_path):
    text = GROK.replace("lr = 2e-2", "lr = 1e6").replace("max_steps = 800", "max_steps = 100")
    df = run_study(parse_study(text), tmp_path / "x", device="cpu").replicas
    assert (df["status"] == "diverged").all() and (df["event"] == 0).all()
    assert (df["duration"] <= 100).all()


def test_full_batch_is_the_training_set_size():
    study = parse_study(GROK.replace("batch_size = 64", 'batch_size = [64, "full"]'))
    assert [b.value(0) for b in study.dynamics.batch_size] == [64, round(0.7 * 23 * 23)]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('operation = "add"', 'operation = "pow"'), "[task] operation"),
    (lambda t: t.replace("p = 23", "p = 2"), "[task] p must be at least 3"),
    (lambda t: t.replace("train_fraction = 0.7", "train_fraction = 1.0"),
     "[task] train_fraction must be in (0, 1)"),
    (lambda t: t.replace("width = 128", "width = 128\ndepth = 3"),
     "[model] depth is for model kind 'deep_linear', not 'mlp'"),
    (lambda t: t.replace("width = 128", "width = 128\nd_mlp = 64"),
     "[model] d_mlp is for model kind 'transformer' or 'transformer2', not 'mlp'"),
    (lambda t: t.replace("weight_decay = 1.0", "beta = 1.0"), "beta and temperature are for"),
    (lambda t: t.replace('kind = "mlp"', 'kind = "cnn"'), "[model] kind must be one of"),
    (lambda t: t.replace("[escape]", '[escape]\nmeasure = "escape"'), "[escape] measure"),
])
def test_bad_grokking_studies_name_the_key(edit, message):
    with pytest.raises(EscapestatError) as info:
        parse_study(edit(GROK), source="g.toml")
    assert message in str(info.value)


def test_linear_studies_refuse_grokking_keys():
    base = "[dynamics]\nbeta = 0.3\ntemperature = 0.01\n"
    for extra, message in (("[task]\np = 7\n", "[task] is for the grokking models"),
                           ("[model]\nwidth = 8\n", "[model] width is for model kind 'mlp'")):
        with pytest.raises(EscapestatError, match=message.replace("[", r"\[")):
            parse_study(base + extra)


def test_grokking_summary_and_cli(cli, tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GROK.replace("replicas = 8", "replicas = 4"))
    code, out, err = cli("run", path, "--out", tmp_path / "r", "--device", "cpu")
    assert code == 0, err
    assert "Grokking per condition" in out and "100%" in out
    table = pd.read_csv(tmp_path / "r" / "escapes.csv")
    code, out, err = cli("fit", tmp_path / "r" / "escapes.csv", "--json")
    assert code == 0, err
    assert table["event"].sum() == 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_grokking_models_on_cuda(kind, tmp_path):
    """The same study on CUDA: reproducible, and the MLP groks as on the CPU."""
    text = GROK if kind == "mlp" else GROK.replace('kind = "mlp"\nwidth = 128',
                                                   'kind = "transformer"\nd_model = 32')
    study = parse_study(text.replace("replicas = 8", "replicas = 16"))
    a = run_study(study, tmp_path / "a", device="cuda")
    b = run_study(study, tmp_path / "b", device="cuda")
    pd.testing.assert_frame_equal(a.replicas, b.replicas)
    assert "cuda" in a.meta["device"]
    if kind == "mlp":
        assert (a.escapes["event"] == 1).mean() > 0.9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mlp_gradients_on_cuda_equal_the_cpu():
    from escapestat.models.grokking.mlp._ensemble import MLPEnsemble

    g = torch.Generator().manual_seed(0)
    cpu = MLPEnsemble.random(4, 11, 16, generator=g, dtype=torch.float64)
    gpu = MLPEnsemble([t.cuda() for t in cpu.params][0], cpu.params[1].cuda())
    pairs = torch.randint(0, 11, (4, 8, 2), generator=g)
    labels = torch.randint(0, 11, (4, 8), generator=g)
    loss_c, grads_c = cpu.loss_and_grads(pairs, labels)
    loss_g, grads_g = gpu.loss_and_grads(pairs.cuda(), labels.cuda())
    torch.testing.assert_close(loss_g.cpu(), loss_c)
    for a, b in zip(grads_g, grads_c, strict=True):
        torch.testing.assert_close(a.cpu(), b)


def test_the_curves_carry_each_replicas_weight_norm():
    """‖θ‖ per replica (what weight decay acts on), beside train and test accuracy."""
    from escapestat.config._registry import model_class
    from escapestat.config._study import conditions, parse_study

    study = parse_study(GROK.replace("p = 23", "p = 11").replace("batch_size = 64",
                                                                 "batch_size = 16"))
    conds = conditions(study) * 3
    GrokTrial = model_class(study.model.kind)
    trial = GrokTrial(study, conds, torch.Generator().manual_seed(0), torch.device("cpu"), 16)
    values = trial.curve_values()
    assert set(values) == set(GrokTrial.curve_names)
    by_hand = torch.stack([torch.sqrt(sum((p[r].double() ** 2).sum()
                                          for p in trial.net.params)) for r in range(3)])
    assert torch.allclose(values["weight_norm"].double(), by_hand, rtol=1e-5)
