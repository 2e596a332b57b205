"""Hysteresis sweeps: ramp β up and then down across many replicas, find each mode's loop.

Physics (docs/paper.md, the hysteresis rows). Each teacher mode of strength s has the
one-mode landscape ℓ(a) = ½ (s − a^L)² + (β L / 2) a², end-to-end strength w = a^L
(``theory``).

- **Up branch.** Replicas start in the learned state at ``beta_low`` (every mode at its
  fixed point, plus small noise). For depth L ≥ 3 the learned state exists up to the
  spinodal β_sp and zero is always a local minimum, so as β rises a mode stays learned
  past β_c (where zero becomes the deeper state) and drops out near β_sp — earlier with
  noise, because the barrier ℓ(a_saddle) − ℓ(a_learned) that holds it vanishes at β_sp,
  but at low T never before β_c, where that barrier is the full ΔE(β_c). Weaker modes
  have smaller β_c and β_sp (both ∝ s^{(2L−2)/L}), so they drop first. Close to β_sp
  the drop slows down (the learned state's ghost), so within a finite dwell the jump
  can land up to one grid step above β_sp.
- **Down branch.** Coming down from above every spinodal, each mode sits in the zero
  state, a local minimum at every β > 0. It relearns only when noise carries it over
  the barrier ΔE(β) = ℓ(a_saddle) − ℓ(0), which shrinks to 0 as β → 0: by Arrhenius,
  roughly where ΔE(β)/T ≈ ln(dwell/τ₀), i.e. below β_c, at a β set by the temperature
  and the time spent per β. So the loop is [β_down, β_up] ⊃ roughly [β_c, β_sp], wider
  at lower T and shorter dwell. Free hidden units (more than one per mode, or several
  modes at zero at once) give the zero state many ways out and lower the effective
  barrier below the one-mode ΔE (wide nets): ``ModeLoop.down_barrier_over_t``
  reports the one-mode ΔE(β_down)/T, ≈ ln(dwell/τ₀) only for a single free channel.
  This module gives no Kramers prediction of β_down for that reason. SGD noise cannot
  relearn a mode from the zero state (its noise lies in the learned directions), so under
  SGD a loop stays open (down jump None).
- **Depth 2** has a continuous transition at β = s: no barrier on either side, the
  strength follows s − β both ways and there is no loop.

How a jump and a loop are read off the recorded strengths is in ``hysteresis``; the
``[sweep]`` table is in ``sweep_study``; the figure in ``sweep_figure``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd
import torch

from escapestat.engine._storage import (
    SWEEP_CSV,
    SWEEP_JSON,
    SWEEP_PNG,
    device_text,
)
from escapestat.models._integrators import select_integrator
from escapestat.models._threads import cpu_threads
from escapestat.models.base import Hyper, torch_dtype
from escapestat.models.deep_linear import _ensemble as ens
from escapestat.models.deep_linear import _tasks as tasks
from escapestat.models.deep_linear.model import deep_linear_spec
from escapestat.sweep._hysteresis import (
    ModeLoop,
    find_loop,
    jump_betas,
    mode_loop,
    reference_strength,
)
from escapestat.sweep._study import (
    SweepSpec,
    SweepStudy,
    load_sweep,
    parse_sweep,
    parse_sweep_study,
)
from escapestat.theory._landscape import stationary_points

__all__ = ["BRANCHES", "SWEEP_CSV", "SWEEP_JSON", "SWEEP_PNG", "ModeLoop", "SweepResult",
           "SweepSpec", "SweepStudy", "find_loop", "jump_betas", "load_sweep", "parse_sweep",
           "parse_sweep_study", "reference_strength", "run_sweep"]

BRANCHES = ("up", "down")

#: Progress callback: (plateaus done, plateaus in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep measured.

    ``betas`` [2, P]: the β of each plateau of the up and the down branch, in the order
    visited; ``strengths`` [2, P, R, K]: each replica's mean strength u_kᵀ P v_k per
    plateau and mode (NaN for a diverged replica); ``modes``: one ``ModeLoop`` per mode.
    """

    sweep: SweepStudy
    betas: np.ndarray
    strengths: np.ndarray
    modes: list[ModeLoop]
    diverged: int
    seconds: float
    device: str
    notes: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """The deep linear net's depth L (loops need L ≥ 3)."""
        return deep_linear_spec(self.sweep.study).depth

    @property
    def loops(self) -> int:
        """How many modes show a hysteresis loop."""
        return sum(m.loop for m in self.modes)

    def table(self) -> pd.DataFrame:
        """``sweep.csv``: per branch, plateau and mode, the strength's median and 10–90%
        over the finite replicas (raw and over s) and the fraction above the threshold."""
        rows = []
        for b, branch in enumerate(BRANCHES):
            for p, beta in enumerate(self.betas[b]):
                for m in self.modes:
                    w = self.strengths[b, p, :, m.mode]
                    w = w[np.isfinite(w)]
                    q10, med, q90 = np.quantile(w, [0.1, 0.5, 0.9]) if w.size else [np.nan] * 3
                    rows.append({
                        "branch": branch, "point": p, "beta": float(beta), "mode": m.mode,
                        "s": m.strength, "median": med, "q10": q10, "q90": q90,
                        "median_over_s": med / m.strength, "q10_over_s": q10 / m.strength,
                        "q90_over_s": q90 / m.strength,
                        "learned_fraction": float((w > m.threshold).mean()) if w.size else np.nan,
                    })
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        """``sweep.json`` and ``escapestat sweep --json``."""
        sw, spec, study = self.sweep, self.sweep.sweep, self.sweep.study
        m = deep_linear_spec(study)
        return {
            "name": study.name, "depth": self.depth,
            "strengths": list(m.strengths), "widths": study.widths,
            "noise": sw.noise, "temperature": sw.temperature, "lr": sw.lr,
            "batch_size": sw.batch_size, "data": study.data.kind,
            "replicas": study.run.replicas, "seed": study.run.seed, "dtype": study.run.dtype,
            "beta_low": spec.beta_low, "beta_high": spec.beta_high, "points": spec.points,
            "grid_step": spec.grid_step, "steps_per_point": spec.steps_per_point,
            "settle_steps": spec.settle, "total_steps": spec.total_steps,
            "average_last": spec.average_last, "threshold": spec.threshold,
            "loops": self.loops, "diverged": self.diverged,
            "modes": [m.as_dict() for m in self.modes],
            "notes": self.notes, "seconds": round(self.seconds, 3), "device": self.device,
        }


def _sampler(sw: SweepStudy, teacher: tasks.Teacher, gen: torch.Generator):
    d, r = sw.study.data, sw.study.run.replicas
    if d.kind == "population":
        return ens.PopulationMoments(teacher, r)
    batch = sw.batch_size or d.n_train  # Langevin: the full data
    if d.kind == "fresh":
        return ens.FreshSampler(teacher, r, batch, d.label_noise, generator=gen)
    data = tasks.make_dataset(teacher, r, d.n_train, d.n_test, noise_std=d.label_noise,
                              generator=gen)
    return ens.MinibatchSampler(data, batch, generator=gen)


def _layout_like(x: torch.Tensor, net: ens.DeepLinearEnsemble) -> torch.Tensor:
    """``x`` [R, a, b] as its own tensor, replica-last in memory when the net's weights are
    (then ``gradients`` uses it as it is, with no copy per step)."""
    if net.replica_last:
        return x.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return x.contiguous()


def run_sweep(sw: SweepStudy, device: str | torch.device = "cpu",
              progress: Progress | None = None, threads: int | None = 1) -> SweepResult:
    """Run the β staircase on every replica and find each mode's jumps and loop.

    The loop is flat: per plateau of ``SweepSpec.plateaus`` set β, take
    ``steps_per_point`` steps of the study's integrator (Langevin or SGD), and record the
    mean strength of every replica and mode over the plateau's last ``average_last``
    (sampled about 20 times). Same seed and device, same result. Writes no files
    (``report.write_sweep`` does).

    ``threads``: torch's CPU threads during the sweep, the caller's setting restored after
    (None: leave it). One by default: the steps are tens of thousands of tiny batched ops,
    and on this project's 2-core CPU, shared with other jobs, the paper net at R 256–512
    took 0.9–1.4 ms per step on one thread against 26–50 ms on two.
    """
    with cpu_threads(threads, device):
        return _run(sw, torch.device(device), progress)


def _run(sw: SweepStudy, device: torch.device, progress: Progress | None) -> SweepResult:
    study, spec = sw.study, sw.sweep
    m, run = deep_linear_spec(study), study.run
    dtype = torch_dtype(study)
    gen = torch.Generator(device=device).manual_seed(run.seed)
    teacher = tasks.make_teacher(m.strengths, study.widths[0], study.widths[-1],
                                 rotate=m.rotate, generator=gen, dtype=dtype, device=device)
    # Each mode has a learned state at beta_low (sweep_from_dict checks it).
    amps = [cast(float, stationary_points(m.depth, s, spec.beta_low)[1]) for s in m.strengths]
    net = ens.DeepLinearEnsemble.aligned(run.replicas, teacher, study.widths, amps,
                                         spec.init_noise, generator=gen, dtype=dtype,
                                         device=device)
    sampler = _sampler(sw, teacher, gen)
    fixed = None  # the population's moments never change: formed once
    if isinstance(sampler, ens.PopulationMoments):
        fixed = tuple(_layout_like(x, net) for x in sampler.next_moments())
    integrate = select_integrator(sw.noise)
    r, k = run.replicas, len(m.strengths)

    def per_replica(value: float) -> torch.Tensor:
        return torch.full((r,), value, dtype=dtype, device=device)

    lr = per_replica(sw.lr)
    temperature = None if sw.temperature is None else per_replica(sw.temperature)
    window = max(1, round(spec.average_last * spec.steps_per_point))
    every = max(1, window // 20)
    record = torch.zeros(2, spec.points, r, k, dtype=torch.float64, device=device)
    finite = torch.ones(r, dtype=torch.bool, device=device)
    plateaus = spec.plateaus()
    start = time.perf_counter()
    for done, (branch, point, beta, steps) in enumerate(plateaus, 1):
        hyper = Hyper(lr=lr, weight_decay=per_replica(beta), temperature=temperature,
                      batch_size=sw.batch_size)
        total, count = torch.zeros(r, k, dtype=torch.float64, device=device), 0
        for t in range(steps):
            sxx, syx = fixed or sampler.next_moments(hyper.batch_size)
            integrate(net.weights, net.gradients(sxx, syx, hyper.weight_decay), hyper, gen)
            left = steps - 1 - t
            if branch is not None and left < window and left % every == 0:
                total += tasks.mode_strengths(net.end_to_end(), teacher).double()
                count += 1
        if branch is not None:
            record[BRANCHES.index(branch), point] = total / count
            finite &= net.is_finite_and_bounded(run.divergence_limit)
        if progress is not None:
            progress(done, len(plateaus))  # no host sync: the record stays on the device
    strengths = record.cpu().numpy()  # the one host sync
    seconds = time.perf_counter() - start
    strengths[:, :, ~finite.cpu().numpy(), :] = np.nan
    betas = np.stack([spec.grid, spec.grid[::-1]])
    modes = [mode_loop(j, m.depth, m.strengths[j], betas, strengths[..., j],
                       beta_low=spec.beta_low, threshold=spec.threshold,
                       grid_step=spec.grid_step, temperature=sw.temperature)
             for j in range(k)]
    return SweepResult(sw, betas, strengths, modes, int((~finite).sum()), seconds,
                       device_text(device), _notes(sw, modes, int((~finite).sum())))


def _notes(sw: SweepStudy, modes: list[ModeLoop], diverged: int) -> list[str]:
    notes = [f"{diverged} replicas diverged (weights non-finite or beyond [run] "
             "divergence_limit); they are left out"] if diverged else []
    for m in modes:
        name = f"mode {m.mode} (s = {m.strength:g})"
        if m.up_jump is None:
            notes.append(f"{name} did not drop out in most replicas by beta_high = "
                         f"{sw.sweep.beta_high:g} (its β_sp is {m.beta_sp:.4g})")
        elif m.down_jump is None:
            why = ("SGD noise cannot relearn a mode from zero" if sw.noise == "sgd"
                   else "raise the temperature or steps_per_point, or lower beta_low")
            notes.append(f"{name} did not relearn in most replicas by beta_low = "
                         f"{sw.sweep.beta_low:g}: an open loop ({why})")
    return notes
