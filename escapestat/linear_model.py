"""Deep linear nets as a replica model: teacher, data, the trap, the order parameter, the step.

``DeepLinearTrial`` implements ``replica_model.ReplicaModel`` for a study's deep linear
student: it builds the teacher and each replica's data, puts every replica in the trap
(the structured ``aligned`` start, or the paper's ``trained`` protocol), and steps with
moment-form gradients (``ensemble``) and the study's integrator (SGD or Langevin), with
an optional Grokfast filter on the data gradient. Strings from the study file become
objects here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import ensemble as ens
from . import tasks
from .errors import EscapestatError
from .integrators import select_integrator
from .replica_model import Hyper
from .study import Condition, Study
from .theory import stationary_points


def _learned_amplitude(study: Study, beta: float, mode: int) -> float | None:
    m = study.model
    return stationary_points(m.depth, m.strengths[mode], beta)[1]


def trap_amplitudes(study: Study, beta: float) -> list[float]:
    """Per-layer amplitude of each mode in the structured trapped start at β."""
    amps = []
    for k in range(len(study.model.strengths)):
        learned = _learned_amplitude(study, beta, k)
        amps.append(0.0 if k == study.trapped_mode or learned is None else float(learned))
    return amps


def reference_beta(study: Study, cond: Condition) -> float:
    """β that sets the learned state to escape to: the run's β, its final value if scheduled."""
    return cond.beta.value(study.run.max_steps)


def learned_strength(study: Study, beta: float) -> float:
    """End-to-end strength w = a^L of the trapped mode's learned state at β."""
    a = _learned_amplitude(study, beta, study.trapped_mode)
    if a is None:
        s = study.model.strengths[study.trapped_mode]
        raise EscapestatError(
            f"at beta = {beta:.4g} the trapped mode (strength {s:g}) has no learned state "
            "to escape to (beta is above its spinodal)"
        )
    return float(a) ** study.model.depth


class ModeStrength:
    """q = u_kᵀ P v_k / w_learned: the trapped mode's strength over its learned value."""

    def __init__(self, teacher: tasks.Teacher, mode: int, learned: torch.Tensor):
        self.teacher, self.mode, self.learned = teacher, mode, learned

    def __call__(self, end_to_end: torch.Tensor) -> torch.Tensor:
        return tasks.mode_strengths(end_to_end, self.teacher)[:, self.mode] / self.learned

    def keep(self, idx: torch.Tensor) -> None:
        self.learned = self.learned[idx]


class TestErrorFraction:
    """q = (e_trap − e) / (e_trap − e_learned): how far test error fell to the learned level."""

    def __init__(self, test_error, trap: torch.Tensor, learned: torch.Tensor):
        self.test_error, self.trap, self.learned = test_error, trap, learned

    def __call__(self, end_to_end: torch.Tensor) -> torch.Tensor:
        return (self.trap - self.test_error(end_to_end)) / (self.trap - self.learned)

    def keep(self, idx: torch.Tensor) -> None:
        self.trap, self.learned = self.trap[idx], self.learned[idx]


class DeepLinearTrial:
    """R trapped replicas of a deep linear student; one per entry of ``conds``."""

    def __init__(self, study: Study, conds: Sequence[Condition], generator: torch.Generator,
                 device: torch.device, batch_size: int | None = None):
        self.study, self.gen, self.device = study, generator, device
        m, run = study.model, study.run
        self.dtype = torch.float64 if run.dtype == "float64" else torch.float32
        self.limit = run.divergence_limit
        n = len(conds)
        self.teacher = tasks.make_teacher(
            m.strengths, study.widths[0], study.widths[-1], rotate=m.rotate, generator=generator,
            dtype=self.dtype, device=device,
        )
        self.data: tasks.Dataset | None = None
        self.sampler = self._sampler(n, batch_size)
        self.net = self._trap(conds, n)
        self.order = self._order_parameter(conds)
        self.integrator = select_integrator(study.dynamics.noise)
        spec = study.dynamics.grad_filter
        self.grad_filter = None if spec is None else spec.build()

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
        init, widths = self.study.init, self.study.widths
        if init.kind == "trained":
            net = ens.DeepLinearEnsemble.random(n, widths, init.scale, generator=self.gen,
                                                dtype=self.dtype, device=self.device)
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

    def _order_parameter(self, conds: Sequence[Condition]):
        study, k = self.study, self.study.trapped_mode
        betas = [reference_beta(study, c) for c in conds]
        learned = torch.tensor([learned_strength(study, b) for b in betas], dtype=self.dtype,
                               device=self.device)
        if study.escape.order_parameter == "mode":
            return ModeStrength(self.teacher, k, learned)
        depth, u, v = study.model.depth, self.teacher.u, self.teacher.v
        trap, full = [], []
        for beta, w_k in zip(betas, learned.tolist(), strict=True):
            w = [a**depth for a in trap_amplitudes(study, beta)]
            trap.append(w)
            full.append(w[:k] + [w_k] + w[k + 1:])
        maps = [torch.einsum("ok,rk,ik->roi", u, torch.tensor(w, dtype=u.dtype, device=u.device),
                             v) for w in (trap, full)]
        return TestErrorFraction(self._test_error, self._test_error(maps[0]),
                                 self._test_error(maps[1]))

    def _test_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """Held-out test error per replica; the exact population error without a test set."""
        if self.data is not None:
            return self.data.test_error(end_to_end)
        return 0.5 * (self.teacher.matrix - end_to_end).square().sum((1, 2))

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
        if self.data is not None:  # the test set (order parameter); samplers keep their own
            self.data.select(idx)
        if self.grad_filter is not None:
            self.grad_filter.keep(idx)
