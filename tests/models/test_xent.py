"""Softmax cross-entropy and its gradient in float32 where the label's probability is near 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from escapestat.models import _native as native
from escapestat.models._xent import cross_entropy, xent_and_delta
from escapestat.models.grokking.mlp._ensemble import MLPEnsemble

FLOOR32 = math.log(torch.finfo(torch.float32).tiny) + 8 * math.log(10)
FLOOR64 = math.log(torch.finfo(torch.float64).tiny) + 8 * math.log(10)


def confident_logits(margin: float = 17.0):
    """Logits whose label leads by ``margin``: 1 − p_y ≈ 1e-7 … 1e-2, float32's blind spot."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 23, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 23, (3, 50), generator=g)
    logits.scatter_add_(2, labels[..., None], torch.full((3, 50, 1), margin,
                                                         dtype=torch.float64))
    return logits, labels


def test_float64_matches_log_softmax():
    logits, labels = confident_logits(margin=2.0)
    nll, delta = xent_and_delta(logits, labels, -1, FLOOR64)
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    torch.testing.assert_close(nll, ref.view(labels.shape), rtol=1e-12, atol=0)
    torch.testing.assert_close(delta, logits.softmax(-1) - F.one_hot(labels, 23),
                               rtol=0, atol=1e-15)
    # the classes along another dimension
    nll_t, delta_t = xent_and_delta(logits.transpose(1, 2), labels, 1, FLOOR64)
    torch.testing.assert_close(nll_t, nll, rtol=1e-14, atol=0)
    torch.testing.assert_close(delta_t, delta.transpose(1, 2), rtol=0, atol=1e-15)


def test_float32_keeps_its_digits_when_the_label_is_nearly_certain():
    logits, labels = confident_logits()
    ref_nll, ref_delta = xent_and_delta(logits, labels, -1, FLOOR64)
    assert float(ref_nll.min()) < 1e-7  # the hard case is there
    nll, delta = xent_and_delta(logits.float(), labels, -1, FLOOR32)
    label = F.one_hot(labels, 23).bool()
    assert float(((nll.double() - ref_nll) / ref_nll).abs().max()) < 1e-5
    assert float(((delta.double() - ref_delta)[label] / ref_delta[label]).abs().max()) < 1e-5
    # log_softmax then exp, the usual route, loses these digits (why this module exists)
    logp = torch.log_softmax(logits.float(), -1)
    usual = -logp.gather(-1, labels[..., None]).squeeze(-1)
    assert float(((usual.double() - ref_nll) / ref_nll).abs().max()) > 0.1


def test_subnormal_probabilities_are_floored_and_nans_propagate():
    logits = torch.tensor([[0.0, -95.0, -95.0, float("nan")], [0.0, -95.0, -95.0, -95.0]])
    nll, delta = xent_and_delta(logits, torch.tensor([0, 0]), -1, FLOOR32)
    tiny = torch.finfo(torch.float32).tiny
    assert torch.isnan(nll[0]) and torch.isfinite(nll[1]) and float(nll[1]) > 0
    assert not ((delta[1] != 0) & (delta[1].abs() < tiny)).any()


@pytest.mark.parametrize("route", ["torch", "native"])
def test_mlp_gradients_of_a_fitted_model_are_accurate_in_float32(route):
    """A fitted MLP (label logits ≥ 16 ahead, loss ≤ 1e-6): both routes' float32 gradients
    against float64. Rounding 1 + ρ before subtracting 1 (or log_softmax then exp) gave
    errors of 25–125% of the gradient's size here."""
    if route == "native" and native.kernels() is None:
        pytest.skip(f"no C kernels here: {native.why_not()}")
    g = torch.Generator().manual_seed(1)
    model = MLPEnsemble.random(4, 23, 128, "quadratic", generator=g, dtype=torch.float64)
    table = torch.cartesian_prod(torch.arange(23), torch.arange(23)).expand(4, -1, -1)
    top2 = model.logits(table).topk(2, -1)
    margin = top2.values[..., 0] - top2.values[..., 1]
    keep = margin.topk(64, -1).indices  # each replica's 64 most confident pairs
    pairs, labels = table.gather(1, keep[..., None].expand(-1, -1, 2)), top2.indices[..., 0]
    labels = labels.gather(1, keep)
    model.weight.mul_(16 / float(margin.gather(1, keep).min()))  # every margin ≥ 16
    model.backend = "torch"
    ref_loss, ref_grads = model.loss_and_grads(pairs, labels)
    ref_grads = [t.clone() for t in ref_grads]
    assert float(ref_loss.max()) < 1e-6
    low = MLPEnsemble(model.embed.float(), model.weight.float())
    low.backend = route
    loss, grads = low.loss_and_grads(pairs, labels)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=0)
    for mine, theirs in zip(grads, ref_grads, strict=True):
        assert float((mine.double() - theirs).abs().max() / theirs.abs().max()) < 1e-4


def test_cross_entropy_is_a_drop_in_for_f_cross_entropy():
    logits, labels = confident_logits(margin=2.0)
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = cross_entropy(mine, labels)
    ref = F.cross_entropy(theirs.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    (2.5 * loss).backward()
    (2.5 * ref).backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="do not match"):
        cross_entropy(logits, labels[:, :3])


def test_cross_entropy_keeps_float32_gradients_of_a_fitted_batch():
    logits, labels = confident_logits()
    low = logits.float().requires_grad_()
    cross_entropy(low, labels).backward()
    high = logits.clone().requires_grad_()
    cross_entropy(high, labels).backward()
    label = F.one_hot(labels, 23).bool()
    err = ((low.grad.double() - high.grad)[label] / high.grad[label]).abs().max()
    assert float(err) < 1e-5
    usual = logits.float().requires_grad_()
    F.cross_entropy(usual.flatten(0, 1), labels.flatten()).backward()
    usual_err = ((usual.grad.double() - high.grad)[label] / high.grad[label]).abs().max()
    assert float(usual_err) > 0.1  # what it replaces
