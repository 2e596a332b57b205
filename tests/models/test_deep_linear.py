"""The batched deep linear engine: moment-form gradients, samplers and Langevin noise."""

import pytest
import torch

from escapestat.models.deep_linear import _ensemble as E
from escapestat.models.deep_linear import _tasks as T


def _setup(depth=3, replicas=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = T.make_teacher([1.5, 1.0], 4, 3, rotate=True, generator=g, dtype=torch.float64)
    data = T.make_dataset(teacher, replicas, 32, 8, noise_std=0.1, generator=g)
    widths = [4] + [6, 5, 7][: depth - 1] + [3]
    model = E.DeepLinearEnsemble.random(replicas, widths, 1.0, generator=g, dtype=torch.float64)
    return g, teacher, data, model


def _autograd(model, x, y, beta):
    ws = [w.clone().requires_grad_() for w in model.weights]
    out = x
    for w in ws:
        out = out @ w.transpose(1, 2)
    loss = 0.5 * (out - y).square().sum(-1).mean(-1)
    loss = loss + 0.5 * beta * sum(w.square().sum((1, 2)) for w in ws)
    loss.sum().backward()
    return loss.detach(), [w.grad for w in ws]


@pytest.fixture(params=["bmm", "vector"])
def matmul_path(request, monkeypatch):
    """Run a test with bmm and with the replica-last vector ops (small nets, many replicas)."""
    if request.param == "vector":
        monkeypatch.setattr(E, "VECTOR_MIN_REPLICAS", 1)
    return request.param


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_moment_gradients_match_autograd(depth, matmul_path):
    _, _, data, model = _setup(depth)
    assert model.replica_last == (matmul_path == "vector")
    beta = torch.tensor([0.0, 0.1, 0.3, 1.0, 2.0], dtype=torch.float64)
    sxx, syx, syy = data.train_moments()
    loss, grads = _autograd(model, data.x_train, data.y_train, beta)
    for mine, ref in zip(model.gradients(sxx, syx, beta), grads, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.loss(sxx, syx, syy, beta), loss, rtol=1e-10, atol=1e-12)


def test_sgd_step_uses_per_replica_lr(matmul_path):
    _, _, data, model = _setup()
    before = [w.clone() for w in model.weights]
    lr = torch.tensor([0.0, 0.01, 0.0, 0.02, 0.0], dtype=torch.float64)
    sxx, syx, _ = data.train_moments()
    grads = model.gradients(sxx, syx, 0.1)
    E.sgd_step(model, sxx, syx, lr, 0.1)
    for w0, w, g in zip(before, model.weights, grads, strict=True):
        torch.testing.assert_close(w, w0 - lr.view(-1, 1, 1) * g)
    assert torch.equal(model.weights[0][0], before[0][0])


# ---------------------------------------------------------------------------- samplers

N_ID = 32  # samples per replica in the identifiable data set
EVERYTHING = 2**N_ID - 1


def _identifiable(replicas: int) -> T.Dataset:
    """Every replica gets the SAME n samples, x = 1 and y = 2^i (float64).

    Then B·Syx of a batch is the bit mask of the samples in it, exactly, so each minibatch's
    members can be read back from its moments.
    """
    x = torch.ones(replicas, N_ID, 1, dtype=torch.float64)
    y = (2.0 ** torch.arange(N_ID, dtype=torch.float64)).reshape(1, N_ID, 1)
    y = y.expand(replicas, N_ID, 1).clone()
    return T.Dataset(x, y, x[:, :1].clone(), y[:, :1].clone())


def _masks(syx: torch.Tensor, size: int) -> list[int]:
    """Per replica, the bit mask of a batch's members; checks the batch has ``size`` of them."""
    scaled = syx.flatten() * size
    masks = torch.round(scaled)
    assert (scaled - masks).abs().max() < 1e-3, "not a sum of distinct samples"
    out = [int(m) for m in masks.tolist()]
    assert [m.bit_count() for m in out] == [size] * len(out)
    return out


def _draw(sampler, sizes, batch=None) -> list[list[int]]:
    """len(sizes) minibatches: per batch, per replica, the members' bit mask."""
    return [_masks(sampler.next_moments(batch)[1], size) for size in sizes]


def _assert_partition(masks: list[int]) -> None:
    """The batches are disjoint and together hold every sample: each used exactly once."""
    seen = 0
    for m in masks:
        assert seen & m == 0, "a sample was drawn twice in one epoch"
        seen |= m
    assert seen == EVERYTHING, "a sample was left out of the epoch"


@pytest.fixture(params=["scatter", "gather", "reorder"])
def sampler_mode(request, monkeypatch):
    """MinibatchSampler's three ways to form moments: per-sample vectors summed by a scatter
    (CPU) or a gather (its CUDA way, run here on CPU), or the data reordered (large inputs)."""
    if request.param == "reorder":
        monkeypatch.setattr(E, "PER_SAMPLE_MAX", 0)
    return request.param


def _sampler(data, batch, mode, seed=0):
    sampler = E.MinibatchSampler(data, batch, generator=torch.Generator().manual_seed(seed))
    assert sampler.per_sample == (mode != "reorder")
    if mode == "gather":
        sampler.scatter = False
    assert sampler.scatter == (mode == "scatter")
    return sampler


@pytest.mark.parametrize(("batch", "sizes"), [(8, [8, 8, 8, 8]), (12, [12, 12, 8])])
def test_each_epoch_uses_every_sample_once(sampler_mode, batch, sizes):
    """Without replacement; a last, smaller batch when B does not divide n."""
    sampler = _sampler(_identifiable(4), batch, sampler_mode)
    for _ in range(3):
        epoch = _draw(sampler, sizes)
        for r in range(4):
            _assert_partition([m[r] for m in epoch])


def test_replicas_with_the_same_data_draw_different_minibatches(sampler_mode):
    """Each replica shuffles with its own permutation: one permutation shared by all would
    give every replica (same data) the same minibatch."""
    sampler = _sampler(_identifiable(6), 8, sampler_mode)
    for _ in range(2):
        for masks in _draw(sampler, [8] * 4):
            assert len(set(masks)) == 6


def test_every_epoch_reshuffles(sampler_mode):
    sampler = _sampler(_identifiable(3), 8, sampler_mode)
    epochs = [_draw(sampler, [8] * 4) for _ in range(3)]
    for r in range(3):
        orders = {tuple(batch[r] for batch in epoch) for epoch in epochs}
        assert len(orders) == 3, "an epoch repeated the previous epoch's order"


def test_same_seed_same_minibatches(sampler_mode):
    data = _identifiable(3)
    runs = []
    for seed in (5, 5, 6):
        sampler = _sampler(data, 12, sampler_mode, seed)
        runs.append(torch.stack([sampler.next_moments()[1] for _ in range(7)]))  # 2⅓ epochs
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_batch_size_can_change_between_calls(sampler_mode):
    """A new size mid-epoch carries on through the same permutation; what is left at the
    epoch's end is a last, smaller batch, then a reshuffle; B ≥ n is the full batch, which
    draws nothing and leaves the epoch where it was."""
    sampler = _sampler(_identifiable(3), 8, sampler_mode)
    sizes = [(None, 8), (5, 5), (5, 5), (N_ID + 1, N_ID), (8, 8), (5, 5), (5, 1)]
    epoch = []
    for batch, size in sizes:
        masks = _masks(sampler.next_moments(batch)[1], size)
        if size == N_ID:
            assert masks == [EVERYTHING] * 3
        else:
            epoch.append(masks)
    for r in range(3):
        _assert_partition([m[r] for m in epoch])
    fresh = _draw(sampler, [16, 16], batch=16)  # the next epoch, at yet another size
    for r in range(3):
        _assert_partition([m[r] for m in fresh])
    with pytest.raises(ValueError, match="batch size"):
        sampler.next_moments(0)


def test_minibatch_moments_average_to_the_training_set(sampler_mode):
    g, _, data, _ = _setup(replicas=3)
    sampler = _sampler(data, 8, sampler_mode)
    full_sxx, full_syx, _ = data.train_moments()
    for _ in range(2):
        moments = [sampler.next_moments() for _ in range(4)]  # 32 samples / B 8 = one epoch
        torch.testing.assert_close(sum(m[0] for m in moments) / 4, full_sxx)
        torch.testing.assert_close(sum(m[1] for m in moments) / 4, full_syx)


def test_keep_mid_epoch_continues_each_replicas_epoch(sampler_mode):
    sampler = _sampler(_identifiable(4), 8, sampler_mode)
    before = _draw(sampler, [8, 8])
    idx = torch.tensor([3, 1])
    sampler.keep(idx)
    after = _draw(sampler, [8, 8])
    for new, old in enumerate(idx.tolist()):
        _assert_partition([m[old] for m in before] + [m[new] for m in after])
    assert len(_draw(sampler, [8])[0]) == 2  # and a new epoch for the two


def test_full_batch_twin_and_keep():
    g, _, data, _ = _setup(replicas=4)
    sampler = E.MinibatchSampler(data, 10_000, generator=g)
    assert sampler.full
    torch.testing.assert_close(sampler.next_moments()[0], data.train_moments()[0])
    keep = torch.tensor([3, 1])
    expect = data.train_moments()[1][keep]
    sampler.keep(keep)
    torch.testing.assert_close(sampler.next_moments()[1], expect)
    assert data.replicas == 4  # the sampler keeps its own copy; the data set is its owner's


def test_fresh_sampler_takes_the_batch_size_per_call():
    g = torch.Generator().manual_seed(3)
    teacher = T.make_teacher([1.0, 0.5], 4, 3, generator=g, dtype=torch.float64)
    sampler = E.FreshSampler(teacher, 5, 16, generator=g)
    sxx, syx = sampler.next_moments()
    assert sxx.shape == (5, 4, 4) and syx.shape == (5, 3, 4)
    assert (torch.linalg.matrix_rank(sxx) == 4).all()
    assert (torch.linalg.matrix_rank(sampler.next_moments(2)[0]) == 2).all()  # two samples
    sampler.keep(torch.tensor([4, 1]))
    assert sampler.next_moments(1)[0].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="batch size"):
        sampler.next_moments(0)


def test_samplers_and_the_model_keep_replicas_in_place():
    g, teacher, data, model = _setup(replicas=4)
    samplers = [E.PopulationMoments(teacher, 4), E.FreshSampler(teacher, 4, 8, generator=g),
                E.MinibatchSampler(data, 8, generator=g)]
    idx = torch.tensor([2, 0])
    for sampler in samplers:
        assert isinstance(sampler, E.MomentSampler)
        sampler.next_moments()
        assert sampler.keep(idx) is None
        sxx, syx = sampler.next_moments(4)
        assert sxx.shape == (2, 4, 4) and syx.shape == (2, 3, 4)
    before = [w.clone() for w in model.weights]
    assert model.keep(idx) is None
    assert model.replicas == 2
    for w, w0 in zip(model.weights, before, strict=True):
        assert torch.equal(w, w0[idx])


@pytest.mark.parametrize("draw", [E.permutations, E._permutations_by_keys])
def test_permutations_are_uniform_and_independent(draw):
    """Each row uniform over the 3! orders; consecutive rows jointly uniform over 6 × 6."""
    perms = draw(12_000, 3, torch.Generator().manual_seed(11), "cpu")
    assert torch.equal(perms.sort(1).values, torch.arange(3).expand(12_000, 3))
    code = perms[:, 0] * 3 + perms[:, 1]  # which of the 6 orders
    _, ranks = torch.unique(code, return_inverse=True)
    singles = torch.bincount(ranks, minlength=6).double()
    pairs = torch.bincount(ranks[0::2] * 6 + ranks[1::2], minlength=36).double()
    chi2 = [((c - c.mean()) ** 2 / c.mean()).sum() for c in (singles, pairs)]
    assert chi2[0] < 20.5 and chi2[1] < 66.6  # χ² 99.9% points, 5 and 35 degrees of freedom


def test_replica_last_layout_while_small_nets_have_many_replicas():
    g = torch.Generator().manual_seed(4)
    r = E.VECTOR_MIN_REPLICAS
    small = E.DeepLinearEnsemble.random(2 * r, [2, 10, 10, 2], generator=g)
    before = [w.clone() for w in small.weights]
    assert small.replica_last
    assert all(w.permute(1, 2, 0).is_contiguous() for w in small.weights)
    small.keep(torch.arange(0, 2 * r, 2))
    assert small.replica_last and small.replicas == r
    assert all(w.permute(1, 2, 0).is_contiguous() for w in small.weights)
    small.keep(torch.arange(r - 1, -1, -1))  # r − 1 … 0: reversed, same count
    small.keep(torch.arange(1, r))  # one fewer than the threshold: bmm, as given
    assert not small.replica_last and all(w.is_contiguous() for w in small.weights)
    for w, w0 in zip(small.weights, before, strict=True):
        assert torch.equal(w, w0[torch.arange(0, 2 * r, 2).flip(0)[1:]])
    wide = E.DeepLinearEnsemble.random(2 * r, [64, 64, 64], generator=g)
    assert not wide.replica_last and wide.weights[0].is_contiguous()


def test_population_moments_and_mode_strengths():
    g = torch.Generator().manual_seed(1)
    teacher = T.make_teacher([2.0, 0.5], 5, 4, rotate=True, generator=g, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(teacher.u.T @ teacher.u, eye[:2, :2])
    sxx, syx = E.PopulationMoments(teacher, 3).next_moments()
    assert sxx.shape == (3, 5, 5) and syx.shape == (3, 4, 5)
    strengths = T.mode_strengths(syx, teacher)
    torch.testing.assert_close(strengths, torch.tensor([[2.0, 0.5]] * 3, dtype=torch.float64))


def test_aligned_start_has_requested_mode_strengths():
    g = torch.Generator().manual_seed(2)
    teacher = T.make_teacher([1.5, 1.25, 1.0], 3, 3, generator=g, dtype=torch.float64)
    amps = [1.1, 1.05, 0.0]
    model = E.DeepLinearEnsemble.aligned(4, teacher, [3, 3, 3, 3], amps, noise=0.0,
                                         dtype=torch.float64)
    strengths = T.mode_strengths(model.end_to_end(), teacher)
    torch.testing.assert_close(strengths[0], torch.tensor([a**3 for a in amps],
                                                          dtype=torch.float64))


def test_langevin_stationary_variance():
    """Depth 1 on the population loss is an OU process with a known discrete-time variance."""
    g = torch.Generator().manual_seed(5)
    teacher = T.make_teacher([1.0], 1, 1, dtype=torch.float64)
    r, lr, beta, temp = 4000, 0.1, 0.5, 0.02
    model = E.DeepLinearEnsemble([torch.zeros(r, 1, 1, dtype=torch.float64)])
    sxx, syx = E.PopulationMoments(teacher, r).next_moments()
    for _ in range(300):
        E.langevin_step(model, sxx, syx, lr, beta, temp, g)
    lam = 1.0 + beta  # curvature of ½(1 − w)² + (β/2) w²
    w = model.weights[0].flatten()
    # Exact for Euler–Maruyama: Var = T / (λ (1 − lr λ / 2)); mean 1/λ.
    var = temp / (lam * (1 - lr * lam / 2))
    assert float(w.mean()) == pytest.approx(1 / lam, abs=4 * (var / r) ** 0.5)
    assert float(w.var()) == pytest.approx(var, rel=0.07)  # sd of the sample var ≈ 2.2%


def test_langevin_same_seed_same_path():
    outs = []
    for _ in range(2):
        g, _, data, model = _setup(seed=9)
        sxx, syx, _ = data.train_moments()
        for _ in range(10):
            E.langevin_step(model, sxx, syx, 0.05, 0.1, torch.full((5,), 0.01,
                                                                     dtype=torch.float64), g)
        outs.append(model.end_to_end())
    assert torch.equal(outs[0], outs[1])


def test_divergence_flag():
    model = E.DeepLinearEnsemble([torch.tensor([[[1.0]], [[float("nan")]], [[1e9]]])])
    assert model.is_finite_and_bounded(1e6).tolist() == [True, False, False]


def test_subsample_keeps_distinct_samples():
    g, _, data, _ = _setup(replicas=2)
    small = T.subsample(data, 5, generator=g)
    assert small.x_train.shape == (2, 5, 4)
    for r in range(2):
        rows = {tuple(x.tolist()) for x in small.x_train[r]}
        pool = {tuple(x.tolist()) for x in data.x_train[r]}
        assert len(rows) == 5 and rows <= pool


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_gradients():
    _, _, data, model = _setup()
    sxx, syx, _ = data.train_moments()
    cpu = model.gradients(sxx, syx, 0.2)
    gpu_model = E.DeepLinearEnsemble([w.cuda() for w in model.weights])
    gpu = gpu_model.gradients(sxx.cuda(), syx.cuda(), 0.2)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-10, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampler_partitions_each_epoch_per_replica():
    cpu = _identifiable(4)
    data = T.Dataset(*(t.cuda() for t in (cpu.x_train, cpu.y_train, cpu.x_test, cpu.y_test)))
    sampler = E.MinibatchSampler(data, 12, generator=torch.Generator("cuda").manual_seed(0))
    assert sampler.per_sample and not sampler.scatter  # the gather path
    epochs = [_draw(sampler, [12, 12, 8]) for _ in range(2)]
    for epoch in epochs:
        for r in range(4):
            _assert_partition([m[r] for m in epoch])
        assert all(len(set(masks)) == 4 for masks in epoch)
    assert epochs[0] != epochs[1]
