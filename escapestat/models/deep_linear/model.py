"""Deep linear nets as a replica model: teacher, data, the trap, the order parameter, the step.

``DeepLinearTrial`` implements ``models.base.ReplicaModel`` for a study's deep linear
student: it builds the teacher and each replica's data, puts every replica in the trap
(the structured ``aligned`` start, or the paper's ``trained`` protocol), and steps with
moment-form gradients (``ensemble``) and the study's integrator (SGD or Langevin), with
an optional Grokfast filter on the data gradient. Strings from the study file become
objects here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from escapestat.config._escape_rule import EscapeRule
from escapestat.config._study import Condition, Study
from escapestat.errors import EscapestatError
from escapestat.models._grad_filter import build_grad_filter
from escapestat.models._integrators import select_integrator
from escapestat.models._threads import small_work
from escapestat.models.base import Hyper, ReplicaModel, torch_dtype
from escapestat.models.deep_linear import _ensemble as ens
from escapestat.models.deep_linear import _tasks as tasks
from escapestat.models.deep_linear.spec import DeepLinearSpec
from escapestat.theory._landscape import stationary_points


def deep_linear_spec(study: Study) -> DeepLinearSpec:
    """The study's ``[model]``: a deep linear study's is a ``DeepLinearSpec`` (its kind's
    spec class, ``config._registry``)."""
    return cast(DeepLinearSpec, study.model)


def _learned_amplitude(study: Study, beta: float, mode: int) -> float | None:
    m = deep_linear_spec(study)
    return stationary_points(m.depth, m.strengths[mode], beta)[1]


def trap_amplitudes(study: Study, beta: float) -> list[float]:
    """Per-layer amplitude of each mode in the structured trapped start at β."""
    amps = []
    for k in range(len(deep_linear_spec(study).strengths)):
        learned = _learned_amplitude(study, beta, k)
        amps.append(0.0 if k == study.trapped_mode or learned is None else float(learned))
    return amps


def reference_beta(study: Study, cond: Condition) -> float:
    """β that sets the learned state to escape to: the run's β, its final value if scheduled."""
    return cond.beta.value(study.run.max_steps)


def learned_strength(study: Study, beta: float) -> float:
    """End-to-end strength w = a^L of the trapped mode's learned state at β."""
    m = deep_linear_spec(study)
    a = _learned_amplitude(study, beta, study.trapped_mode)
    if a is None:
        s = m.strengths[study.trapped_mode]
        raise EscapestatError(
            f"at beta = {beta:.4g} the trapped mode (strength {s:g}) has no learned state "
            "to escape to (beta is above its spinodal)"
        )
    return float(a) ** m.depth


def saddle_amplitude(study: Study, beta: float) -> float:
    """Layer amplitude of the trapped mode's saddle at β (the ridge between zero and learned)."""
    m = deep_linear_spec(study)
    a = stationary_points(m.depth, m.strengths[study.trapped_mode], beta)[0]
    if a is None:
        s = m.strengths[study.trapped_mode]
        raise EscapestatError(
            f"[init] seed_over_saddle: at beta = {beta:.4g} the trapped mode (strength {s:g}) "
            "has no saddle to seed around (beta is above its spinodal)")
    return float(a)


def seed_mode(net: ens.DeepLinearEnsemble, teacher: tasks.Teacher, mode: int,
              amplitude: torch.Tensor, generator: torch.Generator) -> None:
    """Add a balanced path of layer amplitude b (per replica) that carries teacher mode
    ``mode``: W_1 += b h_1 v_kᵀ, W_l += b h_l h_{l−1}ᵀ, W_L += b u_k h_{L−1}ᵀ, so the mode's
    end-to-end strength gains b^L. Each h_l is a random unit direction orthogonal to the
    other modes' images after layer l, so the learned modes are left as they are."""
    weights, k = net.weights, teacher.v.shape[1]
    r, dtype, device = net.replicas, weights[0].dtype, weights[0].device
    others = [j for j in range(k) if j != mode]
    image = teacher.v[:, others].to(dtype).expand(r, -1, -1)  # [R, d, K−1]
    prev = teacher.v[:, mode].to(dtype).expand(r, -1)
    b = amplitude.to(dtype).reshape(-1, 1, 1)
    for layer, w in enumerate(weights):
        if layer == len(weights) - 1:
            out = teacher.u[:, mode].to(dtype).expand(r, -1)
        else:
            image = w @ image
            h = torch.randn(r, w.shape[1], 1, generator=generator, dtype=dtype, device=device)
            if others:
                q = torch.linalg.qr(image).Q
                h = h - q @ (q.transpose(1, 2) @ h)
            out = (h / h.norm(dim=1, keepdim=True)).squeeze(-1)
        w += b * out[:, :, None] * prev[:, None, :]
        prev = out


def trapped_component(net: ens.DeepLinearEnsemble, learned: int) -> torch.Tensor:
    """max_l σ_{r+1}(W_l) per replica, r = ``learned`` modes: the largest direction any layer
    carries beyond the learned ones — what a gradient would need to grow a new mode (it is
    a product over layers). In a converged trap it sits at the rounding floor."""
    finite = torch.stack([w.flatten(1).isfinite().all(1) for w in net.weights]).all(0)
    keep = finite.reshape(-1, 1, 1)
    sigma = torch.stack([torch.linalg.svdvals(torch.where(keep, w, 0.0))[:, learned]
                         for w in net.weights]).amax(0)
    return torch.where(finite, sigma, torch.nan)  # a diverged replica has no such thing


def rounding_floor(net: ens.DeepLinearEnsemble) -> torch.Tensor:
    """eps × max_l ‖W_l‖_F per replica: the order of the rounding error a step leaves in
    any direction of the weights, so the smallest trapped component the dtype can hold."""
    eps = torch.finfo(net.weights[0].dtype).eps
    return eps * torch.stack([w.flatten(1).norm(dim=1) for w in net.weights]).amax(0)


class ModeStrength:
    """q = u_kᵀ P v_k / w_learned: the trapped mode's strength over its learned value."""

    def __init__(self, teacher: tasks.Teacher, mode: int, learned: torch.Tensor):
        self.teacher, self.mode, self.learned = teacher, mode, learned

    def __call__(self, end_to_end: torch.Tensor) -> torch.Tensor:
        return tasks.mode_strengths(end_to_end, self.teacher)[:, self.mode] / self.learned

    def keep(self, idx: torch.Tensor) -> None:
        self.learned = self.learned[idx]


class ErrorFraction:
    """q = (e_trap − e) / (e_trap − e_learned): how far an error (test, or train) fell from
    the trap's level to the learned state's."""

    def __init__(self, error, trap: torch.Tensor, learned: torch.Tensor):
        self.error, self.trap, self.learned = error, trap, learned

    def __call__(self, end_to_end: torch.Tensor) -> torch.Tensor:
        return (self.trap - self.error(end_to_end)) / (self.trap - self.learned)

    def keep(self, idx: torch.Tensor) -> None:
        self.trap, self.learned = self.trap[idx], self.learned[idx]


class DeepLinearTrial(ReplicaModel):
    """R trapped replicas of a deep linear student; one per entry of ``conds``."""

    @classmethod
    def cpu_threads(cls, study: Study, replicas: int) -> int | None:
        """One thread when a step is too small to share out (``threads.small_work``)."""
        return 1 if small_work(replicas, study.widths) else None

    def __init__(self, study: Study, conds: Sequence[Condition], generator: torch.Generator,
                 device: torch.device, batch_size: int | None = None):
        self.study, self.gen, self.device = study, generator, device
        m, run = deep_linear_spec(study), study.run
        self.dtype = torch_dtype(study)
        self.limit = run.divergence_limit
        n = len(conds)
        self.teacher = tasks.make_teacher(
            m.strengths, study.widths[0], study.widths[-1], rotate=m.rotate, generator=generator,
            dtype=self.dtype, device=device,
        )
        self.data: tasks.Dataset | None = None
        self.sampler = self._sampler(n, batch_size)
        self.net = self._trap(conds, n)
        self.order = self._order_parameter(conds, self._test_error)
        self.fit: ModeStrength | ErrorFraction | None = None
        if self.data is not None and study.escape.order_parameter == "test_error":
            # Train error on the same scale marks the fit; the delay is test after train.
            self.fit = self._order_parameter(conds, self._train_error)
            esc = study.escape
            self.milestone_rules = {"fit": EscapeRule(esc.threshold, esc.fallback,
                                                      esc.commit_steps)}
        if study.run.curves or self.fit is not None:
            self.curve_names = ("order_parameter", "trapped_component",
                                *(("train_error", "test_error") if self.data else ()))
        self.integrator = select_integrator(study.dynamics.noise)
        #: Plain gradient descent on the whole training set: no noise of any kind.
        self.full_batch = (study.dynamics.noise == "sgd"
                           and isinstance(self.sampler, ens.MinibatchSampler) and self.sampler.full)
        spec = study.dynamics.grad_filter
        self.grad_filter = None if spec is None else build_grad_filter(spec.as_dict())
        strengths = m.strengths
        self.learned_modes = sum(s > strengths[study.trapped_mode] for s in strengths)
        self.switch_values = {  # per replica at the switch, in the order of ``conds``
            "switch_order_parameter": self.order_parameter().cpu().numpy(),
            "switch_trapped_component": trapped_component(self.net, self.learned_modes)
            .cpu().numpy(),
            "rounding_floor": rounding_floor(self.net).cpu().numpy(),
        }

    @property
    def replicas(self) -> int:
        return self.net.replicas

    # ------------------------------------------------------------------ building
    def _sampler(self, n: int, batch_size: int | None):
        d = self.study.data
        if d.kind == "population":
            return ens.PopulationMoments(self.teacher, n)
        batch = batch_size or d.n_train
        if d.kind == "fresh":
            return ens.FreshSampler(self.teacher, n, batch, d.label_noise, generator=self.gen)
        self.data = tasks.make_dataset(self.teacher, n, d.n_train, d.n_test,
                                       noise_std=d.label_noise, generator=self.gen)
        return ens.MinibatchSampler(self.data, batch, generator=self.gen)

    def _full_moments(self, n: int):
        """Full-batch moments for the trapping phase: the training set, or the population."""
        if self.data is not None:
            sxx, syx, _ = self.data.train_moments()
            return sxx, syx
        return ens.PopulationMoments(self.teacher, n).next_moments()

    def _trap(self, conds: Sequence[Condition], n: int) -> ens.DeepLinearEnsemble:
        init = self.study.init
        net = self._trapped(conds, n)
        if init.seed_over_saddle:
            saddle = {b: saddle_amplitude(self.study, b)
                      for b in {reference_beta(self.study, c) for c in conds}}
            # Each condition holds one of the ladder's seeds (config's conditions).
            b0 = torch.tensor([cast(float, c.seed_over_saddle)
                               * saddle[reference_beta(self.study, c)]
                               for c in conds], dtype=self.dtype, device=self.device)
            seed_mode(net, self.teacher, self.study.trapped_mode, b0, self.gen)
        return net

    def _trapped(self, conds: Sequence[Condition], n: int) -> ens.DeepLinearEnsemble:
        init, widths = self.study.init, self.study.widths
        if init.kind in ("trained", "random"):
            net = ens.DeepLinearEnsemble.random(n, widths, init.scale, generator=self.gen,
                                                dtype=self.dtype, device=self.device)
            if init.kind == "trained":
                assert init.beta_trap is not None  # the deep linear check requires it
                sxx, syx = self._full_moments(n)
                for _ in range(init.trap_steps):
                    ens.sgd_step(net, sxx, syx, init.trap_lr, init.beta_trap)
            return net
        # Structured trapped start at β(0), built per distinct β and put back in replica order.
        betas = [c.beta.value(0) for c in conds]
        order, parts = [], []
        for beta in sorted(set(betas)):
            idx = [i for i, b in enumerate(betas) if b == beta]
            order.extend(idx)
            parts.append(ens.DeepLinearEnsemble.aligned(
                len(idx), self.teacher, widths, trap_amplitudes(self.study, beta), init.noise,
                generator=self.gen, dtype=self.dtype, device=self.device,
            ))
        inverse = torch.as_tensor(np.argsort(order), device=self.device)
        layers = [torch.cat(stack)[inverse].contiguous()
                  for stack in zip(*(p.weights for p in parts), strict=True)]
        return ens.DeepLinearEnsemble(layers)

    def _order_parameter(self, conds: Sequence[Condition],
                         error) -> ModeStrength | ErrorFraction:
        """The trapped mode's strength, or how far ``error`` (test or train) fell from the
        trap's level to the learned state's (from the all-zero map's, for a random init)."""
        study, k = self.study, self.study.trapped_mode
        betas = [reference_beta(study, c) for c in conds]
        learned = torch.tensor([learned_strength(study, b) for b in betas], dtype=self.dtype,
                               device=self.device)
        if study.escape.order_parameter == "mode":
            return ModeStrength(self.teacher, k, learned)
        depth, u, v = deep_linear_spec(study).depth, self.teacher.u, self.teacher.v
        trap, full = [], []
        for beta, w_k in zip(betas, learned.tolist(), strict=True):
            w = [a**depth for a in trap_amplitudes(study, beta)]
            full.append(w[:k] + [w_k] + w[k + 1:])
            trap.append([0.0] * len(w) if study.init.kind == "random" else w)
        maps = [torch.einsum("ok,rk,ik->roi", u, torch.tensor(w, dtype=u.dtype, device=u.device),
                             v) for w in (trap, full)]
        return ErrorFraction(error, error(maps[0]), error(maps[1]))

    def _test_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """Held-out test error per replica; the exact population error without a test set."""
        if self.data is not None:
            return self.data.test_error(end_to_end)
        return 0.5 * (self.teacher.matrix - end_to_end).square().sum((1, 2))

    def _train_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        assert self.data is not None  # only a study with a training set has a train error
        return self.data.train_error(end_to_end)

    # ------------------------------------------------------------------ the protocol
    def step(self, t: int, hyper: Hyper) -> None:
        sxx, syx = self.sampler.next_moments(hyper.batch_size)
        if self.grad_filter is None:
            grads = self.net.gradients(sxx, syx, hyper.weight_decay)
        else:  # Grokfast filters the data gradient; the L2 term is added after, unfiltered
            grads = self.grad_filter(self.net.gradients(sxx, syx, 0.0))
            decay = hyper.weight_decay.reshape(-1, 1, 1)
            grads = [g.addcmul(decay, w) for g, w in zip(grads, self.net.weights, strict=True)]
        self.integrator(self.net.weights, grads, hyper, self.gen)

    def order_parameter(self) -> torch.Tensor:
        return self.order(self.net.end_to_end())

    def milestones(self) -> dict[str, torch.Tensor]:
        assert self.fit is not None  # milestones are asked of a run with the fit milestone
        return {"fit": self.fit(self.net.end_to_end())}

    def curve_values(self) -> dict[str, torch.Tensor]:
        p = self.net.end_to_end()
        values = {"order_parameter": self.order(p),
                  "trapped_component": trapped_component(self.net, self.learned_modes)}
        if self.data is not None:
            values.update(train_error=self._train_error(p), test_error=self._test_error(p))
        return values

    def finite(self) -> torch.Tensor:
        return self.net.is_finite_and_bounded(self.limit)

    def final_values(self) -> dict[str, torch.Tensor]:
        """``final_loss``: each replica's test error (the population error ½‖A − P‖²
        without a test set), measured at the budget when a run holds escaped replicas."""
        return {"final_loss": self._test_error(self.net.end_to_end())}

    def keep(self, idx: torch.Tensor) -> None:
        self.net.keep(idx)
        self.sampler.keep(idx)
        self.order.keep(idx)
        if self.fit is not None:
            self.fit.keep(idx)
        if self.data is not None:  # the test set (order parameter); samplers keep their own
            self.data.select(idx)
        if self.grad_filter is not None:
            self.grad_filter.keep(idx)
