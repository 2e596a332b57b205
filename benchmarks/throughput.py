"""Replica-steps per second of the batched engine against the usual ways to train an ensemble.

Same work for all three: R deep linear nets, each taking one SGD step per step on its own
minibatch of B samples drawn without replacement from its own 512-sample training set,
lr 0.05, L2 β 0.01. (a) escapestat's engine (moment-form gradients, design §5); (b) a
naive Python loop over R ``nn.Module``s with ``torch.optim.SGD``; (c) ``torch.func.vmap``
over ``functional_call`` + ``grad`` (PyTorch's documented model-ensembling recipe). The
naive loop is linear in R, so for large R it is timed on a subset (stated in the table).
Also prints the engine's achieved GFLOP/s at width 128 beside a large matmul's, and last
one JSON line for R = 4096 at paper size. Targets (design §8): ≥ 200× naive, ≥ 2× vmap,
≥ 40% of the matmul figure.

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from escapestat.ensemble import DeepLinearEnsemble, MinibatchSampler, sgd_step
from escapestat.tasks import make_dataset, make_teacher

LR, BETA, N_TRAIN = 0.05, 0.01, 512
PAPER = ([2, 10, 10, 2], (0.9, 0.8))
WIDE = ([128, 128, 128, 128], tuple(1.0 + 0.1 * k for k in range(8)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


REPEATS = 5


def _timed(fn, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Seconds per call of fn after a warm-up: the median of REPEATS timed blocks.

    A shared 2-core VM varies by ±15% from one block to the next; the median is stable.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(REPEATS):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def _problem(replicas, widths, strengths, device, dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    teacher = make_teacher(strengths, widths[0], widths[-1], rotate=True, generator=g,
                           dtype=dtype, device=device)
    data = make_dataset(teacher, replicas, N_TRAIN, 1, noise_std=0.1, generator=g)
    model = DeepLinearEnsemble.random(replicas, widths, 1.0, generator=g, dtype=dtype,
                                      device=device)
    return g, data, model


def engine_rate(replicas, widths, strengths, batch, steps, device) -> float:
    g, data, model = _problem(replicas, widths, strengths, device)
    sampler = MinibatchSampler(data, batch, generator=g)

    def step():
        sxx, syx = sampler.next_moments()
        sgd_step(model, sxx, syx, LR, BETA)

    return replicas / _timed(step, steps, device)


def _modules(model: DeepLinearEnsemble, count: int) -> list[nn.Sequential]:
    nets = []
    for r in range(count):
        layers = []
        for w in model.weights:
            lin = nn.Linear(w.shape[2], w.shape[1], bias=False, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[r])
            layers.append(lin)
        nets.append(nn.Sequential(*layers))
    return nets


def _loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - y).square().sum(-1).mean()


class _Batches:
    """Per-replica minibatch indices without replacement, reshuffled each epoch."""

    def __init__(self, replicas: int, batch: int, device, generator):
        self.replicas, self.batch, self.device, self.gen = replicas, batch, device, generator
        self.order, self.pos = None, N_TRAIN

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > N_TRAIN:
            keys = torch.rand(self.replicas, N_TRAIN, generator=self.gen, device=self.device)
            self.order, self.pos = keys.argsort(1), 0
        idx = self.order[:, self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


def naive_rate(replicas, widths, strengths, batch, steps, device) -> float:
    g, data, model = _problem(replicas, widths, strengths, device)
    nets = _modules(model, replicas)
    opts = [torch.optim.SGD(n.parameters(), lr=LR, weight_decay=BETA) for n in nets]
    batches = _Batches(replicas, batch, device, g)

    def step():
        idx = batches.next()
        for r, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            x, y = data.x_train[r, idx[r]], data.y_train[r, idx[r]]
            opt.zero_grad()
            _loss(net(x), y).backward()
            opt.step()

    return replicas / _timed(step, steps, device, warmup=1)


def vmap_rate(replicas, widths, strengths, batch, steps, device) -> float:
    g, data, model = _problem(replicas, widths, strengths, device)
    nets = _modules(model, replicas)
    params, _ = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")
    batches = _Batches(replicas, batch, device, g)
    rows = torch.arange(replicas, device=device)[:, None]

    def loss(p, x, y):
        return _loss(functional_call(base, p, (x,)), y)

    grads = vmap(grad(loss))

    def step():
        idx = batches.next()
        gr = grads(params, data.x_train[rows, idx], data.y_train[rows, idx])
        for k in params:
            params[k] = params[k] - LR * (gr[k] + BETA * params[k])

    return replicas / _timed(step, steps, device)


def step_flops(widths, batch) -> float:
    """Flops of one moment-form SGD step per replica (matmuls 2mnk, update 4 per weight)."""
    d0, d_out = widths[0], widths[-1]
    flops = 2 * batch * d0 * d0 + 2 * batch * d_out * d0  # Sxx, Syx
    for w_in, w_out in zip(widths[1:-1], widths[2:], strict=True):
        flops += 2 * w_out * w_in * d0  # prefix products W_l ··· W_1
    flops += 2 * d_out * d0 * d0  # G = P Sxx − Syx
    for layer in range(len(widths) - 1, 0, -1):
        w_out = widths[layer]
        if layer > 1:
            flops += 2 * w_out * d0 * widths[layer - 1]  # grad = back · prefixᵀ
            flops += 2 * widths[layer - 1] * w_out * d0  # back ← Wᵀ back
    params = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return flops + 4 * params


def matmul_gflops(device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n**3 / _timed(lambda: a @ b, reps, device) / 1e9


def check_same_update(device) -> float:
    """Engine and naive modules take the same step from the same init and minibatch (float64)."""
    widths, strengths, replicas, batch = PAPER[0], PAPER[1], 4, 16
    g, data, model = _problem(replicas, widths, strengths, device, dtype=torch.float64)
    nets = _modules(model, replicas)
    opts = [torch.optim.SGD(n.parameters(), lr=LR, weight_decay=BETA) for n in nets]
    batches = _Batches(replicas, batch, device, g)
    rows = torch.arange(replicas, device=device)[:, None]
    for _ in range(5):
        idx = batches.next()
        x, y = data.x_train[rows, idx], data.y_train[rows, idx]
        sgd_step(model, x.transpose(1, 2) @ x / batch, y.transpose(1, 2) @ x / batch, LR, BETA)
        for r, (net, opt) in enumerate(zip(nets, opts, strict=True)):
            opt.zero_grad()
            _loss(net(x[r]), y[r]).backward()
            opt.step()
    worst = 0.0
    for r, net in enumerate(nets):
        for w, lin in zip(model.weights, net, strict=True):
            worst = max(worst, float((w[r] - lin.weight.detach()).abs().max()))
    assert worst < 1e-12, f"engine and nn.Module updates differ by {worst:g}"
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer steps, R ≤ 1024")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--replicas", type=int, nargs="+", default=None,
                        help="replica counts at paper size (default 64 1024 4096)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    worst = check_same_update(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {torch.get_num_threads()} threads")
    print(f"device: {where}; torch {torch.__version__}; float32; B = 64; lr {LR}, β {BETA}")
    print(f"check: engine = nn.Module SGD after 5 steps (float64), max |Δw| = {worst:.1e}\n")

    sizes = args.replicas or ([64, 1024] if args.quick else [64, 1024, 4096])
    engine_steps = 8 if args.quick else 48  # whole epochs (512 / 64 = 8 steps each)
    naive_subset, naive_steps = 64, (1 if args.quick else 2)
    vmap_steps = 2 if args.quick else 8
    widths, strengths = PAPER
    print(f"{'net':<18}{'R':>6}  {'engine':>12}  {'naive':>10}  {'vmap':>10}  "
          f"{'× naive':>8}  {'× vmap':>7}   (replica-steps/s)")
    results = {}
    for replicas in sizes:
        with torch.no_grad():
            eng = engine_rate(replicas, widths, strengths, 64, engine_steps, device)
        sub = min(replicas, naive_subset)
        nai = naive_rate(sub, widths, strengths, 64, naive_steps, device)
        vm = vmap_rate(replicas, widths, strengths, 64, vmap_steps, device)
        results[replicas] = (eng, nai, vm)
        note = f"  naive timed on {sub}" if sub < replicas else ""
        print(f"{'2→10→10→2':<18}{replicas:>6}  {eng:>12,.0f}  {nai:>10,.0f}  {vm:>10,.0f}  "
              f"{eng / nai:>7,.0f}×  {eng / vm:>6.1f}×{note}")

    wide_r = 64 if args.quick else 256
    wide_widths, wide_strengths = WIDE
    with torch.no_grad():
        wide = engine_rate(wide_r, wide_widths, wide_strengths, 64, 8, device)
    gflops = wide * step_flops(wide_widths, 64) / 1e9
    mm = matmul_gflops(device)
    print(f"\nwidth 128 (128→128→128→128), B 64, R {wide_r}: engine {wide:,.0f} replica-steps/s "
          f"= {gflops:.1f} GFLOP/s; 2048² matmul {mm:.1f} GFLOP/s "
          f"({100 * gflops / mm:.0f}% of it)")

    top = 4096 if 4096 in results else max(sizes)
    eng, nai, vm = results[top]
    verdict = [("≥ 200× naive", eng / nai >= 200), ("≥ 2× vmap", eng / vm >= 2),
               ("≥ 40% of matmul", gflops >= 0.4 * mm)]
    print(f"targets at R {top}: " + "; ".join(
        f"{name}: {'met' if ok else 'MISSED'}" for name, ok in verdict))
    print(json.dumps({"speedup_vs_naive": round(eng / nai, 1),
                      "speedup_vs_vmap": round(eng / vm, 2), "gflops": round(gflops, 2),
                      "matmul_gflops": round(mm, 2)}))


if __name__ == "__main__":
    main()
