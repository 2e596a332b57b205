"""EscapeMonitor: the engine's escape rule on one user-driven run, and the row it leaves.

Scripted metric sequences with known answers (no training), the equivalence with
``detector.EscapeDetector`` on random sequences, every way a run can end (close, ``with``,
an exception, atexit, SIGTERM/SIGINT), concurrent appends from many processes, parquet
parts, the framework callbacks against stub modules, and the example script.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testdata import ROOT

from escapestat.errors import EscapestatError
from escapestat.monitor import _monitor as mon
from escapestat.monitor._monitor import EscapeMonitor
from escapestat.table import _append as table_append
from escapestat.table._records import load, read_table

NAN, INF = math.nan, math.inf
RULE = dict(threshold=0.5, fallback=0.25, commit_steps=30)


def run(seq, tmp_path, every=10, name="t.csv", start=10, **options):
    """Feed acc = seq[k] at step start + k·every until done; close; return (monitor, row)."""
    opts = {**RULE, **options}
    m = EscapeMonitor(tmp_path / name, "acc", handle_signals=False, **opts)
    for k, value in enumerate(seq):
        values = value if isinstance(value, dict) else {"acc": value}
        m.update(start + k * every, values)
        if m.done and opts.get("stop", True):
            break
    return m, m.close()


def decision(m, row):
    return (row["status"], row["duration"], row["event"]) if row else (m.status, None, None)


# ---------------------------------------------------------------- decisions, known answers
def test_escape_is_timed_at_the_committed_crossing(tmp_path):
    m, row = run([0.0, 0.1, 0.6, 0.7, 0.8, 0.9, 1.0], tmp_path)
    assert decision(m, row) == ("escaped", 30, 1)  # crossed at 30, committed at 60
    assert m.escape_time == 30 and row["first_cross_time"] == 30


def test_transient_crossing_is_not_an_escape(tmp_path):
    # Crosses at 20, falls back below 0.25 at 40: forgotten; crosses again at 60 and holds.
    m, row = run([0.0, 0.6, 0.55, 0.1, 0.2, 0.7, 0.8, 0.9, 0.9, 0.9], tmp_path)
    assert decision(m, row) == ("escaped", 60, 1)
    assert row["first_cross_time"] == 20  # the raw first crossing is kept apart


def test_dip_above_fallback_keeps_the_crossing(tmp_path):
    m, row = run([0.0, 0.6, 0.3, 0.6, 0.7], tmp_path)
    assert decision(m, row) == ("escaped", 20, 1)


def test_end_of_run_censors_at_last_evaluation(tmp_path):
    m, row = run([0.0, 0.1, 0.2, 0.1], tmp_path)
    assert decision(m, row) == ("censored", 40, 0)
    assert row["ended_by"] == "close" and row["last_step"] == 40


def test_crossing_pending_at_the_end_is_censored(tmp_path):
    m, row = run([0.0, 0.1, 0.9, 0.9], tmp_path)  # crossed at 30, only 10 steps held
    assert decision(m, row) == ("censored", 40, 0)
    assert row["first_cross_time"] == 30


def test_budget_censors_and_resolves_a_pending_crossing(tmp_path):
    # No crossing: censored at the first evaluation at the budget, done.
    m, row = run([0.0] * 10, tmp_path, max_steps=50)
    assert decision(m, row) == ("censored", 50, 0) and m.last_step == 50
    # Pending at the budget: the evaluations after it decide; escape at the crossing step.
    m, row = run([0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9], tmp_path / "b", max_steps=50)
    assert decision(m, row) == ("escaped", 50, 1) and m.last_step == 80
    # ... or a fall-back after the budget: censored at the budget, not later.
    m, row = run([0.0, 0.0, 0.0, 0.9, 0.9, 0.1, 0.9], tmp_path / "c", max_steps=50)
    assert decision(m, row) == ("censored", 50, 0) and m.last_step == 60


def test_lower_is_better(tmp_path):
    opts = dict(direction="lower", threshold=0.1, fallback=0.5, commit_steps=30)
    m, row = run([2.0, 0.05, 0.3, 0.6, 0.08, 0.09, 0.2, 0.4, 0.1], tmp_path, **opts)
    assert decision(m, row) == ("escaped", 50, 1)  # 20 fell back at 40 (0.6 > 0.5)
    m, row = run([2.0, 0.9, 0.8], tmp_path / "b", **opts)
    assert decision(m, row) == ("censored", 30, 0)


def test_fit_time_and_delay(tmp_path):
    seq = [{"acc": a, "train": t} for a, t in [
        (0.0, 0.5), (0.0, 0.995), (0.0, 0.95), (0.0, 0.999), (0.0, 0.999), (0.0, 1.0),
        (0.0, 0.5), (0.7, 1.0), (0.8, 1.0), (0.9, 1.0), (0.9, 1.0)]]
    # train ≥ 0.99 at 20, dips to 0.95 (above fit_fallback 0.9): commits at 50 → fit 20;
    # the later dip to 0.5 does not undo a committed fit. Escape at 80.
    m, row = run(seq, tmp_path, fit_metric="train", fit_threshold=0.99, fit_fallback=0.9)
    assert row["fit_time"] == 20 and row["generalize_time"] == 80 and row["delay"] == 60
    assert row["final_train"] == 1.0 and row["final_acc"] == 0.9


def test_fit_fallback_forgets_and_pending_fit_counts_at_decision(tmp_path):
    fit = dict(fit_metric="train", fit_threshold=0.99, fit_fallback=0.9)
    seq = [{"acc": 0.0, "train": 1.0}, {"acc": 0.0, "train": 0.5},
           {"acc": 0.0, "train": 1.0}, {"acc": 0.0, "train": 1.0}]
    m, row = run(seq, tmp_path, **fit)  # fit crossing at 10 fell back; 30 still pending
    assert decision(m, row) == ("censored", 40, 0)
    assert row["fit_time"] == 30  # pending at the end counts at its step (engine's settle)
    assert math.isnan(row["generalize_time"]) and math.isnan(row["delay"])


def test_nonfinite_is_diverged_never_an_escape(tmp_path):
    m, row = run([0.0, 0.9, 0.9, NAN, 1.0, 1.0, 1.0], tmp_path)  # pending at 20, NaN at 40
    assert decision(m, row) == ("diverged", 40, 0)
    m, row = run([0.0, {"acc": 0.1, "loss": INF}], tmp_path / "b")  # any metric counts
    assert decision(m, row) == ("diverged", 20, 0) and row["nonfinite_updates"] == 1
    # An escape that had committed stays one; later non-finite values are still counted.
    m, row = run([0.0, 0.9, 0.9, 0.9, 0.9, NAN, -INF], tmp_path / "c", stop=False)
    assert decision(m, row) == ("escaped", 20, 1) and row["nonfinite_updates"] == 2


def test_step_zero_is_the_state_before_training(tmp_path, capsys):
    # Trapped at step 0: an ordinary run; durations count the steps done.
    m, row = run([0.0, 0.9, 0.9, 0.9, 0.9], tmp_path, start=0)
    assert decision(m, row) == ("escaped", 10, 1)
    # Past the fall-back level at step 0 (or not finite there): untrapped, no row.
    m, row = run([0.3, 0.1, 0.9], tmp_path / "u", start=0)
    assert row is None and m.status == "untrapped"
    assert "not in the trap at step 0" in capsys.readouterr().err
    m, row = run([NAN], tmp_path / "u", start=0)
    assert row is None and m.status == "untrapped"
    # Ended after step 0 only: no time at risk, no row.
    m, row = run([0.0], tmp_path / "u", start=0)
    assert row is None and not (tmp_path / "u" / "t.csv").exists()


@pytest.mark.parametrize("steps, message", [([10, 10], "steps must be ≥ 0 and increase"),
                                            ([20, 10], "after step 20"),
                                            ([-1], "steps must be ≥ 0")])
def test_steps_must_increase(tmp_path, steps, message):
    m = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, handle_signals=False)
    with pytest.raises(EscapestatError, match=message):
        for step in steps:
            m.update(step, acc=0.0)


def test_matches_the_engine_detector_on_random_sequences(tmp_path):
    torch = pytest.importorskip("torch")
    from escapestat.engine._detector import EscapeDetector, EscapeRule

    rng = np.random.default_rng(7)
    rule, budget, every = EscapeRule(0.5, 0.25, 30), 200, 10
    for i in range(150):
        q = np.clip(np.cumsum(rng.normal(0.02, 0.15, 40)), 0, 1)
        if i % 10 == 0:
            q[rng.integers(5, 40)] = np.nan
        det = EscapeDetector(rule, budget, 1)
        m = EscapeMonitor(tmp_path / "t.csv", "q", 0.5, fallback=0.25, commit_steps=30,
                          max_steps=budget, handle_signals=False)
        m.update(0, q=0.0)
        for k, value in enumerate(q):
            step = (k + 1) * every
            d = det.check(step, torch.tensor([value], dtype=torch.float64),
                          torch.tensor([True]))
            m.update(step, q=value)
            if d.done.item():
                break
        want = ("escaped" if d.escaped.item() else "diverged" if d.diverged.item()
                else "censored", float(d.time.item()))
        assert (m.status, float(m._end_step)) == want, (i, q.tolist())
        m.close()


# ------------------------------------------------------------------ the row and the table
def test_row_columns_conditions_and_timestamps(tmp_path):
    m = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, commit_steps=10, handle_signals=False,
                      conditions={"lr": 0.01, "seed": 3}, weight_decay=1.0, note="a, b",
                      record=["loss"], run_id="run-1")
    m.update(10, acc=0.9, loss=0.2)
    m.update(20, acc=0.9, loss=0.1)
    m.close()
    assert m.close() is m.row  # idempotent
    df = load(tmp_path / "t.csv")
    assert len(df) == 1 and list(df.columns) == m.columns
    r = df.iloc[0]
    assert (r.duration, r.event, r.status, r.final_loss, r.lr, r.seed, r.note, r.run_id) == (
        10, 1, "escaped", 0.1, 0.01, 3, "a, b", "run-1")
    assert r.condition == "lr=0.01, weight_decay=1"  # seed, note: not conditions
    assert r.started_at <= r.ended_at and r.ended_by == "close"


def test_columns_must_match_the_existing_table(tmp_path):
    first = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, lr=0.1, handle_signals=False)
    first.update(10, acc=0.0)
    first.close()
    with pytest.raises(EscapestatError, match="lacks 'lr'.*adds 'seed'") as err:
        EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, seed=1)
    assert "\n" not in str(err.value)
    # A table created with other columns after the monitor started: refused at the write.
    late = EscapeMonitor(tmp_path / "u.csv", "acc", 0.5, lr=0.1, handle_signals=False)
    late.update(10, acc=0.0)
    (tmp_path / "u.csv").write_text("duration,event\n5,1\n")
    with pytest.raises(EscapestatError, match="columns differ"):
        late.close()
    assert (tmp_path / "u.csv").read_text() == "duration,event\n5,1\n"


def test_appends_after_a_file_without_final_newline(tmp_path):
    run([0.0, 0.1], tmp_path)
    path = tmp_path / "t.csv"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    run([0.0, 0.2], tmp_path)
    assert len(read_table(path)) == 2


def test_parquet_parts_are_one_table(tmp_path, cli):
    table = tmp_path / "t.parquet"
    # A column all empty in one part and text in another: pyarrow's dataset reader
    # (pd.read_parquet on the folder) fails on that; read_table reads part by part.
    for lr, seq, note in ((0.1, [0.0, 0.9, 0.9, 0.9, 0.9], None), (0.2, [0.0, 0.1], "x"),
                          (0.3, [0.0, NAN], "y")):
        m = EscapeMonitor(table, "acc", **RULE, lr=lr, note=note, handle_signals=False)
        for k, v in enumerate(seq):
            m.update(10 * (k + 1), acc=v)
        m.close()
    (table / ".part-x.parquet.tmp").write_bytes(b"half")  # an unfinished write: skipped
    assert len(list(table.glob("part-*.parquet"))) == 3
    df = load(table).sort_values("lr")
    assert df.status.tolist() == ["escaped", "censored", "diverged"]
    assert df.duration.tolist() == [20, 20, 20] and df.event.tolist() == [1, 0, 0]
    code, out, err = cli("fit", table, "--group-col", "lr", "--json")
    assert code == 0, err
    assert [g["events"] for g in json.loads(out)["groups"]] == [1, 0, 0]
    with pytest.raises(EscapestatError, match="columns differ"):
        EscapeMonitor(table, "acc", 0.5, seed=1)


def test_read_table_folder_rules(tmp_path):
    (tmp_path / "empty.parquet").mkdir()
    with pytest.raises(EscapestatError, match="no parquet parts"):
        read_table(tmp_path / "empty.parquet")
    (tmp_path / "plain").mkdir()
    with pytest.raises(EscapestatError, match="is a directory"):
        read_table(tmp_path / "plain")
    pd.DataFrame({"duration": [1.0], "event": [1]}).to_parquet(tmp_path / "d.parquet")
    assert len(read_table(tmp_path / "d.parquet")) == 1  # a plain parquet file still reads
    with pytest.raises(EscapestatError, match="is a folder of part files"):
        EscapeMonitor(tmp_path / "d.parquet", "acc", 0.5)


# ---------------------------------------------------------------------- ways a run ends
def test_exception_in_with_block_writes_censored_row_and_propagates(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, handle_signals=False) as m:
            m.update(10, acc=0.1)
            m.update(25, acc=0.2)
            1 / 0  # noqa: B018
    r = read_table(tmp_path / "t.csv").iloc[0]
    assert (r.status, r.duration, r.event, r.ended_by) == (
        "censored", 25, 0, "exception ZeroDivisionError")


def test_signal_writes_rows_and_chains_to_previous_handler(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        a = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, run_id="a")
        b = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, run_id="b")
        a.update(10, acc=0.1)
        assert signal.getsignal(signal.SIGTERM) is mon._on_signal
        b.update(30, acc=0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == [signal.SIGTERM] and a.closed and b.closed
        assert signal.getsignal(signal.SIGTERM) is not mon._on_signal  # restored
        df = read_table(tmp_path / "t.csv").sort_values("run_id")
        assert df.duration.tolist() == [10, 30] and set(df.ended_by) == {"SIGTERM"}
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_signal_during_a_write_waits_for_it(tmp_path, monkeypatch):
    import fcntl

    calls = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    fsync, flock = os.fsync, fcntl.flock

    def fsync_and_signal(fd):  # SIGTERM arrives in the middle of writing a's row
        fsync(fd)
        if not calls and not b.closed:
            os.kill(os.getpid(), signal.SIGTERM)

    def flock_or_fail(fd, op):  # b's lock while a holds it would deadlock this process
        try:
            flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AssertionError("a row was written while another held the lock") from None

    try:
        a = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, run_id="a")
        b = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, run_id="b")
        a.update(10, acc=0.1)
        b.update(20, acc=0.1)
        monkeypatch.setattr(table_append.os, "fsync", fsync_and_signal)
        monkeypatch.setattr(fcntl, "flock", flock_or_fail)
        a.close()
        assert calls == [signal.SIGTERM] and b.closed
        df = read_table(tmp_path / "t.csv")
        assert sorted(df.run_id) == ["a", "b"]
        assert dict(zip(df.run_id, df.ended_by, strict=True)) == {"a": "close", "b": "SIGTERM"}
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ignored_signal_and_other_threads_leave_handlers_alone(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        m = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5)
        m.update(10, acc=0.0)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        m.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    before = signal.getsignal(signal.SIGTERM)
    t = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5)
    worker = threading.Thread(target=t.update, args=(10,), kwargs={"acc": 0.0})
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before
    t.close()


SCRIPT = textwrap.dedent("""
    import json, signal, sys, time
    from escapestat.monitor._monitor import EscapeMonitor
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "chain":
        def handler(signum, frame):
            open(path + ".chained", "w").write("yes")
            sys.exit(3)
        signal.signal(signal.SIGTERM, handler)
    m = EscapeMonitor(path, "acc", 0.5, fallback=0.25, commit_steps=30, seed=1)
    for step, acc in ((10, 0.0), (20, 0.6), (30, 0.6)):  # pending crossing at 20
        m.update(step, acc=acc)
    print(json.dumps(sorted(k for k in sys.modules
                            if k == "torch" or k.startswith("escapestat.integrations"))))
    sys.stdout.flush()
    if mode in ("term", "chain"):
        time.sleep(60)
""")


def test_killed_or_exiting_processes_leave_a_censored_row(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    modes = ["term", "chain", "exit"]
    procs = {mode: subprocess.Popen([sys.executable, str(script), mode,
                                     str(tmp_path / f"{mode}.csv")], stdout=subprocess.PIPE,
                                    text=True) for mode in modes}
    for mode in ("term", "chain"):
        assert json.loads(procs[mode].stdout.readline()) == []  # no torch, no integrations
        procs[mode].send_signal(signal.SIGTERM)
    codes = {mode: p.wait(timeout=60) for mode, p in procs.items()}
    assert codes == {"term": -signal.SIGTERM, "chain": 3, "exit": 0}
    assert (tmp_path / "chain.csv.chained").read_text() == "yes"
    ended = {"term": "SIGTERM", "chain": "SIGTERM", "exit": "exit"}
    for mode in modes:
        df = read_table(tmp_path / f"{mode}.csv")
        assert len(df) == 1, mode
        r = df.iloc[0]
        assert (r.status, r.duration, r.event, r.ended_by) == (
            "censored", 30, 0, ended[mode]), mode


def test_sigint_writes_the_row_then_raises_keyboard_interrupt(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        m = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5)
        m.update(40, acc=0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert read_table(tmp_path / "t.csv").ended_by.tolist() == ["SIGINT"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def _append_many(path: str, worker: int, rows: int, barrier) -> None:
    barrier.wait()
    for i in range(rows):
        m = EscapeMonitor(path, "acc", 0.5, commit_steps=10, handle_signals=False,
                          seed=worker, replica=i, note="x" * 3000)
        m.update(10 + i, acc=0.9)
        m.update(30 + i, acc=0.9 if i % 2 else 0.1)
        m.close()


def test_concurrent_appends_lose_and_tear_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path, workers, rows = str(tmp_path / "t.csv"), 8, 50
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_append_many, args=(path, w, rows, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    lines = Path(path).read_text().splitlines()
    assert lines[0].startswith("duration,event,status") and len(lines) == workers * rows + 1
    assert sum(line.startswith("duration,") for line in lines) == 1
    df = load(path)
    assert sorted(zip(df.seed, df.replica, strict=True)) == [(w, i) for w in range(workers)
                                                for i in range(rows)]
    assert (df.note.str.len() == 3000).all() and df.run_id.is_unique
    assert df.event.sum() == workers * rows // 2


# --------------------------------------------------------------------------- bad config
@pytest.mark.parametrize("kwargs, message", [
    (dict(direction="up"), "direction must be 'higher' or 'lower'"),
    (dict(direction="hgher"), "did you mean 'higher'"),
    (dict(fallback=0.6), "fallback 0.6 is above the threshold 0.5"),
    (dict(direction="lower", fallback=0.4), "fallback 0.4 is below the threshold 0.5"),
    (dict(commit_steps=0), "commit_steps must be > 0"),
    (dict(commit_steps=-5), "commit_steps must be > 0"),
    (dict(threshold=NAN), "must be finite"),
    (dict(fit_metric="train"), "needs a fit_threshold"),
    (dict(fit_threshold=0.9), "need a fit_metric"),
    (dict(fit_metric="train", fit_threshold=0.9, fit_fallback=0.95), "train: fallback"),
    (dict(max_steps=0), "max_steps must be > 0"),
    (dict(run_id="a/b"), "run_id"),
    (dict(status="x"), "clashes with a column"),
    (dict(conditions={"lr": [1, 2]}), "must be a number, string, bool or None"),
])
def test_bad_config_is_one_clear_line(tmp_path, kwargs, message):
    options = {"threshold": 0.5, **kwargs}
    with pytest.raises(EscapestatError, match=message) as err:
        EscapeMonitor(tmp_path / "t.csv", "acc", **options)
    assert "\n" not in str(err.value)


def test_bad_updates_and_paths(tmp_path):
    with pytest.raises(EscapestatError, match="unknown table format"):
        EscapeMonitor(tmp_path / "t.json", "acc", 0.5)
    m = EscapeMonitor(tmp_path / "t.csv", "acc", 0.5, handle_signals=False)
    with pytest.raises(EscapestatError, match="metric 'acc' must be a number"):
        m.update(10, acc="high")
    with pytest.raises(EscapestatError, match="step must be an integer"):
        m.update(1.5, acc=0.1)
    m.close()
    with pytest.raises(EscapestatError, match="after close"):
        m.update(20, acc=0.1)


# ---------------------------------------------------------------------------- callbacks
class FakeTensor:
    def __init__(self, *values):
        self.values = values

    def numel(self):
        return len(self.values)

    def item(self):
        return self.values[0]


def _fresh(monkeypatch, module: str, stubs: dict):
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


def _stub(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.mark.parametrize("layout", ["lightning", "pytorch_lightning"])
def test_lightning_callback_with_stub(tmp_path, monkeypatch, layout):
    class Callback:  # the stub base class
        pass

    stubs = ({"lightning": _stub("lightning"), "lightning.pytorch":
              _stub("lightning.pytorch", Callback=Callback)} if layout == "lightning" else
             {"lightning": None, "lightning.pytorch": None,
              "pytorch_lightning": _stub("pytorch_lightning", Callback=Callback)})
    lit = _fresh(monkeypatch, "escapestat.integrations.lightning", stubs)
    cb = lit.EscapeCallback(tmp_path / "t.csv", "val_acc", 0.5, fallback=0.25,
                            commit_steps=20, fit_metric="train_acc", fit_threshold=0.99,
                            stop_on_decision=True, handle_signals=False, lr=0.01)
    assert isinstance(cb, Callback)
    trainer = types.SimpleNamespace(sanity_checking=True, is_global_zero=True, global_step=0,
                                    should_stop=False, callback_metrics={"val_acc": 0.9})
    cb.on_validation_end(trainer, None)  # sanity check: skipped
    assert cb.monitor.last_step is None
    trainer.sanity_checking = False
    for step, val, train in ((10, 0.1, 1.0), (20, 0.7, 1.0), (20, 0.7, 1.0), (30, 0.8, 1.0),
                             (40, 0.9, 1.0)):
        trainer.global_step = step
        trainer.callback_metrics = {"val_acc": FakeTensor(val), "train_acc": FakeTensor(train),
                                    "hist": FakeTensor(1, 2), "name": "x"}
        cb.on_validation_end(trainer, None)
    assert trainer.should_stop and cb.monitor.status == "escaped"
    cb.on_fit_end(trainer, None)
    cb.on_exception(trainer, None, RuntimeError())  # already closed: nothing more
    r = read_table(tmp_path / "t.csv").iloc[0]
    assert (r.duration, r.fit_time, r.delay, r.lr, r.ended_by) == (20, 10, 10, 0.01, "close")


def test_lightning_exception_and_other_ranks(tmp_path, monkeypatch):
    stubs = {"lightning": _stub("lightning"),
             "lightning.pytorch": _stub("lightning.pytorch", Callback=object)}
    lit = _fresh(monkeypatch, "escapestat.integrations.lightning", stubs)
    cb = lit.EscapeCallback(tmp_path / "t.csv", "val_acc", 0.5, handle_signals=False)
    rank1 = lit.EscapeCallback(tmp_path / "t.csv", "val_acc", 0.5, handle_signals=False)
    for callback, zero in ((cb, True), (rank1, False)):
        trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=zero,
                                        global_step=15, callback_metrics={"val_acc": 0.1})
        callback.on_validation_end(trainer, None)
        callback.on_exception(trainer, None, KeyError("x"))
    df = read_table(tmp_path / "t.csv")
    assert len(df) == 1 and df.ended_by[0] == "exception KeyError" and df.duration[0] == 15


def test_huggingface_callback_with_stub(tmp_path, monkeypatch):
    class TrainerCallback:
        pass

    hf = _fresh(monkeypatch, "escapestat.integrations.huggingface",
                {"transformers": _stub("transformers", TrainerCallback=TrainerCallback)})
    cb = hf.EscapeCallback(tmp_path / "t.csv", "eval_test_accuracy", 0.5, fallback=0.25,
                           commit_steps=20, fit_metric="eval_train_accuracy",
                           fit_threshold=0.99, stop_on_decision=True, handle_signals=False,
                           seed=2)
    assert isinstance(cb, TrainerCallback)
    state = types.SimpleNamespace(global_step=0, is_world_process_zero=True)
    control = types.SimpleNamespace(should_training_stop=False)
    evals = [(10, {"eval_test_accuracy": 0.1, "epoch": 1.0}),  # two datasets at one step:
             (10, {"eval_train_accuracy": 1.0}),  # merged into one update
             (20, {"eval_train_accuracy": 1.0}),  # waits for the test set ...
             (20, {"eval_test_accuracy": 0.8}),   # ... sent here: crossing at 20
             (20, {"eval_test_accuracy": 0.0}),   # a step already sent: ignored
             (40, {"eval_test_accuracy": 0.9, "eval_train_accuracy": 1.0})]
    for step, metrics in evals:
        state.global_step = step
        assert cb.on_evaluate(None, state, control, metrics=metrics) is control
    assert control.should_training_stop and cb.monitor.escape_time == 20
    cb.on_train_end(None, state, control)
    r = read_table(tmp_path / "t.csv").iloc[0]
    assert (r.duration, r.event, r.fit_time, r.delay, r.seed) == (20, 1, 10, 10, 2)


def test_huggingface_flushes_a_partial_evaluation_at_train_end(tmp_path, monkeypatch):
    hf = _fresh(monkeypatch, "escapestat.integrations.huggingface",
                {"transformers": _stub("transformers", TrainerCallback=object)})
    cb = hf.EscapeCallback(tmp_path / "t.csv", "eval_acc", 0.5, fit_metric="eval_train",
                           fit_threshold=0.9, handle_signals=False)
    state = types.SimpleNamespace(global_step=30, is_world_process_zero=True)
    cb.on_evaluate(None, state, None, metrics={"eval_acc": 0.1})  # no fit metric yet
    assert cb.monitor.last_step is None
    cb.on_train_end(None, state, None)
    assert read_table(tmp_path / "t.csv").duration.tolist() == [30]


@pytest.mark.parametrize("module, hide, pip", [
    ("escapestat.integrations.lightning", ["lightning", "lightning.pytorch",
                                           "pytorch_lightning"],
     "pip install 'escapestat[lightning]'"),
    ("escapestat.integrations.huggingface", ["transformers"],
     "pip install 'escapestat[huggingface]'")])
def test_missing_framework_is_one_clear_error(monkeypatch, module, hide, pip):
    from escapestat.integrations import MissingIntegration

    with pytest.raises(MissingIntegration, match=re.escape(pip)) as err:
        _fresh(monkeypatch, module, dict.fromkeys(hide))
    assert isinstance(err.value, ImportError) and isinstance(err.value, EscapestatError)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ example
def test_example_own_loop_smoke(tmp_path):
    path = ROOT / "studies" / "examples" / "own_loop.py"
    spec = importlib.util.spec_from_file_location("own_loop", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = ["--out", str(tmp_path), "--lr", "0.03", "--seeds", "2", "--p", "7",
            "--batch-size", "16", "--width", "16", "--max-steps", "40", "--commit", "10",
            "--jobs", "1"]
    assert example.main(args) == 0
    df = load(tmp_path / "escapes.csv")
    assert len(df) == 2 and set(df.seed) == {0, 1} and (df.duration <= 40).all()
    assert {"fit_time", "delay", "final_test_accuracy", "condition"} <= set(df.columns)
    assert json.loads((tmp_path / "run.json").read_text())["check_every"] == 10
    with pytest.raises(SystemExit):  # an existing table needs --append
        example.main(args)


def test_appends_lock_without_fcntl_where_there_is_none(tmp_path, monkeypatch):
    """Windows has no fcntl: the monitor still imports, and appends lock through
    ``filelock`` on TABLE.lock (here with fcntl hidden)."""
    import builtins

    from escapestat.table._append import append_row

    real = builtins.__import__

    def no_fcntl(name, *args, **kwargs):
        if name == "fcntl":
            raise ImportError("no fcntl here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fcntl)
    path = tmp_path / "t.csv"
    append_row(path, {"duration": 5.0, "event": 1})
    append_row(path, {"duration": 7.0, "event": 0})
    assert path.read_text().splitlines() == ["duration,event", "5,1", "7,0"]
    assert (tmp_path / "t.csv.lock").exists()
