"""Replica-steps per second of the grokking engine (MLP ensemble + fused AdamW) against two recipes.

Why: the targets ask of the one-hidden-layer MLP on modular arithmetic (p 23, width 128,
quadratic activation, B 64, AdamW, R 256) ≥ 20× the replica-steps/s of a Python loop of
``nn.Module``s with ``torch.optim.AdamW`` and ≥ 3× ``torch.func.vmap`` ensembling, side by
side in one process. This script measures that.

What: the same work for all three. R MLPs on (a + b) mod 23, each with its own 70%
training split; each step, each replica takes its next minibatch of 64 pairs (without
replacement, its own permutation per epoch:
``escapestat.models.grokking._modular.MinibatchPairs``, drawn
inside the timed steps for all three), the mean cross-entropy, and one AdamW step (lr 1e-3,
weight decay 1, betas (0.9, 0.98), eps 1e-8, decay on every parameter):

  (a) engine: ``MLPEnsemble.loss_and_grads`` (explicit backward, no autograd) and
      ``escapestat.models._optimizers.AdamW`` with lr and weight decay as [R] tensors, each on
      its default route — on the CPU the C kernels (``escapestat.models._native``), which run a
      replica's whole step in one thread's cache; the "torch route" row is the same
      engine on batched torch ops (bmm, embedding_bag, torch's fused AdamW), the route
      CUDA and machines without a C compiler take;
  (b) naive:  a Python loop over R plain ``nn.Module``s (two ``nn.Embedding``, a bias-free
      ``nn.Linear``), each with its own ``torch.optim.AdamW``: forward, loss, backward,
      step. It is linear in R, so it is timed on ``NAIVE_SUBSET`` replicas (said so);
  (c) vmap:   ``vmap(grad(loss))`` over ``functional_call`` of a meta-device module with
      ``stack_module_state`` parameters (PyTorch's model-ensembling recipe), then one
      ``torch.optim.AdamW`` over the stacked tensors — the same update per replica, since
      AdamW is elementwise, but only with one lr and one weight decay for all replicas
      (per-replica values would need a hand-written AdamW; the benchmark uses one value).

Before timing, the three are checked (float64, untimed) to reach the same parameters
after ``CHECK_STEPS`` steps from the same init on the same minibatches.

All three run with ``torch.set_flush_denormal(True)``: once the softmax saturates, its
probabilities underflow to subnormal floats, which made a bmm ~100× slower.

Timing: float32; one untimed warm-up block each; then ``--repeats`` blocks per
implementation, interleaved (engine, torch route, vmap, naive, engine, …) so that drift on a shared
machine hits all alike; each figure is the median block. On 2 cores, a competing process
stalls torch's 2-thread parallel regions (see benchmarks/throughput.py): run it idle, or
compare ``--threads 1 --cpu-time`` (this process's CPU seconds, which other processes
hardly disturb). The engine's GFLOP/s counts its flops analytically
(``step_flops``) and is set beside a 2048 × 2048 float32 matmul's. The last line is one
JSON object.

    python benchmarks/grok_throughput.py [--device auto|cpu|cuda] [--quick] [--steps N]
                                         [--repeats N] [--threads N] [--cpu-time]
                                         [--replicas R]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import mark, measure, pick_device
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from escapestat.models import _native as native
from escapestat.models._optimizers import AdamW
from escapestat.models.grokking._modular import MinibatchPairs, make_task
from escapestat.models.grokking.mlp._ensemble import MLPEnsemble
from escapestat.models.grokking.transformer._ensemble import TransformerEnsemble

P, WIDTH, BATCH, FRACTION = 23, 128, 64, 0.7
LR, WD, BETAS, EPS = 1e-3, 1.0, (0.9, 0.98), 1e-8
NAIVE_SUBSET = 16
CHECK_STEPS = 8  # crosses an epoch boundary (370 training pairs: 6 batches per epoch)
MATMUL_N = 2048
TARGET_NAIVE, TARGET_VMAP = 20.0, 3.0
# The transformer: Nanda et al.'s widths at p 23, fewer replicas (a step is ~40× the MLP's).
D_MODEL, HEADS, D_MLP = 128, 4, 512
TF_REPLICAS, TF_NAIVE_SUBSET, TARGET_TF_NAIVE = 32, 8, 5.0


class PlainMLP(nn.Module):
    """One replica, written plainly: σ(E_a[a] + E_b[b]) → bias-free linear to p logits."""

    def __init__(self, p: int, width: int):
        super().__init__()
        self.embed_a = nn.Embedding(p, width)
        self.embed_b = nn.Embedding(p, width)
        self.out = nn.Linear(width, p, bias=False)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        z = self.embed_a(pairs[..., 0]) + self.embed_b(pairs[..., 1])
        return self.out(z.square())


def modules_from(model: MLPEnsemble, count: int) -> list[PlainMLP]:
    """The first ``count`` replicas of ``model`` as separate modules (same values)."""
    p, out = model.p, []
    for r in range(count):
        m = PlainMLP(p, model.width).to(dtype=model.weight.dtype, device=model.weight.device)
        with torch.no_grad():
            m.embed_a.weight.copy_(model.embed[r, :p])
            m.embed_b.weight.copy_(model.embed[r, p:])
            m.out.weight.copy_(model.weight[r])
        out.append(m)
    return out


class NaiveLoop:
    def __init__(self, modules: list[PlainMLP]):
        self.modules = modules
        self.opts = [torch.optim.AdamW(m.parameters(), lr=LR, betas=BETAS, eps=EPS,
                                       weight_decay=WD) for m in modules]

    def step(self, pairs: torch.Tensor, labels: torch.Tensor) -> None:
        for r, (m, opt) in enumerate(zip(self.modules, self.opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(pairs[r]), labels[r]).backward()
            opt.step()


class VmapEnsemble:
    def __init__(self, modules: list[PlainMLP]):
        params, _ = stack_module_state(modules)
        self.params = {k: v.detach().requires_grad_(False) for k, v in params.items()}
        base = copy.deepcopy(modules[0]).to("meta")

        def loss(params, pairs, labels):
            return F.cross_entropy(functional_call(base, params, (pairs,)), labels)

        self.grad = vmap(grad(loss))
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=LR, betas=BETAS, eps=EPS,
                                     weight_decay=WD)

    def step(self, pairs: torch.Tensor, labels: torch.Tensor) -> None:
        grads = self.grad(self.params, pairs, labels)
        for k, v in self.params.items():
            v.grad = grads[k]
        self.opt.step()


class Engine:
    """A replica ensemble's ``loss_and_grads`` + escapestat's fused AdamW, lr and weight
    decay as [R] tensors, decaying every parameter (as ``torch.optim.AdamW`` over
    ``model.parameters()`` does): the MLP or the transformer (both with their backward
    written out; on the CPU in C where ``backend`` is "native")."""

    def __init__(self, model: MLPEnsemble | TransformerEnsemble):
        self.model = model
        self.opt = AdamW(model.params, betas=BETAS, eps=EPS)
        like = model.params[0]
        self.lr = torch.full((model.replicas,), LR, dtype=like.dtype, device=like.device)
        self.wd = torch.full_like(self.lr, WD)

    def step(self, pairs: torch.Tensor, labels: torch.Tensor) -> None:
        _, grads = self.model.loss_and_grads(pairs, labels)
        self.opt.step(grads, self.lr, self.wd)


def engine_route(engine: Engine) -> str:
    """Which code the engine's step runs: the C kernels or batched torch ops."""
    kernels = native.loaded()
    model_route = getattr(engine.model, "backend", "torch")
    if isinstance(engine.model, TransformerEnsemble):
        model_part = ("attention: C kernel, matmuls: torch" if model_route == "native"
                      else "model: torch ops")
    else:
        model_part = f"model: {'C kernel' if model_route == 'native' else 'torch ops'}"
    parts = [model_part,
             f"AdamW: {'C kernel' if engine.opt.backend == 'native' else 'torch ops'}"]
    if kernels is not None and "native" in (model_route, engine.opt.backend):
        parts.append(kernels.describe())
    return "; ".join(parts)


def setup(replicas: int, device: torch.device, dtype: torch.dtype, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    task = make_task("add", P, replicas, FRACTION, generator=g, device=device)
    model = MLPEnsemble.random(replicas, P, WIDTH, "quadratic", generator=g, dtype=dtype,
                               device=device)
    return g, task, model


def check_agreement(device: torch.device, replicas: int = 8, few: int = 3) -> tuple[float, float]:
    """Engine, vmap (all) and naive (the first ``few``) reach the same parameters (float64)."""
    g, task, model = setup(replicas, device, torch.float64, seed=1)
    start = [t.clone() for t in model.params]
    naive = NaiveLoop(modules_from(model, few))
    vm = VmapEnsemble(modules_from(model, replicas))
    engine = Engine(model)
    batches = MinibatchPairs(task, BATCH, g)
    for _ in range(CHECK_STEPS):
        pairs, labels = batches.next_batch()
        engine.step(pairs, labels)
        naive.step(pairs, labels)
        vm.step(pairs, labels)
    p = P
    worst = 0.0
    for others in ([[t.detach() for t in m.parameters()] for m in naive.modules],
                   [[vm.params[k][r] for k in ("embed_a.weight", "embed_b.weight", "out.weight")]
                    for r in range(replicas)]):
        for r, (e_a, e_b, w) in enumerate(others):
            worst = max(worst, float((model.embed[r, :p] - e_a).abs().max()),
                        float((model.embed[r, p:] - e_b).abs().max()),
                        float((model.weight[r] - w).abs().max()))
    moved = max(float((t - t0).abs().max()) for t, t0 in zip(model.params, start, strict=True))
    assert moved > 1e-3, f"parameters barely moved ({moved:g}); the check would be vacuous"
    assert worst < 1e-10, f"engine and baselines disagree after {CHECK_STEPS} steps: {worst:g}"
    return worst, moved


def step_flops(p: int, width: int, batch: int) -> int:
    """Flops per replica of one engine step (a matmul m×k·k×n counts 2mkn).

    Three matmuls of B×width×p (logits, ∇W, δW): 6 B·width·p; per hidden activation the
    gather-add, σ, σ', the product with σ' and two scatter-adds: 6 B·width; softmax and δ
    about 5 B·p; AdamW about 12 per parameter (3 p·width).
    """
    return 6 * batch * width * p + 6 * batch * width + 5 * batch * p + 12 * 3 * p * width


class PlainTransformer(nn.Module):
    """One replica as a user would write it with ``nn.MultiheadAttention`` (no biases in the
    attention, causal mask, no LayerNorm, ReLU MLP, readout at the last position)."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p + 1, D_MODEL)
        self.pos = nn.Parameter(torch.zeros(3, D_MODEL))
        self.attn = nn.MultiheadAttention(D_MODEL, HEADS, bias=False, batch_first=True)
        self.mlp_in, self.mlp_out = nn.Linear(D_MODEL, D_MLP), nn.Linear(D_MLP, D_MODEL)
        self.unembed = nn.Linear(D_MODEL, p, bias=False)
        self.register_buffer("causal", torch.ones(3, 3, dtype=torch.bool).triu(1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([pairs, torch.full_like(pairs[:, :1], self.p)], 1)
        x = self.embed(tokens) + self.pos
        x = x + self.attn(x, x, x, attn_mask=self.causal, need_weights=False)[0]
        x = x + self.mlp_out(F.relu(self.mlp_in(x)))
        return self.unembed(x[:, -1])


def transformers_from(model: TransformerEnsemble, count: int) -> list[PlainTransformer]:
    """The first ``count`` replicas of ``model`` as ``PlainTransformer``s (same values)."""
    out = []
    for r in range(count):
        w = dict(zip(model.param_names, (t[r] for t in model.params), strict=True))
        m = PlainTransformer(model.p).to(dtype=w["W_E"].dtype, device=w["W_E"].device)
        with torch.no_grad():
            m.embed.weight.copy_(w["W_E"])
            m.pos.copy_(w["W_pos"])
            m.attn.in_proj_weight.copy_(
                torch.cat([w[k].mT.flatten(0, 1) for k in ("W_Q", "W_K", "W_V")]))
            m.attn.out_proj.weight.copy_(w["W_O"].flatten(0, 1).T)
            m.mlp_in.weight.copy_(w["W_in"].T)
            m.mlp_in.bias.copy_(w["b_in"])
            m.mlp_out.weight.copy_(w["W_out"].T)
            m.mlp_out.bias.copy_(w["b_out"])
            m.unembed.weight.copy_(w["W_U"].T)
        out.append(m)
    return out


def transformer_setup(replicas: int, device: torch.device, dtype: torch.dtype, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    task = make_task("add", P, replicas, FRACTION, generator=g, device=device)
    model = TransformerEnsemble(replicas, P, D_MODEL, HEADS, D_MLP, generator=g, dtype=dtype,
                                device=device)
    return g, task, model


def check_transformer(device: torch.device, replicas: int = 3, steps: int = 4) -> float:
    """Engine and naive ``nn.MultiheadAttention`` modules + AdamW give the same logits on the
    whole table after ``steps`` steps from the same init on the same minibatches (float64)."""
    g, task, model = transformer_setup(replicas, device, torch.float64, seed=2)
    naive = NaiveLoop(transformers_from(model, replicas))
    engine = Engine(model)
    batches = MinibatchPairs(task, BATCH, g)
    table = task.pairs.expand(replicas, -1, -1)
    before = model.forward(table).clone()
    for _ in range(steps):
        pairs, labels = batches.next_batch()
        engine.step(pairs, labels)
        naive.step(pairs, labels)
    with torch.no_grad():
        after = model.forward(table)
        theirs = torch.stack([m(task.pairs) for m in naive.modules])
    moved = float((after - before).abs().max())
    worst = float((after - theirs).abs().max())
    assert moved > 1e-3, f"logits barely moved ({moved:g}); the check would be vacuous"
    assert worst < 1e-9, f"transformer engine and naive modules disagree: {worst:g}"
    return worst


def mlp_section(device: torch.device, steps: int, repeats: int, replicas: int,
                clock: Callable[[], float]) -> dict[str, float]:
    """Time engine, variant, vmap and naive for the MLP; print the table; return figures."""
    worst, moved = check_agreement(device)
    print(f"MLP: (a + b) mod {P}, {FRACTION:.0%} train, width {WIDTH}, quadratic, B {BATCH}, "
          f"AdamW lr {LR:g} wd {WD:g}, R {replicas}")
    print(f"check (float64, untimed): engine = vmap (8 replicas) = naive nn.Module+AdamW (3 of "
          f"them) after {CHECK_STEPS} steps, max |Δθ| = {worst:.1e} (moved up to {moved:.2f})")
    g, task, model = setup(replicas, device, torch.float32, seed=0)
    sub = min(replicas, NAIVE_SUBSET)
    naive = NaiveLoop(modules_from(model, sub))
    vm = VmapEnsemble(modules_from(model, replicas))
    engine = Engine(model)
    variant = MLPEnsemble(model.embed.clone(), model.weight.clone())
    variant.backend = "torch"
    other = Engine(variant)
    other.opt.backend = "torch"
    sub_task = make_task("add", P, replicas, FRACTION, generator=g, device=device)
    sub_task.keep(torch.arange(sub, device=device))
    batches = {name: MinibatchPairs(t, BATCH, g) for name, t in
               (("engine", task), ("variant", task), ("vmap", task), ("naive", sub_task))}
    a, b = (torch.randn(MATMUL_N, MATMUL_N, device=device) for _ in range(2))
    c = torch.empty(MATMUL_N, MATMUL_N, device=device)
    seconds = measure({
        "engine": (lambda: engine.step(*batches["engine"].next_batch()), steps),
        "variant": (lambda: other.step(*batches["variant"].next_batch()), steps),
        "vmap": (lambda: vm.step(*batches["vmap"].next_batch()), steps),
        "naive": (lambda: naive.step(*batches["naive"].next_batch()), steps),
        "matmul": (lambda: torch.mm(a, b, out=c), 3),
    }, repeats, device, clock)
    assert bool(model.finite().all()), "parameters blew up: timing would be meaningless"
    rate = {"engine": replicas / seconds["engine"], "variant": replicas / seconds["variant"],
            "vmap": replicas / seconds["vmap"], "naive": sub / seconds["naive"]}

    head = (f"{'implementation':<16}{'replica-steps/s':>16}{'ms/step':>10}{'× naive':>10}"
            f"{'× vmap':>9}")
    print(head)
    print("-" * len(head))
    notes = {"engine": f"   {engine_route(engine)}",
             "variant": f"   {engine_route(other)} (∇E by {variant.embed_grad})",
             "naive": f"   timed on {sub} of the {replicas} replicas"}
    for impl in ("engine", "variant", "vmap", "naive"):
        note = notes.get(impl, "")
        label = "torch route" if impl == "variant" else impl
        print(f"{label:<16}{rate[impl]:>16,.0f}{1e3 * seconds[impl]:>10.2f}"
              f"{rate[impl] / rate['naive']:>9,.1f}×{rate[impl] / rate['vmap']:>8.2f}×{note}")
    flops = step_flops(P, WIDTH, BATCH)
    gflops = rate["engine"] * flops / 1e9
    mm = 2 * MATMUL_N**3 / seconds["matmul"] / 1e9
    print(f"\nengine {gflops:.1f} GFLOP/s ({flops / 1e6:.2f} MFLOP per replica-step, counted "
          f"analytically); a {MATMUL_N}² float32 matmul {mm:.1f} GFLOP/s "
          f"({100 * gflops / mm:.0f}%)")
    vs_naive, vs_vmap = rate["engine"] / rate["naive"], rate["engine"] / rate["vmap"]
    print(f"targets, MLP at R {replicas}:")
    print(f"  engine vs naive  {vs_naive:8.1f}×   target ≥ {TARGET_NAIVE:.0f}×  "
          f"{mark(vs_naive >= TARGET_NAIVE)}")
    print(f"  engine vs vmap   {vs_vmap:8.2f}×   target ≥ {TARGET_VMAP:.0f}×   "
          f"{mark(vs_vmap >= TARGET_VMAP)}")
    return {"mlp_speedup_vs_naive": round(vs_naive, 1), "mlp_speedup_vs_vmap": round(vs_vmap, 2),
            "mlp_gflops": round(gflops, 2), "matmul_gflops": round(mm, 2)}


def transformer_section(device: torch.device, steps: int, repeats: int, replicas: int,
                        clock: Callable[[], float]) -> dict[str, float]:
    """Time the transformer engine against a naive loop; print the table; return figures."""
    worst = check_transformer(device)
    print(f"\ntransformer: (a + b) mod {P}, {FRACTION:.0%} train, d_model {D_MODEL}, "
          f"{HEADS} heads, d_mlp {D_MLP}, B {BATCH}, AdamW lr {LR:g} wd {WD:g}, R {replicas}")
    print(f"check (float64, untimed): engine logits = naive nn.MultiheadAttention modules + "
          f"torch.optim.AdamW (3 replicas, 4 steps, all {P * P} pairs), max |Δ| = {worst:.1e}")
    g, task, model = transformer_setup(replicas, device, torch.float32, seed=0)
    sub = min(replicas, TF_NAIVE_SUBSET)
    naive = NaiveLoop(transformers_from(model, sub))
    engine = Engine(model)
    sub_task = make_task("add", P, replicas, FRACTION, generator=g, device=device)
    sub_task.keep(torch.arange(sub, device=device))
    batches = {"engine": MinibatchPairs(task, BATCH, g),
               "naive": MinibatchPairs(sub_task, BATCH, g)}
    seconds = measure({
        "engine": (lambda: engine.step(*batches["engine"].next_batch()), steps),
        "naive": (lambda: naive.step(*batches["naive"].next_batch()), steps),
    }, repeats, device, clock)
    assert bool(model.finite().all()), "parameters blew up: timing would be meaningless"
    rate = {"engine": replicas / seconds["engine"], "naive": sub / seconds["naive"]}
    head = f"{'implementation':<16}{'replica-steps/s':>16}{'ms/step':>10}{'× naive':>10}"
    print(head)
    print("-" * len(head))
    for impl, note in (("engine", f"   {engine_route(engine)}"),
                       ("naive", f"   timed on {sub} of the {replicas} replicas")):
        print(f"{impl:<16}{rate[impl]:>16,.0f}{1e3 * seconds[impl]:>10.2f}"
              f"{rate[impl] / rate['naive']:>9,.1f}×{note}")
    vs_naive = rate["engine"] / rate["naive"]
    print(f"  transformer engine vs naive {vs_naive:6.1f}×   target ≥ {TARGET_TF_NAIVE:.0f}×  "
          f"{mark(vs_naive >= TARGET_TF_NAIVE)}")
    return {"transformer_speedup_vs_naive": round(vs_naive, 1)}


def grokking_section(device: torch.device, quick: bool = False, steps: int | None = None,
                     repeats: int | None = None, replicas: int = 256,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Both grokking models against their baselines; the figures for the JSON line."""
    steps = steps or (6 if quick else 24)
    repeats = repeats or (3 if quick else 7)
    torch.set_flush_denormal(True)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    print(f"grokking workloads — device: {where}; torch {torch.__version__}; float32; "
          f"flush_denormal on for all; median of {repeats} interleaved blocks of {steps} steps "
          f"(transformer: {max(1, steps // 4)})\n")
    figures = mlp_section(device, steps, repeats, replicas, clock)
    figures |= transformer_section(device, max(1, steps // 4), repeats,
                                   TF_REPLICAS if not quick else TF_REPLICAS // 2, clock)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps, 3 blocks")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed MLP steps per block (default 24, quick 6); the "
                             "transformer runs a quarter")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per figure (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--replicas", type=int, default=256, help="MLP replicas")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time in CPU seconds of this process, not wall seconds: steadier "
                             "on a shared machine, meaningful with --threads 1 only")
    args = parser.parse_args()
    if args.cpu_time and (args.device == "cuda" or torch.get_num_threads() > 1
                          and args.threads != 1):
        parser.error("--cpu-time needs --threads 1 on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, parser)
    began = time.perf_counter()
    figures = grokking_section(device, args.quick, args.steps, args.repeats, args.replicas,
                               time.process_time if args.cpu_time else time.perf_counter)
    print(f"wall time {time.perf_counter() - began:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
