"""The batched one-layer transformer against a plain per-replica ``nn.Module``."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from escapestat.models import _native as native
from escapestat.models._optimizers import AdamW
from escapestat.models.grokking.transformer._ensemble import TransformerEnsemble

P, D, H, D_MLP = 23, 128, 4, 512  # Nanda et al.'s sizes at a small modulus


class Reference(nn.Module):
    """One replica as Nanda et al. write it: all three positions, causal mask, last-position
    readout (over the p answers, or all p + 1 tokens with ``classes``). The last position
    may attend to every position, so in one layer the mask cannot change these logits
    (removing it passes the tests; an anti-causal mask fails them)."""

    def __init__(self, p, d_model, n_heads, d_mlp, classes=None):
        super().__init__()
        self.p, self.n_heads = p, n_heads
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.zeros(3, d_model))
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model, bias=False)
                                          for _ in range(4))
        self.mlp_in, self.mlp_out = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, classes or p, bias=False)

    def forward(self, pairs):  # [B, 2]
        tokens = torch.cat([pairs, torch.full_like(pairs[:, :1], self.p)], 1)
        x = self.embed(tokens) + self.pos  # [B, 3, d]
        b, s, d = x.shape

        def heads(lin):
            return lin(x).view(b, s, self.n_heads, -1).transpose(1, 2)  # [B, H, 3, dh]

        q, k, v = heads(self.q), heads(self.k), heads(self.v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + self.o((attn @ v).transpose(1, 2).reshape(b, s, d))
        x = x + self.mlp_out(F.relu(self.mlp_in(x)))
        return self.unembed(x)[:, -1]


# Each ensemble parameter as (reference tensor getter, ensemble → reference layout).
LAYOUT = {
    "W_E": (lambda m: m.embed.weight, lambda w: w),
    "W_pos": (lambda m: m.pos, lambda w: w),
    "W_Q": (lambda m: m.q.weight, lambda w: w.mT.flatten(0, 1)),
    "W_K": (lambda m: m.k.weight, lambda w: w.mT.flatten(0, 1)),
    "W_V": (lambda m: m.v.weight, lambda w: w.mT.flatten(0, 1)),
    "W_O": (lambda m: m.o.weight, lambda w: w.flatten(0, 1).T),
    "W_in": (lambda m: m.mlp_in.weight, lambda w: w.T),
    "b_in": (lambda m: m.mlp_in.bias, lambda w: w),
    "W_out": (lambda m: m.mlp_out.weight, lambda w: w.T),
    "b_out": (lambda m: m.mlp_out.bias, lambda w: w),
    "W_U": (lambda m: m.unembed.weight, lambda w: w.T),
}


def _reference(ens, r):
    """Replica r of ``ens`` as a ``Reference`` module (weights copied in)."""
    classes = ens.params[ens.param_names.index("W_U")].shape[-1]
    m = Reference(ens.p, D, H, D_MLP, classes).to(torch.float64)
    with torch.no_grad():
        for name, w in zip(ens.param_names, ens.params, strict=True):
            get, layout = LAYOUT[name]
            get(m).copy_(layout(w[r]))
    return m


def _setup(replicas=3, batch=16, seed=0, classes=None):
    g = torch.Generator().manual_seed(seed)
    ens = TransformerEnsemble(replicas, P, D, H, D_MLP, generator=g, dtype=torch.float64,
                              classes=classes)
    with torch.no_grad():  # nonzero biases, so their paths are tested too
        for name, w in zip(ens.param_names, ens.params, strict=True):
            if name.startswith("b_"):
                w.normal_(0, 0.3, generator=g)
    pairs = torch.randint(0, P, (replicas, batch, 2), generator=g)
    return ens, pairs, (pairs[..., 0] + pairs[..., 1]) % P


def test_forward_matches_per_replica_module():
    ens, pairs, _ = _setup()
    logits = ens.forward(pairs)
    assert logits.shape == (3, 16, P)
    for r in range(3):
        with torch.no_grad():
            ref = _reference(ens, r)(pairs[r])
        torch.testing.assert_close(logits[r], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_gradients_match_per_replica_autograd(backend):
    """Both routes of the attention: batched torch ops and the C kernels (native.py)."""
    if backend == "native" and native.kernels() is None:
        pytest.skip(f"no C kernels here: {native.why_not()}")
    ens, pairs, labels = _setup()
    ens.backend = backend
    loss, grads = ens.loss_and_grads(pairs, labels)
    assert not any(w.requires_grad for w in ens.params)
    assert all(g.shape == w.shape and g.is_contiguous()
               for g, w in zip(grads, ens.params, strict=True))
    for r in range(3):
        m = _reference(ens, r)
        ref_loss = F.cross_entropy(m(pairs[r]), labels[r])
        ref_loss.backward()
        torch.testing.assert_close(loss[r], ref_loss.detach(), rtol=0, atol=1e-10)
        for name, g in zip(ens.param_names, grads, strict=True):
            get, layout = LAYOUT[name]
            torch.testing.assert_close(layout(g[r]), get(m).grad, rtol=0, atol=1e-10, msg=name)


def test_replicas_are_independent():
    ens, pairs, labels = _setup()
    loss, grads = ens.loss_and_grads(pairs, labels)
    with torch.no_grad():
        for w in ens.params:
            w[1] += 0.5 * torch.randn_like(w[1])
    loss2, grads2 = ens.loss_and_grads(pairs, labels)
    assert torch.equal(loss2[[0, 2]], loss[[0, 2]]) and loss2[1] != loss[1]
    for g, g2 in zip(grads, grads2, strict=True):
        assert torch.equal(g2[[0, 2]], g[[0, 2]])


def test_keep_keeps_the_chosen_replicas_in_order():
    ens, pairs, _ = _setup(replicas=4)
    before = ens.forward(pairs)
    idx = torch.tensor([3, 1])
    ens.keep(idx)
    assert ens.replicas == 2 and all(w.shape[0] == 2 for w in ens.params)
    torch.testing.assert_close(ens.forward(pairs[idx]), before[idx], rtol=0, atol=0)


def test_accuracy_matches_a_per_replica_loop():
    ens, pairs, labels = _setup(replicas=3, batch=37)
    labels = labels.clone()
    labels[:, :20] = ens.forward(pairs)[:, :20].argmax(-1)  # some right, the rest by chance
    acc = ens.accuracy(pairs, labels, chunk=8)  # 37 = 4 chunks of 8 and one of 5
    for r in range(3):
        with torch.no_grad():
            guess = _reference(ens, r)(pairs[r]).argmax(-1)
        assert acc[r].item() == pytest.approx((guess == labels[r]).double().mean().item())
    assert (acc >= 20 / 37).all()
    assert torch.equal(ens.accuracy(pairs, labels), acc)  # one chunk (the default)


def test_finite_flags_the_replica_with_a_nan():
    ens, _, _ = _setup()
    assert ens.finite().tolist() == [True, True, True]
    ens.params[ens.param_names.index("b_out")][1, 5] = float("nan")
    assert ens.finite().tolist() == [True, False, True]


def test_init_is_nanda_style_and_reproducible():
    def build(seed):
        return TransformerEnsemble(8, P, generator=torch.Generator().manual_seed(seed),
                                   init_scale=0.5)

    a, b = build(1), build(1)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert a.decay_mask == [not n.startswith("b_") for n in a.param_names]
    for name, w in zip(a.param_names, a.params, strict=True):
        assert w.dtype == torch.float32 and w.shape[0] == 8
        expected = 0.0 if name.startswith("b_") else 0.5 / math.sqrt(P + 1 if name == "W_U" else D)
        assert w.std(unbiased=False).item() == pytest.approx(expected, rel=0.1, abs=1e-12), name
    assert not torch.equal(a.params[0][0], a.params[0][1])  # replicas draw their own


def test_rejects_mismatched_replicas_and_heads():
    ens, pairs, _ = _setup()
    with pytest.raises(ValueError, match="replicas"):
        ens.forward(pairs[:2])
    with pytest.raises(ValueError, match="n_heads"):
        TransformerEnsemble(2, P, d_model=10, n_heads=4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradients_on_cuda_equal_the_cpu():
    """CUDA runs the torch route (gathers, one-hot matmuls); the CPU its default route."""
    ens, pairs, labels = _setup()
    loss, grads = ens.loss_and_grads(pairs, labels)
    loss, grads = loss.clone(), [g.clone() for g in grads]
    on_gpu = TransformerEnsemble(3, P, D, H, D_MLP, dtype=torch.float64, device="cuda")
    on_gpu.params = [w.cuda() for w in ens.params]
    assert on_gpu.backend == "torch"
    loss_g, grads_g = on_gpu.loss_and_grads(pairs.cuda(), labels.cuda())
    torch.testing.assert_close(loss_g.cpu(), loss, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(ens.param_names, grads_g, grads, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_p_plus_1_readout_steps_as_a_plain_module_with_adamw(backend):
    """Nanda et al.'s readout over all p + 1 tokens: two AdamW steps (lr 1e-3, wd 1, betas
    (0.9, 0.98)) of the ensemble equal torch.optim.AdamW on the plain module, float64."""
    if backend == "native" and native.kernels() is None:
        pytest.skip(f"no C kernels here: {native.why_not()}")
    ens, pairs, labels = _setup(replicas=2, batch=64, classes=P + 1)
    ens.backend = backend
    assert ens.forward(pairs).shape == (2, 64, P + 1)
    refs = [_reference(ens, r) for r in range(2)]
    before = [w.clone() for w in ens.params]
    opt = AdamW(ens.params, betas=(0.9, 0.98), eps=1e-8)
    lr, wd = torch.full((2,), 1e-3, dtype=torch.float64), torch.full((2,), 1.0,
                                                                    dtype=torch.float64)
    theirs = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98),
                                eps=1e-8) for m in refs]
    for _ in range(2):
        opt.step(ens.loss_and_grads(pairs, labels)[1], lr, wd)
        for r, (m, o) in enumerate(zip(refs, theirs, strict=True)):
            o.zero_grad()
            F.cross_entropy(m(pairs[r]), labels[r]).backward()
            o.step()
    w_u = ens.param_names.index("W_U")
    assert float((ens.params[w_u][:, :, P] - before[w_u][:, :, P]).abs().amax()) > 1e-3, \
        "the '=' column never moved: the check would not see the extra class"
    for r, m in enumerate(refs):
        for name, w in zip(ens.param_names, ens.params, strict=True):
            get, layout = LAYOUT[name]
            torch.testing.assert_close(layout(w[r]), get(m).detach(), rtol=0, atol=1e-12,
                                       msg=name)


def test_readout_must_be_p_or_p_plus_1():
    with pytest.raises(ValueError, match="classes must be p"):
        TransformerEnsemble(1, P, D, H, D_MLP, classes=P + 2)
