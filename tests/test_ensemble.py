"""The batched deep linear engine: moment-form gradients, samplers and Langevin noise."""

import pytest
import torch

from escapestat import ensemble as E
from escapestat import tasks as T


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


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_moment_gradients_match_autograd(depth):
    _, _, data, model = _setup(depth)
    beta = torch.tensor([0.0, 0.1, 0.3, 1.0, 2.0], dtype=torch.float64)
    sxx, syx, syy = data.train_moments()
    loss, grads = _autograd(model, data.x_train, data.y_train, beta)
    for mine, ref in zip(model.gradients(sxx, syx, beta), grads, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.loss(sxx, syx, syy, beta), loss, rtol=1e-10, atol=1e-12)


def test_sgd_step_uses_per_replica_lr():
    _, _, data, model = _setup()
    before = [w.clone() for w in model.weights]
    lr = torch.tensor([0.0, 0.01, 0.0, 0.02, 0.0], dtype=torch.float64)
    sxx, syx, _ = data.train_moments()
    grads = model.gradients(sxx, syx, 0.1)
    E.sgd_step(model, sxx, syx, lr, 0.1)
    for w0, w, g in zip(before, model.weights, grads, strict=True):
        torch.testing.assert_close(w, w0 - lr.view(-1, 1, 1) * g)
    assert torch.equal(model.weights[0][0], before[0][0])


def test_minibatches_cover_each_sample_once_per_epoch():
    g, _, data, _ = _setup(replicas=3)
    sampler = E.MinibatchSampler(data, 8, generator=g)
    sxx_sum = torch.zeros_like(data.train_moments()[0])
    syx_sum = torch.zeros_like(data.train_moments()[1])
    for _ in range(4):  # 32 samples / B 8 = one epoch
        sxx, syx = sampler.next_moments()
        sxx_sum += sxx / 4
        syx_sum += syx / 4
    full_sxx, full_syx, _ = data.train_moments()
    torch.testing.assert_close(sxx_sum, full_sxx)
    torch.testing.assert_close(syx_sum, full_syx)
    # Replicas draw different minibatches.
    sxx, _ = sampler.next_moments()
    assert not torch.allclose(sxx[0], sxx[1])


def test_full_batch_twin_and_select():
    g, _, data, _ = _setup(replicas=4)
    sampler = E.MinibatchSampler(data, 10_000, generator=g)
    assert sampler.full
    torch.testing.assert_close(sampler.next_moments()[0], data.train_moments()[0])
    keep = torch.tensor([3, 1])
    expect = data.train_moments()[1][keep]
    sampler.select(keep)
    torch.testing.assert_close(sampler.next_moments()[1], expect)


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
