"""The replica-model contract, run on every model (a new model is one more line in MODELS)."""

from __future__ import annotations

import pytest
import torch
from fake_models import ScriptedEscapes
from testdata import FAST

from escapestat.config._registry import kinds, model_class
from escapestat.config._study import conditions, parse_study
from escapestat.engine._trials import HyperSchedules
from escapestat.models.base import ReplicaModel
from escapestat.models.deep_linear import _ensemble as ensemble
from escapestat.models.deep_linear.model import DeepLinearTrial

SGD_FIXED = FAST.replace('kind = "population"', 'kind = "fixed"\nn_train = 64\nn_test = 64') \
    .replace('noise = "langevin"', 'noise = "sgd"') \
    .replace("barrier_over_temperature = [1.5, 2.5]", "batch_size = 16")


def _linear(text: str):
    def make(replicas: int, generator: torch.Generator):
        study = parse_study(text)
        conds = (conditions(study) * replicas)[:replicas]
        model = DeepLinearTrial(study, conds, generator, torch.device("cpu"),
                                HyperSchedules(conds, torch.float32, "cpu").batch_size(0))
        return model, HyperSchedules(conds, torch.float32, "cpu")
    return make


#: The [model] table of each grokking kind at a test's size (every registered kind appears).
SMALL = {"mlp": "width = 128", "transformer": "d_model = 32",
         "transformer2": "d_model = 16\nd_mlp = 32"}


def _grok(kind: str):
    def make(replicas: int, generator: torch.Generator):
        from testdata import GROK

        text = GROK.replace('kind = "mlp"\nwidth = 128', f'kind = "{kind}"\n{SMALL[kind]}')
        study = parse_study(text.replace("p = 23", "p = 7").replace("batch_size = 64",
                                                                   "batch_size = 8"))
        conds = conditions(study) * replicas
        hyper = HyperSchedules(conds, torch.float32, "cpu")
        return model_class(study.model.kind)(study, conds, generator, torch.device("cpu"),
                                              8), hyper
    return make


def _scripted(replicas: int, generator: torch.Generator):
    hyper = HyperSchedules(conditions(parse_study(FAST))[:1] * replicas, torch.float32, "cpu")
    return ScriptedEscapes(replicas, 1 / 50, 1 / 500, generator), hyper


MODELS = {
    "deep-linear-langevin-population": _linear(FAST),
    "deep-linear-sgd-fixed": _linear(SGD_FIXED),
    "scripted": _scripted,
    **{f"grok-{kind}": _grok(kind) for kind in SMALL},
}


def test_every_registered_kind_runs_the_contract():
    assert set(kinds()) == {"deep_linear", *SMALL}


@pytest.fixture(params=sorted(MODELS))
def built(request):
    return MODELS[request.param](6, torch.Generator().manual_seed(0))


def test_protocol_members_and_shapes(built):
    model, hyper = built
    assert isinstance(model, ReplicaModel) and model.replicas == 6
    for t in range(5):
        model.step(t, hyper.at(t))
    q, ok = model.order_parameter(), model.finite()
    assert q.shape == (6,) and ok.shape == (6,) and ok.dtype == torch.bool


def test_keep_keeps_those_replicas_in_that_order(built):
    model, hyper = built
    for t in range(3):
        model.step(t, hyper.at(t))
    q = model.order_parameter().clone()
    idx = torch.tensor([1, 4, 5])
    model.keep(idx)
    hyper.keep(idx)
    assert model.replicas == 3
    torch.testing.assert_close(model.order_parameter(), q[idx])
    model.step(3, hyper.at(3))  # still steps after shrinking
    assert model.order_parameter().shape == (3,)


def test_grokfast_filter_reaches_the_step():
    """EMA filter on the data gradient, L2 added after: same as the update written out."""
    text = SGD_FIXED.replace("batch_size = 16", "batch_size = 64").replace(
        "[escape]", "grad_filter = {kind = 'ema', alpha = 0.8, lamb = 2.0}\n[escape]")
    text = text.replace('[run]', '[run]\ndtype = "float64"')
    study = parse_study(text)
    conds = conditions(study) * 3
    model = DeepLinearTrial(study, conds, torch.Generator().manual_seed(1), torch.device("cpu"),
                            64)
    hyper = HyperSchedules(conds, torch.float64, "cpu")
    weights = [w.clone() for w in model.net.weights]
    sxx, syx, _ = model.data.train_moments()  # batch 64 = n_train: full batch, deterministic
    h = None
    for t in range(4):
        model.step(t, hyper.at(t))
        ref = ensemble.DeepLinearEnsemble(weights)
        g = ref.gradients(sxx, syx, 0.0)
        h = g if h is None else [0.8 * a + 0.2 * b for a, b in zip(h, g, strict=True)]
        lr, beta = hyper.at(t).lr.reshape(-1, 1, 1), hyper.at(t).weight_decay.reshape(-1, 1, 1)
        weights = [w - lr * (gi + 2.0 * hi + beta * w)
                   for w, gi, hi in zip(weights, g, h, strict=True)]
    for w, ref in zip(model.net.weights, weights, strict=True):
        torch.testing.assert_close(w, ref)


@pytest.mark.parametrize("name, dtype, item", [("float32", torch.float32, 4),
                                                ("float64", torch.float64, 8)])
def test_the_dtype_is_read_in_one_place(name, dtype, item):
    """``[run] dtype`` → bytes per number (config, torch-free) → torch dtype (models)."""
    from escapestat.models.base import torch_dtype

    study = parse_study(FAST.replace("seed = 3", f"seed = 3\ndtype = \"{name}\""))
    assert study.run.item_bytes == item and torch_dtype(study) is dtype
    model, _ = _linear(FAST.replace("seed = 3", f"seed = 3\ndtype = \"{name}\""))(
        2, torch.Generator().manual_seed(0))
    assert model.order_parameter().dtype is dtype
