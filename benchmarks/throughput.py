"""Replica-steps per second of escapestat's batched engine against two usual ensemble recipes.

Why: the escape-time studies need thousands of replicas × millions of SGD steps, and the
design (§5, §8) claims that training R deep linear nets as one batched model from minibatch
moments is ≥ 200× faster than a Python loop of ``nn.Module``s and ≥ 2× faster than the
``torch.func.vmap`` ensembling recipe, and that at width 128 it runs at ≥ 40% of the
machine's large-matmul GFLOP/s. This script measures those claims in one process.

What: the same work for all three implementations. R deep linear nets, each with its own
weights and its own 512-sample training set (teacher y = A x + 0.1 ε), each taking one SGD
step (lr 0.05, L2 β 0.01, loss (1/2B) Σ‖y − W_L···W_1 x‖² + (β/2) Σ‖W_l‖²) per step on its
own minibatch of B = 64 samples drawn without replacement, reshuffled per replica each epoch.
All three draw each epoch's per-replica permutations with the same function,
``escapestat.ensemble.permutations`` (on CPU one ``torch.randperm`` per replica, the fastest
exact way measured), inside the timed steps, so the shuffle costs each the same per replica:

  (a) engine: ``MinibatchSampler.next_moments()`` + ``sgd_step``. At paper size the sampler
      sums per-sample moment vectors (x xᵀ, y xᵀ, formed once when the sampler is built,
      untimed like the baselines' module construction) into every minibatch of an epoch
      with one scatter-add per epoch; the step is the moment-form gradient (design §5),
      done with bmm at R 64 and, for a net this small, as vector ops over replicas from
      ``VECTOR_MIN_REPLICAS`` (512) on. At width 128 the sampler reorders the data each
      epoch and forms XᵀX/B, YᵀX/B per step, and the step is bmm;
  (b) naive:  a Python loop over R ``nn.Sequential``s of bias-free ``nn.Linear``s, each with
      its own ``torch.optim.SGD(weight_decay=β)``: index its minibatch, forward, loss,
      backward, step. It is linear in R, so for R > 64 it is timed on 64 of the R replicas
      (said so), drawing permutations for those 64;
  (c) vmap:   ``vmap(grad(loss))`` over ``functional_call`` of a meta-device module with
      ``stack_module_state`` parameters (PyTorch's model-ensembling recipe), the [R, B]
      minibatches gathered by advanced indexing, and a manual in-place SGD update with
      weight decay.

The sampler's rules (each replica its own permutation, every sample once per epoch, a new
permutation every epoch) are checked in tests/test_ensemble.py, not here.

Sizes: the paper's 2 → 10 → 10 → 2 (teacher strengths 0.9, 0.8) at R = 64, 1024, 4096; and
128 → 128 → 128 → 128 (an 8-mode teacher, B 64) at R = 256, where the engine's GFLOP/s
(flops of the moment-form step counted analytically, see ``step_flops``) is set beside a
2048 × 2048 float32 matmul's. Before timing, the three are checked (float64, untimed) to
produce the same weights after 12 steps from the same init and the same minibatch indices
(``check_agreement``: 512 replicas, so the engine's code path is the one timed at large R).

Timing: float32; warm-up of one epoch; then ``--repeats`` blocks of whole epochs per
implementation, interleaved (engine, vmap, naive, engine, …) so that drift on a shared
machine hits all alike; each figure is the median block. ``time.perf_counter``; CUDA is
synchronised around each block. The last line is one JSON object: speedups at R = 4096
(paper size; the largest R run with ``--quick``) and the GFLOP/s at width 128. Run it on
an idle machine: on 2 cores, while another process holds one, each of torch's 2-thread
parallel regions can wait a scheduler slice (ms) for its second thread; that hits the
engine's many medium-sized ops far more than the naive loop's tiny ones (measured: the
engine's step 1.2 ms idle, up to 250 ms with one competing process).

Grokking section (after the linear one; ``--no-grokking`` skips it): the MLP and
transformer engines on modular addition against their naive and vmap baselines, as
``benchmarks/grok_throughput.py`` runs them alone (its docstring says how); its figures
join the JSON line as ``mlp_speedup_vs_naive``, ``mlp_speedup_vs_vmap``, ``mlp_gflops``
and ``transformer_speedup_vs_naive``.

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--quick] [--steps N]
                                    [--threads N] [--repeats N] [--no-grokking]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from grok_throughput import grokking_section
from timing import mark, measure, pick_device
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from escapestat.ensemble import (
    VECTOR_MIN_REPLICAS,
    DeepLinearEnsemble,
    MinibatchSampler,
    permutations,
    sgd_step,
)
from escapestat.tasks import make_dataset, make_teacher

LR, BETA = 0.05, 0.01
N_TRAIN, BATCH, NOISE = 512, 64, 0.1
EPOCH = N_TRAIN // BATCH  # steps per epoch; timed blocks are whole epochs
NAIVE_SUBSET = 64
TARGET_NAIVE, TARGET_VMAP, TARGET_MATMUL = 200.0, 2.0, 0.40
MATMUL_N = 2048


@dataclass(frozen=True)
class Net:
    label: str
    widths: tuple[int, ...]
    strengths: tuple[float, ...]


PAPER = Net("2→10→10→2", (2, 10, 10, 2), (0.9, 0.8))
WIDE = Net("128→128→128→128", (128, 128, 128, 128), (3.0, 2.5, 2.0, 1.6, 1.3, 1.0, 0.8, 0.6))


# ---------------------------------------------------------------------------- set-up


def make_problem(net: Net, replicas: int, device: torch.device, dtype=torch.float32, seed=0):
    """Teacher, per-replica training sets and a Gaussian init, all from one seeded generator."""
    g = torch.Generator(device=device).manual_seed(seed)
    teacher = make_teacher(net.strengths, net.widths[0], net.widths[-1], rotate=True,
                           generator=g, dtype=dtype, device=device)
    data = make_dataset(teacher, replicas, N_TRAIN, 1, noise_std=NOISE, generator=g)
    model = DeepLinearEnsemble.random(replicas, net.widths, 1.0, generator=g, dtype=dtype,
                                      device=device)
    return g, data, model


class EpochBatches:
    """Minibatch indices [R, B] for the baselines: without replacement, per-replica reshuffle.

    Each epoch draws its permutations with the engine's own ``permutations`` (same cost).
    """

    def __init__(self, replicas: int, generator: torch.Generator, device: torch.device):
        self.replicas, self.generator, self.device = replicas, generator, device
        self.order = torch.empty(0)
        self.pos = N_TRAIN

    def next(self) -> torch.Tensor:
        if self.pos + BATCH > N_TRAIN:
            self.order = permutations(self.replicas, N_TRAIN, self.generator, self.device)
            self.pos = 0
        idx = self.order[:, self.pos : self.pos + BATCH]
        self.pos += BATCH
        return idx


def half_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1/2B) Σ‖y − pred‖²: the engine's loss convention (weight decay is in the optimiser)."""
    return 0.5 * ((pred - y) ** 2).sum(-1).mean()


def replica_module(weights: Sequence[torch.Tensor], r: int) -> nn.Sequential:
    """Replica r of the ensemble as an ``nn.Sequential`` of bias-free ``nn.Linear``s."""
    layers = []
    for w in weights:
        lin = nn.Linear(w.shape[2], w.shape[1], bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w[r])
        layers.append(lin)
    return nn.Sequential(*layers)


class NaiveLoop:
    """(b) One module and one ``torch.optim.SGD`` per replica, stepped in a Python loop."""

    def __init__(self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.nets = [replica_module(weights, r) for r in range(x.shape[0])]
        self.opts = [torch.optim.SGD(net.parameters(), lr=LR, weight_decay=BETA)
                     for net in self.nets]

    def step(self, idx: torch.Tensor) -> None:
        for r, (net, opt) in enumerate(zip(self.nets, self.opts, strict=True)):
            xb, yb = self.x[r, idx[r]], self.y[r, idx[r]]
            opt.zero_grad()
            loss = half_mse(net(xb), yb)
            loss.backward()
            opt.step()

    def weights(self) -> list[torch.Tensor]:
        layers = zip(*(list(net) for net in self.nets), strict=True)
        return [torch.stack([lin.weight.detach() for lin in layer]) for layer in layers]


class VmapEnsemble:
    """(c) ``vmap(grad(·))`` over ``functional_call`` with stacked parameters; manual SGD."""

    def __init__(self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        nets = [replica_module(weights, r) for r in range(x.shape[0])]
        params, _ = stack_module_state(nets)
        self.params = {name: p.detach() for name, p in params.items()}
        base = copy.deepcopy(nets[0]).to("meta")
        self.rows = torch.arange(x.shape[0], device=x.device)[:, None]

        def loss(p, xb, yb):
            return half_mse(functional_call(base, (p,), (xb,)), yb)

        self.grads = vmap(grad(loss))

    def step(self, idx: torch.Tensor) -> None:
        xb, yb = self.x[self.rows, idx], self.y[self.rows, idx]
        grads = self.grads(self.params, xb, yb)
        for name, p in self.params.items():
            p.add_(grads[name].add_(p, alpha=BETA), alpha=-LR)  # p −= lr (g + β p)

    def weights(self) -> list[torch.Tensor]:
        return list(self.params.values())


# ---------------------------------------------------------------------------- checks


def check_agreement(device: torch.device, steps: int = 12) -> tuple[float, float]:
    """Engine, naive and vmap reach the same weights (float64, same init and minibatches).

    The engine gets the moments of exactly the minibatches the baselines use. It runs
    ``VECTOR_MIN_REPLICAS`` replicas, so on CPU it takes the same path as when timed at
    R ≥ 1024 (replica-last vector ops; bmm below); vmap runs them all, the naive loop the
    first 4. Returns the largest weight difference to the engine and how far the weights
    moved (non-trivial).
    """
    replicas, few = VECTOR_MIN_REPLICAS, 4
    g, data, model = make_problem(PAPER, replicas, device, dtype=torch.float64, seed=1)
    assert device.type != "cpu" or model.replica_last, "not the code path timed at large R"
    start = [w.clone() for w in model.weights]
    naive = NaiveLoop([w[:few] for w in start], data.x_train[:few], data.y_train[:few])
    vm = VmapEnsemble(start, data.x_train, data.y_train)
    batches = EpochBatches(replicas, g, device)
    rows = torch.arange(replicas, device=device)[:, None]
    for _ in range(steps):  # crosses an epoch boundary (8 steps per epoch)
        idx = batches.next()
        x, y = data.x_train[rows, idx], data.y_train[rows, idx]
        sgd_step(model, x.mT @ x / BATCH, y.mT @ x / BATCH, LR, BETA)
        naive.step(idx[:few])
        vm.step(idx)
    worst = max(float((a[: len(b)] - b).abs().max())
                for other in (naive.weights(), vm.weights())
                for a, b in zip(model.weights, other, strict=True))
    moved = max(float((w - w0).abs().max()) for w, w0 in zip(model.weights, start, strict=True))
    assert moved > 1e-3, f"weights barely moved ({moved:g}); the check would be vacuous"
    assert worst < 1e-10, f"engine and baselines disagree after {steps} steps: {worst:g}"
    return worst, moved


# ---------------------------------------------------------------------------- timing


def whole_epochs(steps: int) -> int:
    return max(EPOCH, EPOCH * math.ceil(steps / EPOCH))


def compare(net: Net, replicas: int, device: torch.device, engine_steps: int,
            other_steps: int, repeats: int, extra=None) -> dict[str, float]:
    """Replica-steps/s of engine, vmap and naive (the last on ≤ 64 replicas) for one size."""
    g, data, model = make_problem(net, replicas, device)
    sub = min(replicas, NAIVE_SUBSET)
    init = [w.clone() for w in model.weights]
    naive = NaiveLoop([w[:sub] for w in init], data.x_train[:sub], data.y_train[:sub])
    naive_batches = EpochBatches(sub, g, device)
    vm = VmapEnsemble(init, data.x_train, data.y_train)
    vm_batches = EpochBatches(replicas, g, device)
    del init
    sampler = MinibatchSampler(data, BATCH, generator=g)

    def engine() -> None:
        sxx, syx = sampler.next_moments()
        sgd_step(model, sxx, syx, LR, BETA)

    contenders = {
        "engine": (engine, engine_steps),
        "vmap": (lambda: vm.step(vm_batches.next()), other_steps),
        "naive": (lambda: naive.step(naive_batches.next()), other_steps),
    }
    contenders.update(extra or {})
    seconds = measure(contenders, repeats, device, warmup_calls=EPOCH)
    finite = bool(model.is_finite_and_bounded(1e6).all()) and all(
        bool(torch.isfinite(p).all()) for p in vm.weights())
    assert finite, f"weights blew up at {net.label}, R {replicas}: timing would be meaningless"
    rates = {"engine": replicas / seconds.pop("engine"), "vmap": replicas / seconds.pop("vmap"),
             "naive": sub / seconds.pop("naive")}
    return {**rates, **seconds}


def step_flops(widths: Sequence[int], batch: int) -> int:
    """Flops per replica of one moment-form SGD step (a matmul m×k·k×n counts 2mkn).

    Sxx = XᵀX/B and Syx = YᵀX/B; prefixes W_l···W_1 (l ≥ 2); G = P Sxx − Syx; per layer
    l ≥ 2 the gradient (back)(W_{l−1}···W_1)ᵀ and back ← W_lᵀ back; then per weight 2 for
    + βW and 2 for the update W −= lr ∇W.
    """
    d0, dl = widths[0], widths[-1]
    flops = 2 * batch * d0 * (d0 + dl) + d0 * (d0 + dl)  # moments and the division by B
    for d_prev, d_out in zip(widths[1:-1], widths[2:], strict=True):
        flops += 2 * d_out * d_prev * d0  # prefix W_l (W_{l−1}···W_1)
    flops += 2 * dl * d0 * d0 + dl * d0  # G
    for layer in range(len(widths) - 1, 1, -1):  # layers L … 2 (1-based); layer 1 is free
        d_out, d_prev = widths[layer], widths[layer - 1]
        flops += 2 * d_out * d0 * d_prev + 2 * d_prev * d_out * d0
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return flops + 4 * weights


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: R 64 and 1024, R 64 at width 128, fewer steps")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed engine steps per block at paper size (default 48, quick "
                             "16); the others use a sixth; all rounded up to whole epochs")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per figure (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-grokking", action="store_true",
                        help="skip the grokking section (MLP and transformer engines)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, parser)
    steps = whole_epochs(args.steps or (16 if args.quick else 48))
    other_steps = whole_epochs(steps // 6)
    repeats = args.repeats or (3 if args.quick else 7)
    sizes = [64, 1024] if args.quick else [64, 1024, 4096]
    wide_r = 64 if args.quick else 256
    began = time.perf_counter()

    worst, moved = check_agreement(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    print(f"device: {where}; torch {torch.__version__}; float32; B {BATCH} from {N_TRAIN} "
          f"per replica; lr {LR}, β {BETA}")
    print(f"timing: median of {repeats} interleaved blocks; per block {steps} engine steps "
          f"at paper size, {other_steps} for the rest (whole epochs of {EPOCH} steps)")
    print(f"check (float64, untimed): engine = vmap ({VECTOR_MIN_REPLICAS} replicas) = naive "
          f"nn.Module+SGD (4 of them) after 12 steps, max |Δw| = {worst:.1e} (weights moved "
          f"by up to {moved:.2f})\n")

    results: dict[tuple[str, int], dict[str, float]] = {}
    for replicas in sizes:
        results[PAPER.label, replicas] = compare(PAPER, replicas, device, steps, other_steps,
                                                 repeats)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)
    c = torch.empty(MATMUL_N, MATMUL_N, device=device)
    wide = compare(WIDE, wide_r, device, other_steps, other_steps, repeats,
                   extra={"matmul": (lambda: torch.mm(a, b, out=c), 5)})
    results[WIDE.label, wide_r] = wide

    head = (f"{'net':<18}{'R':>6}  {'implementation':<15}{'replica-steps/s':>16}"
            f"{'× naive':>10}{'× vmap':>9}")
    print(head)
    print("-" * len(head))
    for (label, replicas), rate in results.items():
        for impl in ("engine", "vmap", "naive"):
            note = ""
            if impl == "naive" and replicas > NAIVE_SUBSET:
                note = f"   timed on {NAIVE_SUBSET} of the {replicas} replicas (linear in R)"
            print(f"{label:<18}{replicas:>6}  {impl:<15}{rate[impl]:>16,.0f}"
                  f"{rate[impl] / rate['naive']:>9,.1f}×{rate[impl] / rate['vmap']:>8.2f}×{note}")
        print()

    flops = step_flops(WIDE.widths, BATCH)
    gflops = wide["engine"] * flops / 1e9
    mm = 2 * MATMUL_N**3 / wide["matmul"] / 1e9
    print(f"width 128 ({WIDE.label}, B {BATCH}, R {wide_r}): engine {gflops:.1f} GFLOP/s "
          f"({flops / 1e6:.1f} MFLOP per replica-step, counted analytically)")
    print(f"  beside a {MATMUL_N}×{MATMUL_N} float32 matmul: {mm:.1f} GFLOP/s; engine = "
          f"{100 * gflops / mm:.0f}% of it")
    paper_flops = step_flops(PAPER.widths, BATCH)
    top = max(sizes)
    top_rate = results[PAPER.label, top]
    print(f"(paper size: {paper_flops:,} flop per replica-step, so the engine at R {top} runs "
          f"{top_rate['engine'] * paper_flops / 1e9:.2f} GFLOP/s: overhead-bound, not "
          f"flop-bound)\n")

    vs_naive = top_rate["engine"] / top_rate["naive"]
    vs_vmap = top_rate["engine"] / top_rate["vmap"]
    print(f"targets (design), paper size at R {top}"
          + (" (--quick: R 4096 not run)" if top != 4096 else "") + ":")
    print(f"  engine vs naive    {vs_naive:8.1f}×   target ≥ {TARGET_NAIVE:.0f}×   "
          f"{mark(vs_naive >= TARGET_NAIVE)}")
    print(f"  engine vs vmap     {vs_vmap:8.2f}×   target ≥ {TARGET_VMAP:.0f}×     "
          f"{mark(vs_vmap >= TARGET_VMAP)}")
    print(f"  width-128 GFLOP/s  {100 * gflops / mm:7.0f}%   target ≥ {100 * TARGET_MATMUL:.0f}% "
          f"of matmul  {mark(gflops >= TARGET_MATMUL * mm)}")
    figures = {"speedup_vs_naive": round(vs_naive, 1), "speedup_vs_vmap": round(vs_vmap, 2),
               "gflops": round(gflops, 2), "matmul_gflops": round(mm, 2)}
    if not args.no_grokking:
        print()
        grok = grokking_section(device, args.quick, repeats=args.repeats)
        figures |= {k: v for k, v in grok.items() if k != "matmul_gflops"}
    print(f"wall time {time.perf_counter() - began:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
