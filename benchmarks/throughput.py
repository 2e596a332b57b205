"""Replica-steps per second of escapestat's batched linear engine against two usual recipes.

Why: the escape-time studies need thousands of replicas × millions of SGD steps. The design
(§5, §8) claimed that training R deep linear nets as one batched model from minibatch
moments is ≥ 200× faster than a Python loop of ``nn.Module``s and ≥ 2× faster than the
``torch.func.vmap`` ensembling recipe, and that at width 128 it runs at ≥ 40% of the
machine's large-matmul GFLOP/s. Those targets were measured with the engine in *moment
form* — gradients from XᵀX/B and YᵀX/B, a shortcut only linear nets with squared loss
have — against baselines doing the full forward/backward *on data*, with the engine's
per-sample moment vectors built untimed. That credits the engine with the shortcut. This
script now times both sides in the same form, twice, and reports both comparisons (and,
separately, the old mixed one, so its figures stay comparable with earlier releases):

  moment form — every implementation gets the same moments of its minibatches, from the
      engine's own ``MinibatchSampler`` (one sampler per implementation, same code), and
      steps on the moment-form loss ½ tr(P Sxx Pᵀ) − tr(P Syxᵀ) (+ const) + (β/2) Σ‖W_l‖²:
    (a) engine: ``MinibatchSampler.next_moments()`` + ``sgd_step`` (gradient by hand, design
        §5; bmm at R 64 and, for a net this small, vector ops over replicas from
        ``VECTOR_MIN_REPLICAS`` (512) on; bmm at width 128);
    (b) naive: a Python loop over the replicas' ``nn.Sequential``s of bias-free
        ``nn.Linear``s, each with its own ``torch.optim.SGD(weight_decay=β)``: P from the
        module (Pᵀ = net(I)), the moment loss, autograd backward, step;
    (c) vmap: ``vmap(grad(moment loss))`` over ``functional_call`` (P from the module as in
        (b)) with ``stack_module_state`` parameters, and a manual in-place SGD update with
        weight decay.
  data form — every implementation gets the minibatch X [B, d_in], Y [B, d_out] itself
      (gathered by advanced indexing from per-epoch permutations) and steps on
      (1/2B) Σ‖y − W_L···W_1 x‖² + (β/2) Σ‖W_l‖²:
    (a) engine's batched layout on data: escapestat has no data-form path for linear nets,
        so this benchmark implements one (``BatchedDataStep``) in the engine's layout —
        weights [R, out, in], one bmm per layer forward and two per layer backward (the
        first layer's one), manual SGD with weight decay. It is *not* escapestat code;
    (b) naive: the loop of (b) on data — index the minibatch, forward, loss, backward, step;
    (c) vmap: PyTorch's model-ensembling recipe on data (``vmap(grad(loss))``), [R, B]
        minibatches gathered by advanced indexing, manual SGD as in (c) above.

Sampler set-up: a ``MinibatchSampler`` at paper size first forms each sample's moment
vector (x xᵀ's upper triangle and y xᵀ) for every replica; at width 128 it concatenates
x and y. That set-up is timed (median of the same interleaved blocks, as a contender of
its own) and *included in the headline moment-form rates*, amortised over the engine's
steps per timed block (48 by default, 16 with ``--quick``: 6 and 2 epochs) — per step,
set-up / that count is added to every moment-form implementation's step time (naive: its
own sampler, on the replicas it runs). The table also gives the step-only rate (set-up
excluded) and the set-up in seconds. Data form needs no set-up. Module construction and
stacking are not timed (as before).

Every implementation draws each epoch's per-replica permutations with the same function,
``escapestat.models.deep_linear._ensemble.permutations`` (on CPU one ``torch.randperm`` per
replica), inside
the timed steps. Each replica has its own 512-sample training set (teacher y = A x +
0.1 ε), lr 0.05, β 0.01, minibatches of B = 64 without replacement, reshuffled per
replica per epoch. The naive loops are linear in R, so for R > 64 they are timed on 64 of
the R replicas (said so). Before timing, ``check_agreement`` (float64, untimed) runs all
six from the same init on the same minibatch indices for 12 steps (across an epoch
boundary) and asserts the same weights (|Δw| < 1e-10): at paper size with 512 replicas
(the engine's vector path, timed at R ≥ 1024; naive on 4 of them) and at width 128 with
8 replicas (bmm path). The sampler's rules (each replica its own permutation, every
sample once per epoch, a new permutation every epoch) are checked in
tests/models/test_deep_linear.py, not here.

Sizes: the paper's 2 → 10 → 10 → 2 (teacher strengths 0.9, 0.8) at R = 64, 1024, 4096; and
128 → 128 → 128 → 128 (an 8-mode teacher, B 64) at R = 256, where the engine's GFLOP/s
(flops counted analytically: ``step_flops`` for the moment form, ``data_step_flops`` for
the data form) is set beside a 2048 × 2048 float32 matmul's.

Timing: float32; warm-up of one epoch; then ``--repeats`` blocks of whole epochs per
implementation, interleaved (engine, vmap, naive, … in both forms, set-up) so that drift
on a shared machine hits all alike; each figure is the median block.
``time.perf_counter``; CUDA is synchronised around each block. Run it on an idle machine:
on 2 cores, while another process holds one, each of torch's 2-thread parallel regions
can wait a scheduler slice (ms) for its second thread; that hits medium-sized ops (the
engine's, and every data-form forward) far more than tiny ones (measured in this version
with other jobs running: the naive loop on data fell from ~3,000 to 60–600 replica-steps/s
while the moment-form loop stayed near 2,500).

Claims: none are asserted. The old design targets (≥ 200× naive, ≥ 2× vmap at R 4096,
paper size; ≥ 40% of matmul at width 128) are printed with "met"/"not met" for the mixed
comparison (the one they were set on) and for each fair comparison. The fair comparisons
do not support the first two. One full run of escapestat 0.7.0 on this project's 2-core
CPU (idle; ``python benchmarks/throughput.py --no-grokking``), R 4096, paper size: engine
169× naive and 1.33× vmap in moment form; its batched layout on data 41× naive and 1.07×
vmap; the old mixed figure 195× and 5.1× (set-up now included; 300× without it). So the
engine's lead over the naive loop is batching the replicas (41× on data) times the moment
shortcut (4.8× here), and its lead over vmap is small once vmap gets the same form. At
width 128 the moment form runs at 53% of the matmul (the GFLOP/s target is met), but
there (B 64 < width) the data form does half the flops and takes 1.9× as many
replica-steps/s.

JSON (last line), paper size at R 4096 (with ``--quick``, R 1024):
  ``speedup_vs_naive``, ``speedup_vs_vmap`` — the old, *mixed* comparison, kept for
      downstream: engine in moment form (sampler set-up now included, amortised as above)
      against the baselines on data;
  ``speedup_vs_naive_moment``, ``speedup_vs_vmap_moment`` — engine against the baselines,
      all in moment form, set-up included for all;
  ``speedup_vs_naive_data``, ``speedup_vs_vmap_data`` — the engine's batched layout on
      data against the baselines on data;
  ``engine_moment_vs_data`` — what the moment shortcut alone buys the batched engine;
  ``sampler_setup_s`` — seconds to build the engine's sampler at that R;
      ``setup_amortised_steps`` — the step count it is spread over in the rates;
  ``gflops`` — engine in moment form at width 128, set-up included (as before, analytic
      flops); ``gflops_data`` — the batched layout on data there; ``matmul_gflops``.

Grokking section (after the linear one; ``--no-grokking`` skips it): the MLP and
transformer engines on modular addition against their naive and vmap baselines, as
``benchmarks/grok_throughput.py`` runs them alone (its docstring says how); its figures
join the JSON line as ``mlp_speedup_vs_naive``, ``mlp_speedup_vs_vmap``, ``mlp_gflops``
and ``transformer_speedup_vs_naive``. Those engines train on data, so no shortcut there.

p = 113 section (last; ``--no-p113`` skips it): Nanda et al.'s transformer at research
scale, the engine (R 8) against a careful researcher's plain ``nn.Module`` loop, as
``benchmarks/transformer113.py`` runs it alone (its docstring says how); its figures join
the JSON line as ``transformer113_speedup_vs_plain``, ``transformer113_gflops`` and the
rest of that script's keys (with ``--busy K`` also the slow-downs under K competitors).

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--quick] [--steps N]
                                    [--threads N] [--repeats N] [--no-grokking]
                                    [--no-p113] [--busy K]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from grok_throughput import grokking_section
from timing import measure, pick_device
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from transformer113 import p113_section

from escapestat.models.deep_linear._ensemble import (
    VECTOR_MIN_REPLICAS,
    DeepLinearEnsemble,
    MinibatchSampler,
    permutations,
    sgd_step,
)
from escapestat.models.deep_linear._tasks import Dataset, make_dataset, make_teacher

LR, BETA = 0.05, 0.01
N_TRAIN, BATCH, NOISE = 512, 64, 0.1
EPOCH = N_TRAIN // BATCH  # steps per epoch; timed blocks are whole epochs
NAIVE_SUBSET = 64
TARGET_NAIVE, TARGET_VMAP, TARGET_MATMUL = 200.0, 2.0, 0.40
MATMUL_N = 2048
IMPLS = ("engine", "vmap", "naive")
FORMS = ("moment", "data")
LABELS = {
    ("engine", "moment"): "engine: sampler + sgd_step",
    ("vmap", "moment"): "vmap(grad), moment loss",
    ("naive", "moment"): "naive loop, moment loss",
    ("engine", "data"): "engine layout on data (bmm)",
    ("vmap", "data"): "vmap(grad) on data",
    ("naive", "data"): "naive loop on data",
}


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


def first(data: Dataset, n: int) -> Dataset:
    """The first n replicas' data (for the naive loop's sampler)."""
    return Dataset(data.x_train[:n], data.y_train[:n], data.x_test[:n], data.y_test[:n])


class EpochBatches:
    """Minibatch indices [R, B] for the data form: without replacement, per-replica reshuffle.

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


def moment_loss(p: torch.Tensor, sxx: torch.Tensor, syx: torch.Tensor) -> torch.Tensor:
    """½ tr(P Sxx Pᵀ) − tr(P Syxᵀ): ``half_mse`` on the minibatch less ½ mean‖y‖², a constant."""
    return 0.5 * ((p @ sxx) * p).sum() - (p * syx).sum()


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
    """(b) One module and one ``torch.optim.SGD`` per replica, stepped in a Python loop.

    ``step(idx)``: on data (the minibatch rows ``idx`` of each replica's x, y);
    ``step_moments(sxx, syx)``: on the moment loss, P from the module (Pᵀ = net(I)).
    """

    def __init__(self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.nets = [replica_module(weights, r) for r in range(x.shape[0])]
        self.opts = [torch.optim.SGD(net.parameters(), lr=LR, weight_decay=BETA)
                     for net in self.nets]
        self.eye = torch.eye(x.shape[2], dtype=x.dtype, device=x.device)

    def step(self, idx: torch.Tensor) -> None:
        for r, (net, opt) in enumerate(zip(self.nets, self.opts, strict=True)):
            xb, yb = self.x[r, idx[r]], self.y[r, idx[r]]
            opt.zero_grad()
            loss = half_mse(net(xb), yb)
            loss.backward()
            opt.step()

    def step_moments(self, sxx: torch.Tensor, syx: torch.Tensor) -> None:
        for r, (net, opt) in enumerate(zip(self.nets, self.opts, strict=True)):
            opt.zero_grad()
            loss = moment_loss(net(self.eye).T, sxx[r], syx[r])
            loss.backward()
            opt.step()

    def weights(self) -> list[torch.Tensor]:
        layers = zip(*(list(net) for net in self.nets), strict=True)
        return [torch.stack([lin.weight.detach() for lin in layer]) for layer in layers]


class VmapEnsemble:
    """(c) ``vmap(grad(·))`` over ``functional_call`` with stacked parameters; manual SGD.

    ``step(idx)`` on data, ``step_moments(sxx, syx)`` on the moment loss (P from the module).
    """

    def __init__(self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        nets = [replica_module(weights, r) for r in range(x.shape[0])]
        params, _ = stack_module_state(nets)
        self.params = {name: p.detach() for name, p in params.items()}
        base = copy.deepcopy(nets[0]).to("meta")
        self.rows = torch.arange(x.shape[0], device=x.device)[:, None]
        eye = torch.eye(x.shape[2], dtype=x.dtype, device=x.device)

        def loss(p, xb, yb):
            return half_mse(functional_call(base, (p,), (xb,)), yb)

        def loss_moments(p, sxx, syx):
            return moment_loss(functional_call(base, (p,), (eye,)).T, sxx, syx)

        self.grads = vmap(grad(loss))
        self.grads_moments = vmap(grad(loss_moments))

    def _update(self, grads: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.add_(grads[name].add_(p, alpha=BETA), alpha=-LR)  # p −= lr (g + β p)

    def step(self, idx: torch.Tensor) -> None:
        xb, yb = self.x[self.rows, idx], self.y[self.rows, idx]
        self._update(self.grads(self.params, xb, yb))

    def step_moments(self, sxx: torch.Tensor, syx: torch.Tensor) -> None:
        self._update(self.grads_moments(self.params, sxx, syx))

    def weights(self) -> list[torch.Tensor]:
        return list(self.params.values())


class BatchedDataStep:
    """(a, data form) The engine's batched layout on data: NOT escapestat code.

    Weights [R, out, in] as in ``DeepLinearEnsemble`` (kept contiguous, replica-first: bmm);
    per step the [R, B] minibatch is gathered, then one bmm per layer forward, the residual
    (P x − y)/B, and per layer ∇W_l = Eᵀ H_{l−1} and (but for layer 1) E ← E W_l, each a
    bmm; W_l −= lr (∇W_l + β W_l) in place.
    """

    def __init__(self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.w = [w.contiguous().clone() for w in weights]
        self.rows = torch.arange(x.shape[0], device=x.device)[:, None]

    def step(self, idx: torch.Tensor) -> None:
        acts = [self.x[self.rows, idx]]  # [R, B, d_in]
        yb = self.y[self.rows, idx]
        for w in self.w:
            acts.append(torch.bmm(acts[-1], w.mT))
        err = (acts[-1] - yb).div_(BATCH)  # ∂loss/∂pred, [R, B, d_out]
        for layer in range(len(self.w) - 1, -1, -1):
            w = self.w[layer]
            g = torch.bmm(err.mT, acts[layer])
            if layer:
                err = torch.bmm(err, w)  # with W_l before its update
            w.add_(g.add_(w, alpha=BETA), alpha=-LR)

    def weights(self) -> list[torch.Tensor]:
        return self.w


# ---------------------------------------------------------------------------- checks


def check_agreement(device: torch.device, net: Net = PAPER,
                    replicas: int = VECTOR_MIN_REPLICAS, steps: int = 12) -> tuple[float, float]:
    """All six implementations reach the same weights (float64, same init and minibatches).

    The moment-form ones get the moments of exactly the minibatches the data-form ones use
    (XᵀX/B, YᵀX/B of the gathered rows). At paper size with ``VECTOR_MIN_REPLICAS``
    replicas the engine takes, on CPU, the path timed at R ≥ 1024 (replica-last vector
    ops); with fewer, or at width 128, bmm. The naive loops run the first 4 replicas.
    Returns the largest weight difference to the engine and how far the weights moved.
    """
    few = min(4, replicas)
    g, data, model = make_problem(net, replicas, device, dtype=torch.float64, seed=1)
    if net == PAPER and replicas >= VECTOR_MIN_REPLICAS:
        assert device.type != "cpu" or model.replica_last, "not the code path timed at large R"
    start = [w.clone() for w in model.weights]
    x_all, y_all = data.x_train, data.y_train
    on_data = {"naive": NaiveLoop([w[:few] for w in start], x_all[:few], y_all[:few]),
               "vmap": VmapEnsemble(start, x_all, y_all),
               "engine layout": BatchedDataStep(start, x_all, y_all)}
    on_moments = {"naive": NaiveLoop([w[:few] for w in start], x_all[:few], y_all[:few]),
                  "vmap": VmapEnsemble(start, x_all, y_all)}
    batches = EpochBatches(replicas, g, device)
    rows = torch.arange(replicas, device=device)[:, None]
    for _ in range(steps):  # crosses an epoch boundary (8 steps per epoch)
        idx = batches.next()
        x, y = x_all[rows, idx], y_all[rows, idx]
        sxx, syx = x.mT @ x / BATCH, y.mT @ x / BATCH
        sgd_step(model, sxx, syx, LR, BETA)
        for name, impl in on_data.items():
            impl.step(idx[:few] if name == "naive" else idx)
        for name, impl in on_moments.items():
            impl.step_moments(*((sxx[:few], syx[:few]) if name == "naive" else (sxx, syx)))
    worst = max(float((a[: len(b)] - b).abs().max())
                for impl in (*on_data.values(), *on_moments.values())
                for a, b in zip(model.weights, impl.weights(), strict=True))
    moved = max(float((w - w0).abs().max()) for w, w0 in zip(model.weights, start, strict=True))
    assert moved > 1e-3, f"weights barely moved ({moved:g}); the check would be vacuous"
    assert worst < 1e-10, f"engine and baselines disagree after {steps} steps: {worst:g}"
    return worst, moved


# ---------------------------------------------------------------------------- timing


def whole_epochs(steps: int) -> int:
    return max(EPOCH, EPOCH * math.ceil(steps / EPOCH))


def compare(net: Net, replicas: int, device: torch.device, engine_steps: int,
            other_steps: int, repeats: int, amortise: int, extra=None) -> dict[str, float]:
    """Replica-steps/s of the three implementations in both forms for one size.

    Keys ``(impl, form)``: headline rates (moment form: sampler set-up / ``amortise`` added
    to each step); ``(impl, "moment-steps")``: moment form without set-up; ``setup`` and
    ``setup_sub``: seconds to build the sampler on R and on the naive loop's replicas; then
    any ``extra`` contender's seconds per call.
    """
    g, data, model = make_problem(net, replicas, device)
    sub = min(replicas, NAIVE_SUBSET)
    x, y = data.x_train, data.y_train
    sub_data = first(data, sub)
    init = [w.clone() for w in model.weights]
    naive_d = NaiveLoop([w[:sub] for w in init], x[:sub], y[:sub])
    naive_m = NaiveLoop([w[:sub] for w in init], x[:sub], y[:sub])
    vmap_d, vmap_m = VmapEnsemble(init, x, y), VmapEnsemble(init, x, y)
    engine_d = BatchedDataStep(init, x, y)
    del init
    samplers = {"engine": MinibatchSampler(data, BATCH, generator=g),
                "vmap": MinibatchSampler(data, BATCH, generator=g),
                "naive": MinibatchSampler(sub_data, BATCH, generator=g)}
    batches = {"engine": EpochBatches(replicas, g, device),
               "vmap": EpochBatches(replicas, g, device),
               "naive": EpochBatches(sub, g, device)}

    def engine_m() -> None:
        sxx, syx = samplers["engine"].next_moments()
        sgd_step(model, sxx, syx, LR, BETA)

    def on_moments(impl, name: str) -> Callable[[], None]:
        return lambda: impl.step_moments(*samplers[name].next_moments())

    def on_data(impl, name: str) -> Callable[[], None]:
        return lambda: impl.step(batches[name].next())

    contenders = {
        ("engine", "moment"): (engine_m, engine_steps),
        ("vmap", "moment"): (on_moments(vmap_m, "vmap"), other_steps),
        ("naive", "moment"): (on_moments(naive_m, "naive"), other_steps),
        ("engine", "data"): (on_data(engine_d, "engine"), engine_steps),
        ("vmap", "data"): (on_data(vmap_d, "vmap"), other_steps),
        ("naive", "data"): (on_data(naive_d, "naive"), other_steps),
        "setup": (lambda: MinibatchSampler(data, BATCH, generator=g), 1),
    }
    if sub < replicas:
        contenders["setup_sub"] = (lambda: MinibatchSampler(sub_data, BATCH, generator=g), 1)
    contenders.update(extra or {})
    seconds = measure(contenders, repeats, device, warmup_calls=EPOCH)
    finite = bool(model.is_finite_and_bounded(1e6).all()) and all(
        bool(torch.isfinite(p).all())
        for impl in (vmap_d, vmap_m, engine_d, naive_m) for p in impl.weights())
    assert finite, f"weights blew up at {net.label}, R {replicas}: timing would be meaningless"
    setup = seconds.pop("setup")
    setup_sub = seconds.pop("setup_sub", setup)
    out: dict = {"setup": setup, "setup_sub": setup_sub}
    for impl in IMPLS:
        n = sub if impl == "naive" else replicas
        per_setup = (setup_sub if impl == "naive" else setup) / amortise
        step_m = seconds.pop((impl, "moment"))
        out[impl, "moment-steps"] = n / step_m
        out[impl, "moment"] = n / (step_m + per_setup)
        out[impl, "data"] = n / seconds.pop((impl, "data"))
    return out | seconds


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


def data_step_flops(widths: Sequence[int], batch: int) -> int:
    """Flops per replica of one data-form SGD step (``BatchedDataStep``), counted as above.

    Forward 2B·in·out per layer; residual (P x − y)/B 2B·d_out; per layer ∇W = EᵀH 2B·in·out
    and, for layers ≥ 2, E W 2B·in·out; then 4 per weight (+ βW, update).
    """
    sizes = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return (2 * batch * sum(sizes) * 2 + 2 * batch * sum(sizes[1:])
            + 2 * batch * widths[-1] + 4 * sum(sizes))


# ---------------------------------------------------------------------------- main


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def print_table(results: dict, amortise: int) -> None:
    head = (f"{'net':<18}{'R':>6}  {'form':<8}{'implementation':<30}{'replica-steps/s':>16}"
            f"{'(steps only)':>14}{'× naive':>10}{'× vmap':>9}")
    print(head)
    print("-" * len(head))
    for (label, replicas), rate in results.items():
        for form in FORMS:
            for impl in IMPLS:
                steps_only = (f"{rate[impl, 'moment-steps']:>14,.0f}" if form == "moment"
                              else f"{'':>14}")
                note = ""
                if impl == "naive" and replicas > NAIVE_SUBSET:
                    note = f"   timed on {NAIVE_SUBSET} of the {replicas} replicas"
                r = rate[impl, form]
                print(f"{label:<18}{replicas:>6}  {form:<8}{LABELS[impl, form]:<30}{r:>16,.0f}"
                      f"{steps_only}{r / rate['naive', form]:>9,.1f}×"
                      f"{r / rate['vmap', form]:>8.2f}×{note}")
        mixed = rate["engine", "moment"]
        print(f"{'':<26}mixed (old figure): engine moment form vs baselines on data "
              f"{mixed / rate['naive', 'data']:,.1f}× naive, {mixed / rate['vmap', 'data']:.2f}× "
              f"vmap")
        sub = min(replicas, NAIVE_SUBSET)
        print(f"{'':<26}sampler set-up {1e3 * rate['setup']:.1f} ms on {replicas} replicas"
              + (f", {1e3 * rate['setup_sub']:.1f} ms on {sub}" if sub < replicas else "")
              + f"; in the moment rates, amortised over {amortise} steps\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: R 64 and 1024, R 64 at width 128, fewer steps")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed engine steps per block at paper size (default 48, quick "
                             "16), both forms; the sampler set-up is amortised over as many; "
                             "the others use a sixth; all rounded up to whole epochs")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per figure (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-grokking", action="store_true",
                        help="skip the grokking section (MLP and transformer engines)")
    parser.add_argument("--no-p113", action="store_true",
                        help="skip the p = 113 transformer section")
    parser.add_argument("--busy", type=int, default=0, metavar="K",
                        help="p = 113 section: also time with K CPU-bound competitors")
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
    worst_w, moved_w = check_agreement(device, WIDE, replicas=8)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    print(f"device: {where}; torch {torch.__version__}; float32; B {BATCH} from {N_TRAIN} "
          f"per replica; lr {LR}, β {BETA}")
    print(f"timing: median of {repeats} interleaved blocks; per block {steps} engine steps "
          f"(either form) at paper size, {other_steps} for the rest (whole epochs of {EPOCH} "
          f"steps); moment-form rates include the sampler set-up amortised over {steps} steps")
    print(f"check (float64, untimed, 12 steps, same init and minibatches): engine = vmap = "
          f"naive nn.Module+SGD (4 replicas), each in moment form and on data, = the engine "
          f"layout on data; {PAPER.label} × {VECTOR_MIN_REPLICAS} replicas max |Δw| "
          f"{worst:.1e} (moved ≤ {moved:.2f}), {WIDE.label} × 8 max |Δw| {worst_w:.1e} "
          f"(moved ≤ {moved_w:.2f})\n")

    results: dict[tuple[str, int], dict] = {}
    for replicas in sizes:
        results[PAPER.label, replicas] = compare(PAPER, replicas, device, steps, other_steps,
                                                 repeats, steps)
    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)
    c = torch.empty(MATMUL_N, MATMUL_N, device=device)
    wide = compare(WIDE, wide_r, device, other_steps, other_steps, repeats, steps,
                   extra={"matmul": (lambda: torch.mm(a, b, out=c), 5)})
    results[WIDE.label, wide_r] = wide
    print_table(results, steps)

    mm = 2 * MATMUL_N**3 / wide["matmul"] / 1e9
    flops, flops_d = step_flops(WIDE.widths, BATCH), data_step_flops(WIDE.widths, BATCH)
    gflops = wide["engine", "moment"] * flops / 1e9
    gflops_d = wide["engine", "data"] * flops_d / 1e9
    print(f"width 128 ({WIDE.label}, B {BATCH}, R {wide_r}), beside a {MATMUL_N}×{MATMUL_N} "
          f"float32 matmul's {mm:.1f} GFLOP/s (flops counted analytically):")
    print(f"  engine, moment form: {gflops:.1f} GFLOP/s ({flops / 1e6:.1f} MFLOP per "
          f"replica-step, set-up included) = {100 * gflops / mm:.0f}% of it")
    print(f"  engine layout on data: {gflops_d:.1f} GFLOP/s ({flops_d / 1e6:.1f} MFLOP per "
          f"replica-step) = {100 * gflops_d / mm:.0f}% of it")
    paper_flops = step_flops(PAPER.widths, BATCH)
    top = max(sizes)
    top_rate = results[PAPER.label, top]
    print(f"(paper size: {paper_flops:,} flop per moment-form replica-step, so the engine at "
          f"R {top} runs {top_rate['engine', 'moment'] * paper_flops / 1e9:.2f} GFLOP/s: "
          f"overhead-bound, not flop-bound)\n")

    def ratio(impl: str, form: str, engine_form: str | None = None) -> float:
        return top_rate["engine", engine_form or form] / top_rate[impl, form]

    rows = [("mixed: engine moment vs baselines on data (old)",
             ratio("naive", "data", "moment"), ratio("vmap", "data", "moment")),
            ("moment form: all on moments, set-up included",
             ratio("naive", "moment"), ratio("vmap", "moment")),
            ("data form: engine layout on data vs baselines", ratio("naive", "data"),
             ratio("vmap", "data"))]
    print(f"old design targets, paper size at R {top}"
          + (" (--quick: R 4096 not run)" if top != 4096 else "")
          + f": engine ≥ {TARGET_NAIVE:.0f}× naive, ≥ {TARGET_VMAP:.0f}× vmap")
    for what, vs_naive, vs_vmap in rows:
        print(f"  {what:<50}{vs_naive:8.1f}× naive {verdict(vs_naive >= TARGET_NAIVE):<8}"
              f"{vs_vmap:7.2f}× vmap {verdict(vs_vmap >= TARGET_VMAP)}")
    print(f"  width-128 GFLOP/s, moment form ≥ {100 * TARGET_MATMUL:.0f}% of matmul"
          f"{'':<9}{100 * gflops / mm:6.0f}%       {verdict(gflops >= TARGET_MATMUL * mm)}"
          f"   (data form {100 * gflops_d / mm:.0f}%)")
    figures = {
        "speedup_vs_naive": round(rows[0][1], 1), "speedup_vs_vmap": round(rows[0][2], 2),
        "speedup_vs_naive_moment": round(rows[1][1], 1),
        "speedup_vs_vmap_moment": round(rows[1][2], 2),
        "speedup_vs_naive_data": round(rows[2][1], 1),
        "speedup_vs_vmap_data": round(rows[2][2], 2),
        "engine_moment_vs_data": round(ratio("engine", "data", "moment"), 2),
        "sampler_setup_s": round(top_rate["setup"], 4), "setup_amortised_steps": steps,
        "gflops": round(gflops, 2), "gflops_data": round(gflops_d, 2),
        "matmul_gflops": round(mm, 2),
    }
    if not args.no_grokking:
        print()
        grok = grokking_section(device, args.quick, repeats=args.repeats)
        figures |= {k: v for k, v in grok.items() if k != "matmul_gflops"}
    if not args.no_p113:
        print()
        figures |= p113_section(device, args.quick, repeats=args.repeats, busy=args.busy)
    print(f"wall time {time.perf_counter() - began:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
