"""Nanda et al.'s p = 113 transformer: the engine's seconds per replica-step against a plain loop.

Why: speed measured at p = 23 says little about the setups researchers publish. Nanda et
al. (2023) train a one-layer transformer (4 heads, d_model 128, ReLU MLP 512, readout over
p + 1 tokens) on (a + b) mod 113 with int(0.3 · 113²) = 3,830 pairs in full batch, AdamW
lr 1e-3, wd 1, betas (0.9, 0.98). A researcher would write that as one ``nn.Module`` and
``torch.optim.AdamW``; the engine must be worth using beside it.

What, side by side in one process, float32, full batch, every step:

  (a) engine: ``TransformerEnsemble.loss_and_grads`` (backward written out; the attention
      on row tables, a C kernel on the CPU) + escapestat's fused AdamW, R = 8 replicas
      (``grok_throughput.Engine``, with its lr, weight decay, betas and eps);
  (b) plain: ``PlainNanda``, a careful researcher's module — it forms the query of the
      last position only, the keys and values of all three in one fused ``nn.Linear``,
      ``F.scaled_dot_product_attention``, and reads out the last position — with
      ``torch.optim.AdamW``; a loop over ``PLAIN_REPLICAS`` modules (linear in R).

Before timing both are checked (float64, untimed) to give the same parameters after
``CHECK_STEPS`` full-batch steps from the same init. Figures: seconds per replica-step of
each (median of interleaved blocks, ``benchmarks/timing.py``), the ratio, and GFLOP/s
from analytic counts (``engine_flops``, ``plain_flops``: the engine does ~40% fewer flops,
since its attention works on the p + 4 rows of the embedding table rather than on every
sample's three positions), beside a 2048² float32 matmul. The engine is timed twice: on
a fixed thread count, and "governed" — each step through ``ThreadGovernor`` as the run
loop steps it (probing every 5 s here, every 30 s in a run). ``--busy K`` repeats the
timing with K CPU-bound competitor processes (a Python busy loop each) and reports each
side's slow-down against the idle figures of the same invocation.

    python benchmarks/transformer113.py [--device auto|cpu|cuda] [--quick] [--steps N]
                                        [--repeats N] [--threads N] [--busy K]

The last line is one JSON object: ``transformer113_speedup_vs_plain``,
``transformer113_gflops``, ``transformer113_plain_gflops``, ``transformer113_s_per_replica_step``
(and with ``--busy``: ``transformer113_busy_slowdown_engine`` — governed, as a run —,
``transformer113_busy_slowdown_engine_fixed_threads``,
``transformer113_busy_slowdown_plain``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from grok_throughput import BETAS, EPS, LR, WD, Engine
from timing import measure, pick_device
from torch import nn

from escapestat.models._threads import ThreadGovernor
from escapestat.models.grokking._modular import make_task
from escapestat.models.grokking.transformer._ensemble import TransformerEnsemble

P, FRACTION, D_MODEL, HEADS, D_MLP = 113, 0.3, 128, 4, 512
CLASSES = P + 1  # Nanda et al.'s readout over the whole vocabulary
REPLICAS, PLAIN_REPLICAS, CHECK_STEPS = 8, 2, 3
MATMUL_N = 2048
TARGET = 3.0  # the engine's seconds per replica-step ≤ 1/3 of the plain loop's


class PlainNanda(nn.Module):
    """One replica as a careful researcher writes it (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.W_E = nn.Parameter(torch.zeros(P + 1, D_MODEL))
        self.W_pos = nn.Parameter(torch.zeros(3, D_MODEL))
        self.q = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.kv = nn.Linear(D_MODEL, 2 * D_MODEL, bias=False)
        self.o = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.mlp_in, self.mlp_out = nn.Linear(D_MODEL, D_MLP), nn.Linear(D_MLP, D_MODEL)
        self.unembed = nn.Linear(D_MODEL, CLASSES, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, 3] → [B, p + 1]
        x = self.W_E[tokens] + self.W_pos
        b, dh = x.shape[0], D_MODEL // HEADS
        q = self.q(x[:, 2]).view(b, HEADS, 1, dh)
        k, v = self.kv(x).view(b, 3, 2, HEADS, dh).permute(2, 0, 3, 1, 4)
        r = x[:, 2] + self.o(F.scaled_dot_product_attention(q, k, v).reshape(b, D_MODEL))
        return self.unembed(r + self.mlp_out(F.relu(self.mlp_in(r))))


def plain_from(model: TransformerEnsemble, r: int) -> PlainNanda:
    """Replica r of the engine's model as a ``PlainNanda`` (same values)."""
    w = dict(zip(model.param_names, (t[r] for t in model.params), strict=True))
    m = PlainNanda().to(dtype=w["W_E"].dtype, device=w["W_E"].device)
    with torch.no_grad():
        m.W_E.copy_(w["W_E"])
        m.W_pos.copy_(w["W_pos"])
        m.q.weight.copy_(w["W_Q"].mT.flatten(0, 1))
        m.kv.weight.copy_(torch.cat([w["W_K"].mT.flatten(0, 1), w["W_V"].mT.flatten(0, 1)]))
        m.o.weight.copy_(w["W_O"].flatten(0, 1).T)
        m.mlp_in.weight.copy_(w["W_in"].T)
        m.mlp_in.bias.copy_(w["b_in"])
        m.mlp_out.weight.copy_(w["W_out"].T)
        m.mlp_out.bias.copy_(w["b_out"])
        m.unembed.weight.copy_(w["W_U"].T)
    return m


class Plain:
    """A loop over plain modules, each with its own ``torch.optim.AdamW``, full batch."""

    def __init__(self, modules: list[PlainNanda], pairs: torch.Tensor, labels: torch.Tensor):
        self.modules = modules
        self.opts = [torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD, betas=BETAS,
                                       eps=EPS) for m in modules]
        self.tokens = torch.cat([pairs, torch.full_like(pairs[..., :1], P)], -1)
        self.labels = labels

    def step(self) -> None:
        for r, (m, opt) in enumerate(zip(self.modules, self.opts, strict=True)):
            loss = F.cross_entropy(m(self.tokens[r]), self.labels[r])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def setup(replicas: int, device: torch.device, dtype: torch.dtype, seed: int):
    """The engine's model and each replica's full training batch (Nanda's split size)."""
    g = torch.Generator(device=device).manual_seed(seed)
    task = make_task("add", P, replicas, FRACTION, generator=g, device=device,
                     rounding="floor")
    model = TransformerEnsemble(replicas, P, D_MODEL, HEADS, D_MLP, generator=g, dtype=dtype,
                                device=device, classes=CLASSES)
    return model, task.train_pairs(), task.labels[task.splits.train]


def check_agreement(device: torch.device) -> float:
    """Engine and plain modules reach the same parameters after ``CHECK_STEPS`` float64 steps."""
    model, pairs, labels = setup(2, device, torch.float64, seed=1)
    plain = Plain([plain_from(model, r) for r in range(2)], pairs, labels)
    engine = Engine(model)
    before = [w.clone() for w in model.params]
    for _ in range(CHECK_STEPS):
        engine.step(pairs, labels)
        plain.step()
    moved = max(float((w - b).abs().max()) for w, b in zip(model.params, before, strict=True))
    worst = 0.0
    for r, m in enumerate(plain.modules):
        theirs = plain_from(model, r).state_dict()
        for name, value in m.state_dict().items():
            worst = max(worst, float((value - theirs[name]).abs().max()))
    assert moved > 1e-4, f"parameters barely moved ({moved:g}); the check would be vacuous"
    assert worst < 1e-10, f"engine and plain module disagree: {worst:g}"
    return worst


def engine_flops(n: int) -> int:
    """Flops per replica-step of the engine at n samples (matmul m×k·k×n = 2mkn): per sample
    the output projection, the two MLP matmuls and the readout, each forward and twice
    backward; the attention's tables are O(p d²), negligible beside."""
    per_sample = D_MODEL * D_MODEL + 2 * D_MODEL * D_MLP + D_MODEL * CLASSES
    return 3 * 2 * n * per_sample


def plain_flops(n: int) -> int:
    """Flops per replica-step of the plain module: also the query, and keys and values of
    three positions per sample (the input gradient of the fused K/V Linear included)."""
    return engine_flops(n) + 3 * 2 * n * (D_MODEL * D_MODEL + 3 * 2 * D_MODEL * D_MODEL)


def _busy_loop() -> None:
    x = 0
    while True:
        x += 1


@contextmanager
def competitors(count: int):
    """``count`` CPU-bound processes running for the duration of the block."""
    procs = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(count)]
    for proc in procs:
        proc.start()
    try:
        time.sleep(0.5 if count else 0)
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()


def p113_section(device: torch.device, quick: bool = False, steps: int | None = None,
                 repeats: int | None = None, busy: int = 0) -> dict[str, float]:
    """Time engine and plain loop at p = 113 (and under ``busy`` competitors); print the
    table; return the figures for the JSON line."""
    steps = steps or (2 if quick else 5)
    repeats = repeats or (3 if quick else 5)
    torch.set_flush_denormal(True)
    worst = check_agreement(device)
    model, pairs, labels = setup(REPLICAS, device, torch.float32, seed=0)
    n = pairs.shape[1]
    engine = Engine(model)
    engine_step = partial(engine.step, pairs, labels)
    plain = Plain([plain_from(model, r) for r in range(PLAIN_REPLICAS)], pairs, labels)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, device=device) for _ in range(2))
    c = torch.empty(MATMUL_N, MATMUL_N, device=device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    print(f"p = 113 transformer (Nanda et al.): (a + b) mod {P}, {n} training pairs, full "
          f"batch, d_model {D_MODEL}, {HEADS} heads, d_mlp {D_MLP}, readout {CLASSES} "
          f"classes, AdamW lr {LR:g} wd {WD:g}; {where}; torch {torch.__version__}; float32")
    print(f"check (float64, untimed): engine = plain module + torch.optim.AdamW after "
          f"{CHECK_STEPS} full-batch steps (2 replicas), max |Δθ| = {worst:.1e}")
    print(f"timing: median of {repeats} interleaved blocks of {steps} steps; engine R "
          f"{REPLICAS}, plain a loop over {PLAIN_REPLICAS} modules")

    threads = torch.get_num_threads()

    def timed() -> dict[str, float]:
        governor = ThreadGovernor(threads if device.type == "cpu" else 1, every=5.0)

        def governed() -> None:  # as the engine's loop runs it; others keep all threads
            torch.set_num_threads(governor.threads)
            governor.step(engine_step)
            torch.set_num_threads(threads)

        s = measure({"engine": (engine_step, steps), "governed": (governed, steps),
                     "plain": (plain.step, steps),
                     "matmul": (lambda: torch.mm(a, b, out=c), 3)}, repeats, device,
                    warmup_calls=1)
        print(f"  (governor's last probe, s/step by threads: "
              f"{', '.join(f'{t}: {x:.3f}' for t, x in governor.last_probe) or 'none'})")
        return {"engine": s["engine"] / REPLICAS, "governed": s["governed"] / REPLICAS,
                "plain": s["plain"] / PLAIN_REPLICAS, "matmul": s["matmul"]}

    idle = timed()
    assert bool(model.finite().all()), "parameters blew up: timing would be meaningless"
    mm = 2 * MATMUL_N**3 / idle["matmul"] / 1e9
    gflops = {"engine": engine_flops(n) / idle["engine"] / 1e9,
              "plain": plain_flops(n) / idle["plain"] / 1e9}
    head = f"{'implementation':<12}{'s/replica-step':>16}{'GFLOP/s':>10}{'MFLOP/step':>12}"
    print(head)
    print("-" * len(head))
    for impl, flops in (("engine", engine_flops(n)), ("governed", engine_flops(n)),
                        ("plain", plain_flops(n))):
        print(f"{impl:<12}{idle[impl]:>16.4f}{flops / idle[impl] / 1e9:>10.1f}"
              f"{flops / 1e6:>12.0f}")
    speedup = idle["plain"] / idle["engine"]
    print(f"a {MATMUL_N}² float32 matmul: {mm:.1f} GFLOP/s")
    print(f"engine vs plain loop {speedup:.2f}× per replica-step   target ≥ {TARGET:.0f}×  "
          f"{'met' if speedup >= TARGET else 'MISSED'}")
    figures = {"transformer113_speedup_vs_plain": round(speedup, 2),
               "transformer113_gflops": round(gflops["engine"], 1),
               "transformer113_plain_gflops": round(gflops["plain"], 1),
               "transformer113_s_per_replica_step": round(idle["engine"], 4)}
    if busy:
        with competitors(busy):
            loaded = timed()
        impls = ("engine", "governed", "plain")
        slow = {impl: loaded[impl] / idle[impl] for impl in impls}
        print(f"with {busy} competing CPU-bound process{'es' if busy > 1 else ''} "
              f"(s per replica-step, × idle):")
        for impl in impls:
            print(f"  {impl:<10}{loaded[impl]:>10.4f} s  {slow[impl]:5.2f}× idle")
        print(f"  engine as the run loop steps it (governed) vs plain: "
              f"{loaded['plain'] / loaded['governed']:.2f}×")
        figures |= {"transformer113_busy_slowdown_engine": round(slow["governed"], 2),
                    "transformer113_busy_slowdown_engine_fixed_threads":
                        round(slow["engine"], 2),
                    "transformer113_busy_slowdown_plain": round(slow["plain"], 2)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 3 blocks")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per block (default 5, quick 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per figure (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--busy", type=int, default=0, metavar="K",
                        help="also time with K CPU-bound competitor processes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, parser)
    began = time.perf_counter()
    figures = p113_section(device, args.quick, args.steps, args.repeats, args.busy)
    print(f"wall time {time.perf_counter() - began:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
