"""The two-layer transformer (Power et al., Grokfast) against plain ``nn.Module``s trained
by ``torch.optim``: float64, step for step, with AdamW and with Adam + coupled L2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from escapestat.models._optimizers import Adam, AdamW
from escapestat.models.grokking.transformer2.network import Transformer2Ensemble

P, D, HEADS, LAYERS, D_MLP, R = 11, 16, 4, 2, 32, 3


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(D, D_MLP), nn.GELU(), nn.Linear(D_MLP, D))

    def forward(self, x):
        mask = torch.ones(4, 4, dtype=torch.bool).triu(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Reference(nn.Module):
    """One replica as Grokfast's decoder writes it: [a, ∘, b, =] → logits at the end."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(P + 2, D), nn.Embedding(4, D)
        self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
        self.ln_f, self.head = nn.LayerNorm(D), nn.Linear(D, P, bias=False)

    def forward(self, pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        tokens = torch.stack([a, torch.full_like(a, P + 1), b, torch.full_like(a, P)], 1)
        x = self.tok(tokens) + self.pos.weight
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, -1]))


def reference_of(ens: Transformer2Ensemble, r: int) -> Reference:
    """Replica r of ``ens`` with its weights copied in."""
    w = dict(zip(ens.param_names, ens.params, strict=True))
    ref = Reference().double()
    with torch.no_grad():
        ref.tok.weight.copy_(w["W_E"][r])
        ref.pos.weight.copy_(w["W_pos"][r])
        for i, block in enumerate(ref.blocks):
            def g(name, i=i):
                return w[f"L{i}.{name}"][r]
            block.ln_1.weight.copy_(g("ln1_w"))
            block.ln_1.bias.copy_(g("ln1_b"))
            block.attn.in_proj_weight.copy_(g("W_qkv").T)
            block.attn.in_proj_bias.copy_(g("b_qkv"))
            block.attn.out_proj.weight.copy_(g("W_o").T)
            block.attn.out_proj.bias.copy_(g("b_o"))
            block.ln_2.weight.copy_(g("ln2_w"))
            block.ln_2.bias.copy_(g("ln2_b"))
            block.mlp[0].weight.copy_(g("W_1").T)
            block.mlp[0].bias.copy_(g("b_1"))
            block.mlp[2].weight.copy_(g("W_2").T)
            block.mlp[2].bias.copy_(g("b_2"))
        ref.ln_f.weight.copy_(w["ln_f_w"][r])
        ref.ln_f.bias.copy_(w["ln_f_b"][r])
        ref.head.weight.copy_(w["W_U"][r].T)
    return ref


def _perturbed(ens: Transformer2Ensemble, gen: torch.Generator) -> None:
    """LayerNorm weights and biases off their 1 and 0, so a swapped pair would show."""
    for name, p in zip(ens.param_names, ens.params, strict=True):
        if name.split(".")[-1].startswith(("ln", "b_")):
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("kind", ["adamw", "adam"])
def test_equals_plain_modules_step_for_step(kind):
    """Losses equal to 1e-12 at each of 20 steps and every weight to 1e-15 after them, but
    the attention's key bias, whose true gradient is 0 (softmax ignores a score shift
    common to all keys): both compute ~1e-18 of rounding there, which Adam divides by
    √v + ε and turns into ~1e-12 steps, different for each implementation."""
    gen = torch.Generator().manual_seed(0)
    ens = Transformer2Ensemble(R, P, D, HEADS, LAYERS, D_MLP, generator=gen, dtype=torch.float64)
    _perturbed(ens, gen)
    refs = [reference_of(ens, r) for r in range(R)]
    lr = torch.tensor([1e-3, 3e-3, 1e-2], dtype=torch.float64)
    wd = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    ours = (AdamW if kind == "adamw" else Adam)(ens.params, betas=(0.9, 0.98))
    torch_opt = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    theirs = [torch_opt(ref.parameters(), lr=float(lr[r]), betas=(0.9, 0.98),
                        weight_decay=float(wd[r])) for r, ref in enumerate(refs)]
    for _ in range(20):
        pairs = torch.randint(0, P, (R, 16, 2), generator=gen)
        labels = (pairs[..., 0] + pairs[..., 1]) % P
        loss, grads = ens.loss_and_grads(pairs, labels)
        ours.step(grads, lr, wd)
        for r, (ref, opt) in enumerate(zip(refs, theirs, strict=True)):
            opt.zero_grad()
            ref_loss = nn.functional.cross_entropy(ref(pairs[r]), labels[r])
            ref_loss.backward()
            opt.step()
            assert loss[r].item() == pytest.approx(ref_loss.item(), rel=1e-12)
    for r, ref in enumerate(refs):
        again = reference_of(ens, r)
        for (name, theirs_p), ours_p in zip(ref.named_parameters(), again.parameters(),
                                            strict=True):
            if name.endswith("in_proj_bias"):  # the key bias: see below
                key = slice(D, 2 * D)
                torch.testing.assert_close(ours_p[key], theirs_p[key], rtol=0, atol=1e-9)
                ours_p, theirs_p = ours_p[[*range(D), *range(2 * D, 3 * D)]], \
                    theirs_p[[*range(D), *range(2 * D, 3 * D)]]
            torch.testing.assert_close(ours_p, theirs_p, rtol=1e-10, atol=1e-12, msg=name)
    pairs = torch.randint(0, P, (R, 40, 2), generator=gen)
    labels = (pairs[..., 0] * pairs[..., 1]) % P
    with torch.no_grad():
        want = torch.stack([(refs[r](pairs[r]).argmax(-1) == labels[r]).double().mean()
                            for r in range(R)])
    torch.testing.assert_close(ens.accuracy(pairs, labels), want)


def test_keep_and_finite():
    ens = Transformer2Ensemble(4, P, D, HEADS, LAYERS, D_MLP, generator=torch.Generator())
    ens.params[0][2, 0, 0] = float("nan")
    assert ens.finite().tolist() == [True, True, False, True]
    kept = [p[[3, 0]].clone() for p in ens.params]
    ens.keep(torch.tensor([3, 0]))
    assert ens.replicas == 2 and all(torch.equal(a, b) for a, b in zip(ens.params, kept,
                                                                          strict=True))


STUDY = """
name = "t2"
[task]
operation = "mul"
p = 11
train_fraction = 0.7
[model]
kind = "transformer2"
d_model = 32
n_heads = 4
d_mlp = 64
[optimizer]
kind = "adamw"
[dynamics]
noise = "sgd"
lr = 1e-3
weight_decay = 0.1
batch_size = "full"
[escape]
commit_steps = 40
check_every = 20
[run]
replicas = 4
max_steps = 500
seed = 1
"""


def test_runs_through_the_engine_as_any_model(tmp_path):
    """The registry line is all the engine needs: a run fits x·y mod 11 (every replica
    reaches train accuracy 0.99 within 500 steps), with curves and the config hash."""
    from escapestat.config._study import parse_study
    from escapestat.engine._trials import run_study

    study = parse_study(STUDY)
    assert study.model.kind == "transformer2" and study.model.n_layers == 2
    result = run_study(study, tmp_path / "run", device="cpu")
    table = result.replicas
    assert len(table) == 4 and table["fit_time"].notna().all()
    assert table["fit_time"].max() <= 500
    assert set(result.curves["metric"]) >= {"train_accuracy", "test_accuracy", "weight_norm"}
    other = parse_study(STUDY.replace("n_heads = 4", "n_heads = 2"))
    assert other.config_hash() != study.config_hash()
