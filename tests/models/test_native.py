"""The C kernels (escapestat/native.py) against the torch route and autograd, and their fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from escapestat.models import _native as native
from escapestat.models._optimizers import AdamW
from escapestat.models.grokking.mlp._ensemble import MLPEnsemble
from escapestat.models.grokking.transformer._ensemble import TransformerEnsemble

needs_kernels = pytest.mark.skipif(native.kernels() is None,
                                   reason=f"no C kernels here: {native.why_not()}")


def ensemble(p: int, width: int, activation: str, dtype=torch.float64, replicas: int = 3,
             seed: int = 0) -> MLPEnsemble:
    g = torch.Generator().manual_seed(seed)
    return MLPEnsemble.random(replicas, p, width, activation, init_scale=1.5, generator=g,
                              dtype=dtype)


def batch(p: int, replicas: int, size: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, p, (replicas, size, 2), generator=g),
            torch.randint(0, p, (replicas, size), generator=g))


def both_routes(model: MLPEnsemble, pairs, labels):
    """(loss, grads) from the C kernel and from the torch route, on the same parameters."""
    assert model.backend == "native"
    loss, grads = model.loss_and_grads(pairs, labels)
    loss, grads = loss.clone(), [g.clone() for g in grads]
    model.backend = "torch"
    ref_loss, ref_grads = model.loss_and_grads(pairs, labels)
    model.backend = "native"
    return (loss, grads), (ref_loss, [g.clone() for g in ref_grads])


# Shapes that reach every tile of the kernel: classes p → vectors per row (float64, 8
# lanes: 7 → 1, 23 → 3, 29 → 4, 59 → 8: the untiled path), width → column blocks (8:
# one vector; 64: one block of 8; 72: a block and a vector), odd and even batch sizes.
SHAPES = [(7, 8, 11), (23, 64, 64), (29, 72, 5), (59, 16, 1), (3, 8, 2)]


@needs_kernels
@pytest.mark.parametrize("activation", ["quadratic", "relu"])
@pytest.mark.parametrize("p,width,size", SHAPES)
def test_kernel_equals_autograd_in_float64(activation, p, width, size):
    model = ensemble(p, width, activation)
    pairs, labels = batch(p, 3, size)
    (loss, grads), (ref_loss, ref_grads) = both_routes(model, pairs, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for mine, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-13)
    # and the torch route against autograd itself, so neither can drift with the other
    leaves = [t.clone().requires_grad_() for t in model.params]
    z = (leaves[0].gather(1, pairs[..., :1].expand(-1, -1, width))
         + leaves[0].gather(1, (pairs[..., 1:] + p).expand(-1, -1, width)))
    h = z * z if activation == "quadratic" else F.relu(z)
    logits = h @ leaves[1].mT
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    auto = torch.autograd.grad(nll.view(labels.shape).mean(1).sum(), leaves)
    for mine, theirs in zip(grads, auto, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-13)


@needs_kernels
@pytest.mark.parametrize("p,width,size", [(23, 128, 64), (23, 16, 370), (59, 144, 33)])
def test_kernel_equals_torch_route_in_float32(p, width, size):
    model = ensemble(p, width, "quadratic", dtype=torch.float32, replicas=5)
    pairs, labels = batch(p, 5, size)
    (loss, grads), (ref_loss, ref_grads) = both_routes(model, pairs, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-6)
    for mine, theirs in zip(grads, ref_grads, strict=True):
        scale = float(theirs.abs().max())
        assert float((mine - theirs).abs().max()) <= 2e-6 * scale


@needs_kernels
def test_kernel_is_the_default_route_where_it_fits():
    assert ensemble(7, 8, "quadratic").backend == "native"
    assert ensemble(7, 16, "relu", dtype=torch.float32).backend == "native"
    assert ensemble(7, 8, "quadratic", dtype=torch.float32).backend == "torch"  # 8 % 16
    assert ensemble(7, 8, "gelu").backend == "torch"
    biased = MLPEnsemble.random(2, 7, 8, bias=True, dtype=torch.float64)
    assert biased.backend == "torch"


@needs_kernels
def test_a_non_finite_logit_gives_a_nan_loss():
    """A NaN logit of a class that is not the label: the max and the exp would pass over it,
    so the kernel checks every logit (a diverged replica must not look finite)."""
    model = ensemble(7, 16, "quadratic", dtype=torch.float32)
    model.weight[1, 3, 0] = float("nan")  # replica 1's logit of class 3
    pairs, _ = batch(7, 3, 4)
    loss, _ = model.loss_and_grads(pairs, torch.zeros(3, 4, dtype=torch.long))
    assert torch.isfinite(loss[[0, 2]]).all() and torch.isnan(loss[1])


@needs_kernels
def test_saturated_softmax_leaves_no_subnormal_gradients_in_the_kernel():
    """As tests/models/test_mlp.py checks for the torch route: probabilities e^-95 would be
    subnormal in float32; the floor keeps δ normal and still pushes W down."""
    p, width = 5, 16
    model = MLPEnsemble.random(2, p, width)
    assert model.backend == "native"
    model.embed.fill_(0.5)
    model.weight.fill_(-95 / width)
    model.weight[:, 0] = 0.0
    pairs = torch.randint(0, p, (2, 16, 2), generator=torch.Generator().manual_seed(4))
    _, grads = model.loss_and_grads(pairs, torch.zeros(2, 16, dtype=torch.long))
    tiny = torch.finfo(torch.float32).tiny
    for grad in grads:
        assert torch.isfinite(grad).all()
        assert not ((grad != 0) & (grad.abs() < tiny)).any()
    assert (grads[1][:, 1:] > 0).all()


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    model = ensemble(23, 128, "quadratic", dtype=torch.float32, replicas=7)
    pairs, labels = batch(23, 7, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [t.clone() for t in (model.loss_and_grads(pairs, labels)[0], *model.grads)]
        torch.set_num_threads(2)
        two = [model.loss_and_grads(pairs, labels)[0], *model.grads]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamw_kernel_takes_torch_optims_steps(dtype):
    """Separate parameter tensors of several shapes (a transformer's layout), per-replica lr
    and decay, one parameter undecayed: each replica as torch.optim.AdamW would step it."""
    g = torch.Generator().manual_seed(5)
    replicas = 3
    shapes = [(4, 8), (5,), (2, 3, 7)]
    params = [torch.randn(replicas, *s, generator=g, dtype=dtype) for s in shapes]
    decay = [True, False, True]
    ours = AdamW(params, betas=(0.9, 0.98), eps=1e-8, decay_mask=decay)
    assert ours.backend == "native"
    lr = torch.tensor([0.05, 0.01, 0.2], dtype=dtype)
    wd = torch.tensor([1.0, 0.5, 0.0], dtype=dtype)
    copies = [[torch.nn.Parameter(t[r].clone()) for t in params] for r in range(replicas)]
    theirs = [torch.optim.AdamW([{"params": [c for c, d in zip(cs, decay, strict=True) if d],
                                  "weight_decay": float(wd[r])},
                                 {"params": [c for c, d in zip(cs, decay, strict=True) if not d],
                                  "weight_decay": 0.0}],
                                lr=float(lr[r]), betas=(0.9, 0.98), eps=1e-8)
              for r, cs in enumerate(copies)]
    start = [t.clone() for t in params]
    for _ in range(6):
        grads = [torch.randn(t.shape, generator=g, dtype=dtype) for t in params]
        ours.step(grads, lr, wd)
        for r, (cs, opt) in enumerate(zip(copies, theirs, strict=True)):
            for c, grad in zip(cs, grads, strict=True):
                c.grad = grad[r].clone()
            opt.step()
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                          "atol": 1e-6}
    for k, t in enumerate(params):
        for r in range(replicas):
            torch.testing.assert_close(t[r], copies[r][k].detach(), **tol)
    assert max(float((t - s).abs().max()) for t, s in zip(params, start, strict=True)) > 0.1


def test_without_the_kernels_everything_runs_on_torch(monkeypatch):
    monkeypatch.setenv("ESCAPESTAT_NATIVE", "0")
    native.reset()
    try:
        assert native.kernels() is None
        assert "ESCAPESTAT_NATIVE" in native.why_not()
        model = ensemble(7, 8, "quadratic")
        assert model.backend == "torch"
        assert AdamW(model.params).backend == "torch"
        pairs, labels = batch(7, 3, 5)
        loss, _ = model.loss_and_grads(pairs, labels)
        assert torch.isfinite(loss).all()
    finally:
        monkeypatch.delenv("ESCAPESTAT_NATIVE")
        native.reset()


def test_no_compiler_is_a_fallback_with_its_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("ESCAPESTAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither cc, gcc nor clang
    native.reset()
    try:
        assert native.kernels() is None
        assert "no C compiler" in native.why_not()
        assert ensemble(7, 8, "relu").backend == "torch"
    finally:
        monkeypatch.undo()
        native.reset()


def test_a_compiler_that_fails_is_a_fallback(monkeypatch, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("ESCAPESTAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(broken))
    native.reset()
    try:
        assert native.kernels() is None
        assert "did not compile" in native.why_not()
        assert "broken" in native.why_not()
        assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built left
    finally:
        monkeypatch.undo()
        native.reset()


@needs_kernels
def test_a_build_is_cached_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("ESCAPESTAT_CACHE_DIR", str(tmp_path))
    native.reset()
    try:
        first = native.kernels()
        assert first is not None and first.path.parent == tmp_path / "native"
        stamp = first.path.stat().st_mtime_ns
        native.reset()
        again = native.kernels()
        assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
        assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [
            first.path.name, first.path.name + ".sha256"]
    finally:
        monkeypatch.undo()
        native.reset()


@needs_kernels
def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path, size=45_000):
    """A cache cut to 4,096 or 45,000 bytes killed every later run with SIGBUS (exit 135):
    its checksum no longer matches, so it is rebuilt. In a subprocess: a regression would
    kill the process that loads it."""
    import subprocess
    import sys

    env = {**os.environ, "ESCAPESTAT_CACHE_DIR": str(tmp_path)}
    code = ("from escapestat.models import _native as native; k = native.kernels(); "
            "print(k.path if k else native.why_not())")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=600)
    path = Path(first.stdout.strip())
    assert first.returncode == 0 and path.is_file(), first.stderr
    whole = path.read_bytes()
    path.write_bytes(whole[:size])
    again = subprocess.run([sys.executable, "-c", code],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.returncode, again.stderr)
    assert path.read_bytes() == whole


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["quadratic", "relu"])
def test_accuracy_kernel_equals_the_torch_route(dtype, activation):
    """150 pairs per replica: two blocks of 64 and a partial one; labels half right."""
    model = ensemble(23, 16, activation, dtype=dtype, replicas=4)
    pairs, labels = batch(23, 4, 150)
    model.backend = "torch"
    labels[:, :75] = model.logits(pairs)[:, :75].argmax(-1)
    ref = model.accuracy(pairs, labels)
    model.backend = "native"
    got = model.accuracy(pairs, labels)
    assert torch.equal(got, ref) and (got >= 0.5).all() and (got < 1).all()


@needs_kernels
def test_accuracy_kernel_breaks_ties_and_nans_as_torch_argmax():
    model = ensemble(7, 16, "quadratic", dtype=torch.float32, replicas=2)
    model.weight.zero_()  # every logit 0: argmax is class 0
    model.weight[1, 4, 0] = float("nan")  # replica 1: a NaN logit is the argmax
    pairs, _ = batch(7, 2, 9)
    for label, expected in ((0, [1.0, 0.0]), (4, [0.0, 1.0])):
        labels = torch.full((2, 9), label)
        model.backend = "torch"
        assert model.accuracy(pairs, labels).tolist() == expected
        model.backend = "native"
        assert model.accuracy(pairs, labels).tolist() == expected


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p,d,heads,batch_size", [(5, 8, 1, 1), (11, 16, 2, 7), (23, 32, 4, 64),
                                                  (7, 64, 2, 9), (5, 64, 1, 3)])
def test_attention_kernels_equal_the_torch_route(dtype, p, d, heads, batch_size):
    """The transformer's loss and every gradient by the C attention and by torch ops; the
    batch holds pairs with a = b, whose two positions read the same token row. Head widths
    8, 32 and 64 reach the kernel's plain loops and its register tiles (1, 2, 4 vectors)."""
    g = torch.Generator().manual_seed(11)
    ens = TransformerEnsemble(3, p, d, heads, 12, generator=g, dtype=dtype)
    for name, w in zip(ens.param_names, ens.params, strict=True):
        if name.startswith("b_"):
            w.normal_(0, 0.3, generator=g)
    pairs, labels = batch(p, 3, batch_size, seed=2)
    pairs[:, 0, 1] = pairs[:, 0, 0]
    assert ens.backend == "native"
    loss, grads = ens.loss_and_grads(pairs, labels)
    loss, grads = loss.clone(), [t.clone() for t in grads]
    ens.backend = "torch"
    ref_loss, ref_grads = ens.loss_and_grads(pairs, labels)
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                          "atol": 1e-6}
    torch.testing.assert_close(loss, ref_loss, **tol)
    for name, mine, theirs in zip(ens.param_names, grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, theirs, **tol, msg=name)
        assert float(theirs.abs().max()) > 0, name  # every gradient is exercised


def test_the_portable_build_gives_the_same_numbers(monkeypatch, tmp_path):
    """The last flag set (no -march=native, no OpenMP: one thread), as a compiler without
    either would build it, against the torch route."""
    monkeypatch.setenv("ESCAPESTAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "FLAG_SETS", native.FLAG_SETS[-1:])
    native.reset()
    try:
        kernels = native.kernels()
        if kernels is None:
            pytest.skip(f"no C kernels here: {native.why_not()}")
        assert not kernels.openmp and "-march=native" not in kernels.flags
        assert "one thread" in kernels.describe()
        model = ensemble(23, 64, "relu")
        pairs, labels = batch(23, 3, 40)
        (loss, grads), (ref_loss, ref_grads) = both_routes(model, pairs, labels)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
        for mine, theirs in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-13)
    finally:
        monkeypatch.undo()
        native.reset()


@needs_kernels
def test_out_of_range_indices_are_an_error_not_a_stray_read():
    model = ensemble(7, 8, "quadratic")
    pairs, labels = batch(7, 3, 5)
    bad = pairs.clone()
    bad[1, 2, 1] = 7
    with pytest.raises(IndexError, match=r"pairs must lie in \[0, 7\)"):
        model.loss_and_grads(bad, labels)
    with pytest.raises(IndexError, match="labels"):
        model.accuracy(pairs, labels - 1)
    with pytest.raises(ValueError, match="pairs of shape"):  # shapes the kernel reads by
        model.loss_and_grads(pairs[:, :4], labels)
    ens = TransformerEnsemble(2, 5, 8, 1, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="tokens of shape"):
        native.kernels().attn_forward(torch.cat(ens.params[:2], 1), *ens.params[2:5],
                                      torch.zeros(2, 4, 2, dtype=torch.long), 1.0)


def test_the_fall_back_to_the_torch_route_is_said_once(cli, tmp_path, monkeypatch):
    """No C kernels (here turned off): the run works on the torch route, ~4× slower on a
    CPU, and says so in one note with the reason, not silently."""
    study = tmp_path / "tiny.toml"
    study.write_text("[task]\noperation = 'add'\np = 7\ntrain_fraction = 0.7\n"
                     "[model]\nkind = 'mlp'\nwidth = 8\n[dynamics]\nnoise = 'sgd'\n"
                     "lr = 1e-3\nweight_decay = 1.0\nbatch_size = 'full'\n"
                     "[run]\nreplicas = 2\nmax_steps = 100\n")
    monkeypatch.setenv("ESCAPESTAT_NATIVE", "0")
    native.reset()
    try:
        code, _, err = cli("run", study, "--out", tmp_path / "r", "--device", "cpu")
    finally:
        monkeypatch.undo()
        native.reset()
    assert code == 0, err
    notes = [line for line in err.splitlines() if "C kernels are not in use" in line]
    assert len(notes) == 1 and "turned off by ESCAPESTAT_NATIVE" in notes[0]
    assert notes[0].startswith("note:")
