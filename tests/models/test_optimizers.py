"""Fused per-replica AdamW and SGD take torch.optim's steps, replica by replica."""

from __future__ import annotations

import pytest
import torch

from escapestat.errors import EscapestatError
from escapestat.models._optimizers import SGD, AdamW, flat_view, keep_packed_, pack

R = 3
LR = torch.tensor([1e-2, 3e-2, 5e-3], dtype=torch.float64)
WD = torch.tensor([0.1, 1.0, 0.0], dtype=torch.float64)
MASK = [True, False, True]  # a weight matrix, a bias, an embedding


def start(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(R, 4, 5), (R, 6), (R, 7, 2)]
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def gradients(params, step):
    """Deterministic, parameter-dependent 'gradients' (so a wrong update changes them)."""
    return [torch.sin(p * (step + 1)) + 0.1 * p for p in params]


def schedule(step):
    """Per-replica lr and weight decay that change every step (a schedule)."""
    return LR * (1 + 0.1 * step), WD * (1 - 0.05 * step)


def torch_reference(kind, params, replica, **kw):
    """One replica's tensors as leaf parameters with torch's optimizer, one group per tensor."""
    leaves = [torch.nn.Parameter(p[replica].clone()) for p in params]
    groups = [{"params": [leaf], "weight_decay": 0.0} for leaf in leaves]
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.SGD
    return leaves, cls(groups, lr=1.0, **kw)


def torch_step(leaves, opt, replica, step):
    lr, wd = schedule(step)
    for leaf, grad, group, decay in zip(leaves, gradients(leaves, step), opt.param_groups,
                                        MASK, strict=True):
        leaf.grad = grad.detach()
        group["lr"] = float(lr[replica])
        group["weight_decay"] = float(wd[replica]) if decay else 0.0
    opt.step()


def run_and_compare(ours, params, kind, replicas, steps, first_step=0, refs=None, **kw):
    refs = refs or {r: torch_reference(kind, params, r, **kw) for r in replicas}
    for step in range(first_step, first_step + steps):
        lr, wd = schedule(step)
        rows = torch.tensor(replicas)
        ours.step(gradients(params, step), lr[rows], wd[rows])
        for pos, r in enumerate(replicas):
            torch_step(*refs[r], r, step)
            for mine, theirs in zip(params, refs[r][0], strict=True):
                torch.testing.assert_close(mine[pos], theirs.detach(), rtol=1e-12, atol=1e-14)
    return refs


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_per_replica(packed, fused):
    params = pack(start()) if packed else start()
    opt = AdamW(params, betas=(0.9, 0.98), eps=1e-8, decay_mask=MASK)
    opt._fused = fused and opt._fused
    run_and_compare(opt, params, "adamw", [0, 1, 2], steps=6, betas=(0.9, 0.98), eps=1e-8)
    assert opt._fused == (fused and hasattr(torch, "_fused_adamw_"))  # the path meant was taken


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch_per_replica(momentum):
    params = pack(start(1))
    opt = SGD(params, momentum=momentum, decay_mask=MASK)
    run_and_compare(opt, params, "sgd", [0, 1, 2], steps=6, momentum=momentum)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_keep_continues_the_kept_replicas(kind):
    params = pack(start(2))
    kw = {"betas": (0.9, 0.98)} if kind == "adamw" else {"momentum": 0.9}
    opt = AdamW(params, decay_mask=MASK, **kw) if kind == "adamw" else SGD(params, decay_mask=MASK,
                                                                          **kw)
    refs = run_and_compare(opt, params, kind, [0, 1, 2], steps=3, **kw)
    idx = torch.tensor([2, 0])
    held = list(params)
    keep_packed_(params, idx)
    opt.keep(idx)
    assert all(a is b for a, b in zip(held, opt.params, strict=True))  # same objects, shrunk
    assert params[0].shape[0] == 2 and flat_view(params) is not None
    run_and_compare(opt, params, kind, [2, 0], steps=3, first_step=3, refs=refs, **kw)


def test_float_lr_and_default_mask_decay_everything():
    params = start(3)
    ours, theirs = AdamW(params), [torch.nn.Parameter(p.clone()) for p in params]
    ref = torch.optim.AdamW(theirs, lr=0.01, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5)
    for step in range(3):
        ours.step(gradients(params, step), 0.01, 0.5)
        for t, g in zip(theirs, gradients(theirs, step), strict=True):
            t.grad = g.detach()
        ref.step()
    for mine, other in zip(params, theirs, strict=True):
        torch.testing.assert_close(mine, other.detach(), rtol=1e-12, atol=1e-14)


def test_pack_and_flat_view():
    tensors = start(4)
    packed = pack(tensors)
    assert all(torch.equal(a, b) for a, b in zip(tensors, packed, strict=True))
    flat = flat_view(packed)
    assert flat is not None and flat.numel() == sum(t.numel() for t in tensors)
    flat.zero_()
    assert all(not t.any() for t in packed)  # a view, not a copy
    assert flat_view(tensors) is None  # separate allocations
    assert flat_view([packed[1], packed[0]]) is None  # out of order


def test_mismatched_lists_are_one_line_errors():
    params = start()
    with pytest.raises(EscapestatError, match="decay_mask has 2 entries for 3 parameters"):
        AdamW(params, decay_mask=[True, False])
    with pytest.raises(EscapestatError, match="2 gradients for 3 parameters"):
        SGD(params).step(params[:2], 0.1, 0.0)
