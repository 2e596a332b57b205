"""The trial engine: trap replicas, train them with noise, detect escape, censor, resume.

A study's conditions × replicas are laid out replica-major and cut into *chunks* of at
most ``chunk_replicas`` replicas; each chunk is one batched model on one device with
its own seed, so a chunk's result is fixed by (study, chunk index) and a killed run
resumes chunk by chunk without redoing or losing finished ones. Within a chunk,
escaped and diverged replicas leave the active set, so compute follows the replicas
that are still trapped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import ensemble as ens_mod
from . import tasks
from .errors import EscapestatError
from .records import atomic_write, write_table
from .study import Condition, Study, conditions
from .theory import stationary_points

ESCAPED, CENSORED, DIVERGED, UNTRAPPED = "escaped", "censored", "diverged", "untrapped"
Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Chunk:
    """A block of replicas run as one batched model: which condition and replica each is."""

    index: int
    batch_size: int | None
    condition: tuple[int, ...]
    replica: tuple[int, ...]

    def seed(self, study_seed: int) -> int:
        """Independent per-chunk seed derived from the study seed (SeedSequence spawning)."""
        return int(np.random.SeedSequence([study_seed, self.index]).generate_state(1)[0])


def plan_chunks(study: Study, conds: list[Condition]) -> list[Chunk]:
    """Replica-major layout so every chunk spans the whole ladder; one batch size per chunk."""
    chunks: list[Chunk] = []
    sizes = sorted({c.batch_size or 0 for c in conds})
    for size in sizes:
        ids = [i for i, c in enumerate(conds) if (c.batch_size or 0) == size]
        pairs = [(c, r) for r in range(study.run.replicas) for c in ids]
        step = study.run.chunk_replicas
        for start in range(0, len(pairs), step):
            block = pairs[start : start + step]
            chunks.append(Chunk(len(chunks), size or None, *map(tuple, zip(*block, strict=True))))
    return chunks


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EscapestatError("--device cuda: no CUDA device is available here")
    if device not in ("cpu", "cuda"):
        raise EscapestatError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def _amplitudes(study: Study, beta: float) -> list[float]:
    """Per-layer amplitude of each mode in the structured trapped start at β."""
    m = study.model
    amps = []
    for k, s in enumerate(m.strengths):
        learned = stationary_points(m.depth, s, beta)[1]
        amps.append(0.0 if k == study.trapped_mode or learned is None else float(learned))
    return amps


def _learned_strength(study: Study, beta: float) -> float:
    """End-to-end strength w = a^L of the trapped mode's learned state at β."""
    m = study.model
    s = m.strengths[study.trapped_mode]
    learned = stationary_points(m.depth, s, beta)[1]
    if learned is None:
        raise EscapestatError(
            f"at beta = {beta:.4g} the trapped mode (strength {s:g}) has no learned state "
            "to escape to (beta is above its spinodal)"
        )
    return float(learned) ** m.depth


class _Trial:
    """State of one chunk while it runs: the active replicas and their bookkeeping."""

    def __init__(self, study: Study, conds: list[Condition], chunk: Chunk, device: torch.device):
        self.study, self.chunk = study, chunk
        run, m = study.run, study.model
        self.dtype = torch.float64 if run.dtype == "float64" else torch.float32
        self.gen = torch.Generator(device=device).manual_seed(chunk.seed(run.seed))
        self.device = device
        c = [conds[i] for i in chunk.condition]
        n = len(c)
        as_t = lambda v: torch.tensor(v, dtype=self.dtype, device=device)  # noqa: E731
        self.lr = as_t([x.lr for x in c])
        self.beta = as_t([x.beta for x in c])
        self.temperature = as_t([x.temperature for x in c])
        self.learned = as_t([_learned_strength(study, x.beta) for x in c])
        widths = study.widths
        self.teacher = tasks.make_teacher(
            m.strengths, widths[0], widths[-1], rotate=m.rotate, generator=self.gen,
            dtype=self.dtype, device=device,
        )
        self.sampler = self._sampler(n)
        if study.escape.order_parameter == "test_error":
            self.err_trap, self.err_learned = self._reference_errors(c)
        self.model = self._init(c, widths, n)
        self.active = np.arange(n)
        self.status = np.full(n, CENSORED, dtype=object)
        self.duration = np.full(n, float(run.max_steps))
        self.pending = torch.full((n,), -1, dtype=torch.long, device=device)

    def _sampler(self, n: int):
        d = self.study.data
        self.data = None
        if d.kind == "population":
            return ens_mod.PopulationMoments(self.teacher, n)
        batch = self.chunk.batch_size or d.n_train
        if d.kind == "fresh":
            return ens_mod.FreshSampler(self.teacher, n, batch, d.label_noise, generator=self.gen)
        self.data = tasks.make_dataset(
            self.teacher, n, d.n_train, d.n_test, noise_std=d.label_noise, generator=self.gen
        )
        return ens_mod.MinibatchSampler(self.data, batch, generator=self.gen)

    def _init(self, c: list[Condition], widths: list[int], n: int):
        init = self.study.init
        if init.kind == "trained":
            model = ens_mod.DeepLinearEnsemble.random(
                n, widths, init.scale, generator=self.gen, dtype=self.dtype, device=self.device
            )
            full = self._full_moments(n)
            for _ in range(init.trap_steps):
                ens_mod.sgd_step(model, full[0], full[1], init.trap_lr, init.beta_trap)
            return model
        # Structured trapped start, built per distinct β and put back in replica order.
        betas = [x.beta for x in c]
        order, parts = [], []
        for beta in sorted(set(betas)):
            idx = [i for i, b in enumerate(betas) if b == beta]
            order.extend(idx)
            parts.append(ens_mod.DeepLinearEnsemble.aligned(
                len(idx), self.teacher, widths, _amplitudes(self.study, beta), init.noise,
                generator=self.gen, dtype=self.dtype, device=self.device,
            ))
        inverse = torch.as_tensor(np.argsort(order), device=self.device)
        layers = [torch.cat(stack)[inverse].contiguous()
                  for stack in zip(*(p.weights for p in parts), strict=True)]
        return ens_mod.DeepLinearEnsemble(layers)

    def _full_moments(self, n: int):
        """Full-batch moments for the trapping phase: the training set, or the population."""
        if self.data is not None:
            sxx, syx, _ = self.data.train_moments()
            return sxx, syx
        return ens_mod.PopulationMoments(self.teacher, n).next_moments()

    def _test_error(self, end_to_end: torch.Tensor) -> torch.Tensor:
        """Held-out test error per replica; the exact population error without a test set."""
        if self.data is not None:
            return self.data.test_error(end_to_end)
        return 0.5 * (self.teacher.matrix - end_to_end).square().sum((1, 2))

    def _reference_errors(self, c: list[Condition]) -> tuple[torch.Tensor, torch.Tensor]:
        """Test error of the trapped plateau and of the learned state, per replica."""
        depth, k = self.study.model.depth, self.study.trapped_mode
        trap, learned = [], []
        for x, w_k in zip(c, self.learned.tolist(), strict=True):
            w = [a**depth for a in _amplitudes(self.study, x.beta)]
            trap.append(w)
            learned.append(w[:k] + [w_k] + w[k + 1 :])
        u, v = self.teacher.u, self.teacher.v
        maps = [torch.einsum("ok,rk,ik->roi", u, torch.tensor(w, dtype=u.dtype, device=u.device),
                             v) for w in (trap, learned)]
        return self._test_error(maps[0]), self._test_error(maps[1])

    def order_parameter(self) -> torch.Tensor:
        """Escape progress: 0 in the trap, 1 at the learned state (see ``EscapeSpec``)."""
        p = self.model.end_to_end()
        if self.study.escape.order_parameter == "test_error":
            return (self.err_trap - self._test_error(p)) / (self.err_trap - self.err_learned)
        strengths = tasks.mode_strengths(p, self.teacher)
        return strengths[:, self.study.trapped_mode] / self.learned

    def drop(self, keep: torch.Tensor) -> None:
        """Keep only the replicas flagged in ``keep`` in the active set."""
        if bool(keep.all()):
            return
        idx = torch.nonzero(keep).squeeze(1)
        self.active = self.active[keep.cpu().numpy()]
        self.model = self.model.select(idx)
        self.sampler.select(idx)
        for name in ("lr", "beta", "temperature", "learned", "pending", "err_trap",
                     "err_learned"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[idx])

    def mark_untrapped(self) -> None:
        """Replicas whose trapped mode is already past the fall-back level at the switch."""
        q = self.order_parameter()
        bad = ~(q < self.study.escape.fallback) | ~self.model.is_finite_and_bounded(
            self.study.run.divergence_limit)
        where = self.active[bad.cpu().numpy()]
        self.status[where] = UNTRAPPED
        self.duration[where] = 0.0
        self.drop(~bad)

    def step(self) -> None:
        sxx, syx = self.sampler.next_moments()
        if self.study.dynamics.noise == "langevin":
            ens_mod.langevin_step(self.model, sxx, syx, self.lr, self.beta, self.temperature,
                                  self.gen)
        else:
            ens_mod.sgd_step(self.model, sxx, syx, self.lr, self.beta)

    def check(self, step: int, final: bool) -> None:
        """Vectorised escape/divergence check with commitment; finished replicas leave."""
        esc = self.study.escape
        q = self.order_parameter()
        ok = self.model.is_finite_and_bounded(self.study.run.divergence_limit) & torch.isfinite(q)
        above, below = q >= esc.threshold, q < esc.fallback
        self.pending = torch.where((self.pending < 0) & above & ok,
                                   torch.full_like(self.pending, step), self.pending)
        self.pending = torch.where(below, torch.full_like(self.pending, -1), self.pending)
        held = (self.pending >= 0) & (step - self.pending >= esc.commit_steps)
        # At the budget a crossing that has not fallen back counts (it has not been censored).
        escaped = ok & (held | ((self.pending >= 0) & final))
        diverged = ~ok
        if bool(escaped.any()):
            where = escaped.cpu().numpy()
            self.status[self.active[where]] = ESCAPED
            self.duration[self.active[where]] = self.pending[escaped].cpu().numpy()
        if bool(diverged.any()):
            where = diverged.cpu().numpy()
            self.status[self.active[where]] = DIVERGED
            self.duration[self.active[where]] = step
        self.drop(~(escaped | diverged))


def run_chunk(
    study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Run one chunk to its step budget; one row per replica with its status."""
    trial = _Trial(study, conds, chunk, device)
    n = len(chunk.condition)
    trial.mark_untrapped()
    every, budget = study.escape.check_every, study.run.max_steps
    step = 0
    with torch.no_grad():
        while step < budget and trial.active.size:
            for _ in range(min(every, budget - step)):
                trial.step()
            step = min(step + every, budget)
            trial.check(step, final=step >= budget)
            if progress is not None:
                progress({"chunk": chunk.index, "step": step, "max_steps": budget,
                          "active": int(trial.active.size), "replicas": n})
    seed = chunk.seed(study.run.seed)
    rows = {
        "duration": trial.duration,
        "event": (trial.status == ESCAPED).astype(int),
        "status": trial.status.astype(str),
        "temperature": [conds[i].temperature for i in chunk.condition],
        "lr": [conds[i].lr for i in chunk.condition],
        "batch_size": [conds[i].batch_size for i in chunk.condition],
        "weight_decay": [conds[i].beta for i in chunk.condition],
        "noise": study.dynamics.noise,
        "barrier_theory": [conds[i].barrier for i in chunk.condition],
        "condition": list(chunk.condition),
        "replica": list(chunk.replica),
        "chunk": chunk.index,
        "seed": seed,
    }
    return pd.DataFrame(rows)


def _atomic_json(obj: dict, path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")

    atomic_write(path, write)


def _versions() -> dict:
    import lifelines
    import statsmodels

    from . import __version__

    return {"escapestat": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "lifelines": lifelines.__version__, "statsmodels": statsmodels.__version__,
            "python": platform.python_version()}


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


CHUNK_DIR = "chunks"
ESCAPES = "escapes.csv"
REPLICAS = "replicas.csv"
RUN_JSON = "run.json"


@dataclass
class RunResult:
    out_dir: Path
    escapes: pd.DataFrame  # the survival table: escaped and censored replicas
    replicas: pd.DataFrame  # every replica, with its status
    meta: dict
    conditions: list[Condition]


def run_study(
    study: Study,
    out_dir: str | os.PathLike,
    device: str = "auto",
    resume: bool = False,
    study_text: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume) a study into ``out_dir``; finished chunks are written atomically.

    A directory holding a complete run of the same study is read back, not rerun.
    """
    out = Path(out_dir)
    dev = resolve_device(device)
    conds = conditions(study)
    chunks = plan_chunks(study, conds)
    meta_path = out / RUN_JSON
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        same = meta.get("config_hash") == study.config_hash()
        if not resume and not (same and meta.get("status") == "complete"):
            raise EscapestatError(
                f"{out} already holds a run ({meta.get('chunks_done', '?')}/"
                f"{meta.get('chunks_total', '?')} chunks); pass --resume to continue it or "
                "choose another --out"
            )
        if not same:
            raise EscapestatError(
                f"{out} holds a run of a different study (config hash "
                f"{meta.get('config_hash')} ≠ {study.config_hash()}); choose another --out"
            )
    elif resume and out.exists() and any(out.iterdir()):
        raise EscapestatError(f"{out} has no {RUN_JSON} to resume from")
    (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    if study_text is not None:
        (out / "study.toml").write_text(study_text, encoding="utf-8")
    meta = {
        "study": study.name,
        "config_hash": study.config_hash(),
        "seed": study.run.seed,
        "chunk_seeds": [c.seed(study.run.seed) for c in chunks],
        "versions": _versions(),
        "device": _device_text(dev),
        "dtype": study.run.dtype,
        "units": "steps",
        "temperature": "exact Langevin T" if study.dynamics.noise == "langevin"
        else "T = lr / batch_size (SGD)",
        "conditions": [dataclasses.asdict(c) for c in conds],
        "chunks_total": len(chunks),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    frames = []
    for chunk in chunks:
        path = out / CHUNK_DIR / f"chunk-{chunk.index:05d}.csv"
        if path.exists():
            frames.append(pd.read_csv(path))
            continue
        meta["chunks_done"] = len(frames)
        _atomic_json(meta, meta_path)
        if progress is not None:
            progress({"chunk": chunk.index, "chunks": len(chunks), "start": True,
                      "replicas": len(chunk.condition), "max_steps": study.run.max_steps})
        frame = run_chunk(study, conds, chunk, dev, progress)
        write_table(frame, path)
        frames.append(pd.read_csv(path))  # identical whether run now or resumed later
    replicas = pd.concat(frames, ignore_index=True).sort_values(["condition", "replica"])
    replicas = replicas.reset_index(drop=True)
    escapes = replicas[replicas["status"].isin([ESCAPED, CENSORED])].reset_index(drop=True)
    write_table(replicas, out / REPLICAS)
    write_table(escapes, out / ESCAPES)
    meta.update(chunks_done=len(chunks), status="complete",
                finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _atomic_json(meta, meta_path)
    return RunResult(out, escapes, replicas, meta, conds)
