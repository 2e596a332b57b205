"""The MLP ensemble's explicit backward, and its training steps against plain nn.Modules."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from testdata import TESTS
from torch import nn

from escapestat.errors import EscapestatError
from escapestat.models import _native as native
from escapestat.models._optimizers import SGD, AdamW
from escapestat.models.grokking._modular import MinibatchPairs, make_task
from escapestat.models.grokking.mlp._ensemble import ACTIVATIONS, MLPEnsemble

P, WIDTH = 7, 6


class PlainMLP(nn.Module):
    """One replica written plainly: σ(E_a[a] + E_b[b] + c) → nn.Linear to p logits."""

    def __init__(self, p: int, width: int, activation: str, bias: bool):
        super().__init__()
        self.embed_a, self.embed_b = nn.Embedding(p, width), nn.Embedding(p, width)
        self.hidden_bias = nn.Parameter(torch.zeros(width)) if bias else None
        self.out = nn.Linear(width, p, bias=bias)
        self.activation = activation

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        z = self.embed_a(pairs[:, 0]) + self.embed_b(pairs[:, 1])
        if self.hidden_bias is not None:
            z = z + self.hidden_bias
        h = {"quadratic": lambda: z**2, "relu": lambda: F.relu(z),
             "gelu": lambda: F.gelu(z)}[self.activation]()
        return self.out(h)


def plain_copies(model: MLPEnsemble, bias: bool) -> list[PlainMLP]:
    p, out = model.p, []
    for r in range(model.replicas):
        m = PlainMLP(p, model.width, model.activation, bias).double()
        with torch.no_grad():
            m.embed_a.weight.copy_(model.embed[r, :p])
            m.embed_b.weight.copy_(model.embed[r, p:])
            m.out.weight.copy_(model.weight[r])
            if bias:
                m.hidden_bias.copy_(model.hidden_bias[r])
                m.out.bias.copy_(model.out_bias[r])
        out.append(m)
    return out


def assert_same(model: MLPEnsemble, plain: list[PlainMLP], bias: bool) -> None:
    for r, m in enumerate(plain):
        theirs = [torch.cat([m.embed_a.weight, m.embed_b.weight]), m.out.weight]
        if bias:
            theirs += [m.hidden_bias, m.out.bias]
        for mine, other in zip(model.params, theirs, strict=True):
            torch.testing.assert_close(mine[r], other.detach(), rtol=1e-10, atol=1e-12)


def model_and_batch(activation, bias, replicas=3, batch=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLPEnsemble.random(replicas, P, WIDTH, activation, init_scale=1.3, bias=bias,
                               generator=g, dtype=torch.float64)
    if bias:  # non-zero biases, so their gradients are tested too
        for t in model.params[2:]:
            t.normal_(generator=g)
    pairs = torch.randint(0, P, (replicas, batch, 2), generator=g)
    labels = torch.randint(0, P, (replicas, batch), generator=g)
    return model, pairs, labels


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("embed_grad", ["index_add", "onehot"])
def test_explicit_gradients_equal_autograd(activation, bias, embed_grad):
    model, pairs, labels = model_and_batch(activation, bias)
    model.embed_grad = embed_grad
    loss, grads = model.loss_and_grads(pairs, labels)
    for r, m in enumerate(plain_copies(model, bias)):
        ref = F.cross_entropy(m(pairs[r]), labels[r])
        torch.testing.assert_close(loss[r], ref.detach(), rtol=1e-12, atol=1e-14)
        ref.backward()
        theirs = [torch.cat([m.embed_a.weight.grad, m.embed_b.weight.grad]), m.out.weight.grad]
        if bias:
            theirs += [m.hidden_bias.grad, m.out.bias.grad]
        for mine, other in zip(grads, theirs, strict=True):
            torch.testing.assert_close(mine[r], other, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("route", ["torch", "native"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("bias", [False, True])
def test_training_takes_the_same_steps_as_separate_modules(optimizer, bias, route):
    """Both routes (the C kernels where they run: width 8 fits float64's 8 lanes, no bias)."""
    if route == "native" and native.kernels() is None:
        pytest.skip(f"no C kernels here: {native.why_not()}")
    g = torch.Generator().manual_seed(7)
    replicas = 3
    task = make_task("add", P, replicas, 0.5, generator=g)  # 24 training pairs
    width = 8 if route == "native" else WIDTH
    model = MLPEnsemble.random(replicas, P, width, "quadratic", bias=bias, generator=g,
                               dtype=torch.float64)
    assert model.backend == ("native" if route == "native" and not bias else "torch")
    plain = plain_copies(model, bias)
    lr = torch.tensor([0.05, 0.02, 0.1], dtype=torch.float64)
    wd = torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64)
    if optimizer == "adamw":
        ours = AdamW(model.params, betas=(0.9, 0.98), eps=1e-8)
        ours.backend = "native" if route == "native" else "torch"
        theirs = [torch.optim.AdamW(m.parameters(), lr=float(lr[r]), betas=(0.9, 0.98),
                                    eps=1e-8, weight_decay=float(wd[r]))
                  for r, m in enumerate(plain)]
    else:
        ours = SGD(model.params, momentum=0.9)
        theirs = [torch.optim.SGD(m.parameters(), lr=float(lr[r]), momentum=0.9,
                                  weight_decay=float(wd[r])) for r, m in enumerate(plain)]
    start = [t.clone() for t in model.params]
    batches = MinibatchPairs(task, 10, g)
    for _ in range(5):  # 10 + 10 + 4, then a new epoch
        pairs, labels = batches.next_batch()
        _, grads = model.loss_and_grads(pairs, labels)
        ours.step(grads, lr, wd)
        for r, (m, opt) in enumerate(zip(plain, theirs, strict=True)):
            opt.zero_grad()
            F.cross_entropy(m(pairs[r]), labels[r]).backward()
            opt.step()
        assert_same(model, plain, bias)
    moved = max(float((t - t0).abs().max()) for t, t0 in zip(model.params, start, strict=True))
    assert moved > 1e-2  # the comparison is not vacuous


def test_accuracy_equals_a_per_replica_loop_in_chunks():
    g = torch.Generator().manual_seed(3)
    task = make_task("add", P, 4, 0.6, generator=g)
    model = MLPEnsemble.random(4, P, WIDTH, "relu", generator=g, dtype=torch.float64)
    pairs, labels = task.test_pairs(), task.test_labels()
    got = model.accuracy(pairs, labels, chunk=3)
    for r, m in enumerate(plain_copies(model, False)):
        with torch.no_grad():
            hit = (m(pairs[r]).argmax(-1) == labels[r]).double().mean()
        assert got[r] == pytest.approx(float(hit))
    torch.testing.assert_close(model.accuracy(pairs, labels), got)
    assert torch.equal(model.logits(pairs).argmax(-1) == labels,
                       torch.stack([plain_copies(model, False)[r](pairs[r]).argmax(-1)
                                    == labels[r] for r in range(4)]))


def test_init_scale_and_layout():
    model = MLPEnsemble.random(64, 23, 128, init_scale=2.0, generator=torch.Generator()
                               .manual_seed(0))
    assert model.embed.shape == (64, 46, 128) and model.weight.shape == (64, 23, 128)
    assert float(model.embed.std()) == pytest.approx(2.0 / math.sqrt(2), rel=0.02)
    assert float(model.weight.std()) == pytest.approx(2.0 / math.sqrt(128), rel=0.02)
    assert model.decay_mask() == [True, True]
    biased = MLPEnsemble.random(2, 5, 4, bias=True)
    assert biased.decay_mask(biases=False) == [True, True, False, False]
    assert not biased.hidden_bias.any() and not biased.out_bias.any()


def test_finite_flags_each_replica():
    model, _, _ = model_and_batch("quadratic", True)
    model.out_bias[1, 2] = float("nan")
    model.embed[2, 0, 0] = float("inf")
    assert model.finite().tolist() == [True, False, False]


def test_keep_shrinks_the_same_tensors():
    model, pairs, labels = model_and_batch("gelu", True, replicas=4)
    loss, grads = model.loss_and_grads(pairs, labels)
    loss, grads = loss.clone(), [g.clone() for g in grads]
    held = list(model.params)
    idx = torch.tensor([3, 1])
    model.keep(idx)
    assert all(a is b for a, b in zip(held, model.params, strict=True))
    kept_loss, kept = model.loss_and_grads(pairs[idx], labels[idx])
    torch.testing.assert_close(kept_loss, loss[idx])
    for mine, full in zip(kept, grads, strict=True):
        torch.testing.assert_close(mine, full[idx])


def test_saturated_softmax_leaves_no_subnormal_gradients():
    """Logits 95 apart: softmax probabilities e^-95 ≈ 5e-42, subnormal in float32."""
    p, width = 5, 8
    model = MLPEnsemble.random(2, p, width)
    model.embed.fill_(0.5)  # z = 1, h = 1 for every pair
    model.weight.fill_(-95 / width)
    model.weight[:, 0] = 0.0  # logits (0, −95, −95, …)
    pairs = torch.randint(0, p, (2, 16, 2), generator=torch.Generator().manual_seed(4))
    labels = torch.zeros(2, 16, dtype=torch.long)
    _, grads = model.loss_and_grads(pairs, labels)
    tiny = torch.finfo(torch.float32).tiny
    for grad in grads:
        assert torch.isfinite(grad).all()
        assert not ((grad != 0) & (grad.abs() < tiny)).any()
    assert (grads[1][:, 1:] > 0).all()  # the floored probabilities still push W down


def test_unknown_activation_is_a_one_line_error():
    with pytest.raises(EscapestatError, match="quadratic, relu, gelu"):
        MLPEnsemble.random(2, 5, 4, activation="tanh")


def test_the_torch_route_repeats_bit_for_bit_at_one_and_two_threads(tmp_path):
    """The torch route (CUDA's, and the CPU's without a compiler) picked index_add_ at one
    thread and the one-hot bmm at two, so a run's result depended on the thread count."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "from escapestat.models.grokking.mlp.model import MLPTrial as GrokTrial\n"
        "from escapestat.config._study import conditions, parse_study\n"
        "from escapestat.engine._trials import HyperSchedules\n"
        "from testdata import GROK\n"
        "study = parse_study(GROK.replace('p = 23', 'p = 11').replace('batch_size = 64', "
        "'batch_size = 16'))\n"
        "conds = conditions(study) * 4\n"
        "hyper = HyperSchedules(conds, torch.float32, 'cpu')\n"
        "g = torch.Generator().manual_seed(0)\n"
        "trial = GrokTrial(study, conds, g, torch.device('cpu'), 16)\n"
        "trial.net.backend = 'torch'\n"
        "for t in range(20):\n"
        "    trial.step(t, hyper.at(t))\n"
        "torch.save([p.clone() for p in trial.net.params], sys.argv[2])\n")
    outs = []
    for threads in (1, 2):
        out = tmp_path / f"p{threads}.pt"
        done = subprocess.run([sys.executable, "-c", code, str(threads), str(out)],
                              capture_output=True, text=True, timeout=300,
                              cwd=str(TESTS),
                              env={**os.environ, "ESCAPESTAT_NATIVE": "0"})
        assert done.returncode == 0, done.stderr
        outs.append(torch.load(out))
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))
