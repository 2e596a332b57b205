"""The engine's CPU threads: ``ThreadGovernor`` keeps the fastest count, and a switch of
count mid-run changes no result, for every model kind."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from testdata import FAST
from testdata import GROK as _GROK

from escapestat.config._study import conditions, parse_study
from escapestat.engine import _loop
from escapestat.engine._trials import plan_chunks, run_chunk_output
from escapestat.models._threads import ThreadGovernor


class _Machine:
    """A fake clock and a step whose duration depends on the thread count it runs on."""

    def __init__(self, seconds_per_step: dict[int, float], threads: int):
        self.now, self.threads, self.cost = 0.0, threads, dict(seconds_per_step)
        self.steps_at: dict[int, int] = {}

    def clock(self) -> float:
        return self.now

    def set_threads(self, n: int) -> None:
        self.threads = n

    def step(self) -> None:
        self.now += self.cost[self.threads]
        self.steps_at[self.threads] = self.steps_at.get(self.threads, 0) + 1


def _governor(machine: _Machine, **kw) -> ThreadGovernor:
    return ThreadGovernor(machine.threads, clock=machine.clock, set_threads=machine.set_threads,
                          **kw)


def test_a_busy_machine_moves_the_steps_to_one_thread_and_back():
    machine = _Machine({2: 0.01, 1: 0.018}, threads=2)  # idle: two threads win
    gov = _governor(machine, every=10.0, probe_seconds=0.05)
    for _ in range(200):
        gov.step(machine.step)
    assert machine.threads == 2 and [t for t, _ in gov.last_probe] == [2, 1]
    assert gov.last_probe[0][1] == pytest.approx(0.01)
    machine.cost[2] = 0.05  # a competitor shares a core: each parallel region waits
    for _ in range(600):
        gov.step(machine.step)
    assert machine.threads == 1, "the governor kept the slow count"
    machine.cost[2] = 0.01  # the competitor left
    for _ in range(1500):
        gov.step(machine.step)
    assert machine.threads == 2


def test_probing_costs_little_on_an_idle_machine():
    machine = _Machine({4: 0.01, 2: 0.015, 1: 0.03}, threads=4)
    gov = _governor(machine, every=30.0, probe_seconds=0.1)
    assert gov.candidates == [4, 2, 1]
    for _ in range(30_000):  # 300 s at the best count
        gov.step(machine.step)
    assert machine.threads == 4
    best = 30_000 * 0.01
    assert machine.now < 1.02 * best, f"probing cost {machine.now / best - 1:.1%}"


def test_one_thread_is_left_alone():
    machine = _Machine({1: 0.01}, threads=1)
    gov = _governor(machine)
    for _ in range(10):
        gov.step(machine.step)
    assert gov.candidates == [1] and gov.last_probe == [] and machine.steps_at == {1: 10}


GROK = _GROK.replace("width = 128", "width = 64").replace("replicas = 8", "replicas = 4") \
    .replace("max_steps = 800", "max_steps = 200")
#: A deep linear ladder wide enough (1024 replicas of 64-unit layers) for bmm on 2 threads.
WIDE_LINEAR = FAST.replace("strengths = [1.5, 1.0]", "strengths = [1.5, 1.0]\nhidden = [64, 64]") \
    .replace("barrier_over_temperature = [1.5, 2.5]", "barrier_over_temperature = 1.5") \
    .replace("replicas = 24", "replicas = 1024").replace("max_steps = 3000", "max_steps = 100") \
    .replace("chunk_replicas = 20", "")

KINDS = {
    "mlp": GROK,
    "transformer": GROK.replace('kind = "mlp"\nwidth = 64', 'kind = "transformer"\nd_model = 32'),
    "transformer2": GROK.replace('kind = "mlp"\nwidth = 64',
                                 'kind = "transformer2"\nd_model = 32\nd_mlp = 64')
                        .replace("max_steps = 200", "max_steps = 60"),
    "deep linear (bmm)": WIDE_LINEAR,
}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPU cores")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_switching_threads_every_step_changes_no_result(kind, monkeypatch):
    """The governor may switch at any step; results must not notice. Here it probes at
    every step (2 threads, then 1, ...), against a run held on one thread."""
    study = parse_study(KINDS[kind])
    assert study.model.kind == kind.split()[0].replace("deep", "deep_linear")
    conds = conditions(study)
    chunk = plan_chunks(study, conds)[0]
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    switches: list[int] = []

    def restless(threads: int) -> ThreadGovernor:
        def set_threads(n: int) -> None:
            switches.append(n)
            torch.set_num_threads(n)
        return ThreadGovernor(threads, every=0.0, probe_seconds=0.0, warmup_steps=0,
                              set_threads=set_threads)

    try:
        torch.set_num_threads(1)
        held = run_chunk_output(study, conds, chunk, cpu)
        torch.set_num_threads(2)
        monkeypatch.setattr(_loop, "ThreadGovernor", restless)
        switched = run_chunk_output(study, conds, chunk, cpu)
    finally:
        torch.set_num_threads(before)
    assert switches.count(1) > 10 and switches.count(2) > 10, "the run never switched"
    pd.testing.assert_frame_equal(switched.table, held.table, check_exact=True)
