"""A chunk stopped midway continues from its saved state, byte-identical to an uninterrupted
chunk: in process for every kind of model, and across processes after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from escapestat.config._study import conditions, parse_study
from escapestat.engine._storage import ChunkCheckpoint
from escapestat.engine._trials import ChunkProgress, plan_chunks, run_chunk_output

LINEAR = """
name = "ckpt-linear"
[model]
depth = 3
strengths = [1.5, 1.0]
[data]
kind = "population"
[init]
kind = "aligned"
noise = 0.001
[dynamics]
noise = "langevin"
lr = 0.25
beta_over_beta_c = 0.5
barrier_over_temperature = [1.5, 2.5]
[escape]
commit_steps = 50
check_every = 10
[run]
replicas = 12
max_steps = 1500
seed = 3
"""

GROK = """
name = "ckpt-grok"
[task]
operation = "add"
p = 23
train_fraction = 0.7
[model]
kind = "mlp"
width = 64
[dynamics]
noise = "sgd"
lr = 2e-2
weight_decay = 1.0
batch_size = 64
grad_filter = {kind = 'ema', alpha = 0.9, lamb = 2.0}
[escape]
commit_steps = 40
check_every = 20
[run]
replicas = 6
max_steps = 600
seed = 1
"""

STUDIES = {
    "linear-langevin": LINEAR,
    "mlp-adamw-grokfast": GROK,
    "transformer": GROK.replace('kind = "mlp"\nwidth = 64', 'kind = "transformer"\nd_model = 16')
                       .replace("grad_filter = {kind = 'ema', alpha = 0.9, lamb = 2.0}\n", ""),
}


class _Stop(Exception):
    pass


def _stop_at(check: int):
    """A progress callback that stops the chunk at its ``check``-th check (after the state
    of the check before was saved)."""
    seen = 0

    def progress(event) -> None:
        nonlocal seen
        if isinstance(event, ChunkProgress):
            seen += 1
            if seen == check:
                raise _Stop

    return progress


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_a_chunk_continues_from_its_saved_state(name, tmp_path):
    study = parse_study(STUDIES[name])
    conds = conditions(study)
    chunk = plan_chunks(study, conds)[0]
    cpu = torch.device("cpu")
    whole = run_chunk_output(study, conds, chunk, cpu)

    path = tmp_path / "chunk.partial.pt"
    first = ChunkCheckpoint(path, 0.0, {"chunk": 0})  # saves at every check
    with pytest.raises(_Stop):
        run_chunk_output(study, conds, chunk, cpu, progress=_stop_at(7), checkpoint=first)
    assert path.exists() and first.resumed_from is None
    again = ChunkCheckpoint(path, 1e9, {"chunk": 0})
    resumed = run_chunk_output(study, conds, chunk, cpu, checkpoint=again)
    assert again.resumed_from == 6 * study.escape.check_every  # the 6th check's state
    pd.testing.assert_frame_equal(resumed.table, whole.table, check_exact=True)
    if whole.curves is not None:
        assert whole.curves.keys() == resumed.curves.keys()
        for key, values in whole.curves.items():
            np.testing.assert_array_equal(resumed.curves[key], values)
    # A state saved for something else (another identity) is not used: the chunk starts over.
    other = ChunkCheckpoint(path, 1e9, {"chunk": 1})
    assert other.load(cpu) is None and other.resumed_from is None


SIGKILLED = LINEAR.replace("replicas = 12", "replicas = 48").replace(
    "max_steps = 1500", "max_steps = 60000").replace(
    "barrier_over_temperature = [1.5, 2.5]", "barrier_over_temperature = [6.0, 8.0]")


def _cli(*args: str, **kw) -> subprocess.Popen:
    code = "from escapestat_cli.app import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigkill_mid_chunk_then_resume_is_byte_identical(tmp_path):
    """One chunk, killed (SIGKILL) after its state was saved at least twice: --resume
    continues from the saved step, and the tables equal an uninterrupted run's."""
    study = tmp_path / "s.toml"
    study.write_text(SIGKILLED)
    whole = _cli("run", str(study), "--out", str(tmp_path / "whole"), "--checkpoint-every", "0")
    assert whole.wait(timeout=900) == 0, whole.stderr.read()

    out = tmp_path / "killed"
    victim = _cli("run", str(study), "--out", str(out), "--checkpoint-every", "0.5")
    partial = out / "chunks" / "chunk-00000.partial.pt"
    saved, deadline = set(), time.monotonic() + 600
    while len(saved) < 3 and victim.poll() is None and time.monotonic() < deadline:
        if partial.exists():
            saved.add(partial.stat().st_mtime_ns)
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it was killed: make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert partial.exists() and not (out / "chunks" / "chunk-00000.csv").exists()

    plain = _cli("run", str(study), "--out", str(out))
    _, err = plain.communicate(timeout=300)
    assert plain.returncode == 1 and "1 stopped inside" in err and "--resume" in err

    resumed = _cli("run", str(study), "--out", str(out), "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    info = json.loads((out / "chunks" / "chunk-00000.json").read_text())
    assert info["resumed_from_step"] > 0
    assert f"continued chunk 1 from step {info['resumed_from_step']:,}" in err
    assert not partial.exists()
    for table in ("escapes.csv", "replicas.csv"):
        assert (out / table).read_bytes() == (tmp_path / "whole" / table).read_bytes()
