"""The Lightning and Hugging Face callbacks with the real packages: the README's example
scripts (``studies/examples/*_escape.py``) run as written, and each row equals what an
``EscapeMonitor`` fed the same evaluations by hand writes. Installed by
``escapestat[integrations]``; skipped where missing, but under CI they must run."""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from testdata import ROOT

from escapestat.monitor._monitor import EscapeMonitor

EXAMPLES = ROOT / "studies" / "examples"
SAME = ["duration", "event", "status", "first_cross_time", "last_step", "lr", "seed"]


def _isolated(test):
    """Run ``test`` in a fresh pytest process: the frameworks leave threads and signal
    handlers behind, and the test runner must not carry them into later tests (two full
    runs crashed later, in pandas' CSV parser, after these had run in-process)."""
    @functools.wraps(test)
    def wrapper(tmp_path):
        if os.environ.get("ESCAPESTAT_TEST_CHILD"):
            return test(tmp_path)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::{test.__name__}"], env={**os.environ, "ESCAPESTAT_TEST_CHILD": "1"},
            capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        if " skipped" in done.stdout and " passed" not in done.stdout:
            pytest.skip(done.stdout.strip().splitlines()[-1])
    return wrapper


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-framework tests: {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed (pip install -e '.[integrations]')")


def _example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _by_hand(path: Path, seen: list[tuple[int, float]], metric: str, **options) -> pd.Series:
    monitor = EscapeMonitor(path, metric, 0.9, fallback=0.8, handle_signals=False, **options)
    for step, value in seen:
        monitor.update(step, {metric: value})
        if options.get("stop") and monitor.done:
            break
    monitor.close()
    return pd.read_csv(path).iloc[0]


@_isolated
def test_the_lightning_callback_with_real_lightning(tmp_path):
    lightning = _need("lightning")
    example = _example("lightning_escape")

    class Seen(lightning.Callback):
        def __init__(self):
            self.values: list[tuple[int, float]] = []

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.values.append((trainer.global_step,
                                    float(trainer.callback_metrics["val_acc"])))

    seen = Seen()
    example.main(str(tmp_path / "escapes.csv"), callbacks=[seen])
    row = pd.read_csv(tmp_path / "escapes.csv")
    assert len(row) == 1 and row["event"].iloc[0] == 1 and row["ended_by"].iloc[0] == "close"
    assert [s for s, _ in seen.values] == list(range(4, 52, 4))  # every 4 batches, 4 epochs
    first = next(s for s, v in seen.values if v >= 0.9)
    assert row["duration"].iloc[0] == first
    hand = _by_hand(tmp_path / "hand.csv", seen.values, "val_acc", commit_steps=8, lr=0.02,
                    seed=0)
    assert row.iloc[0][SAME].tolist() == hand[SAME].tolist()


@_isolated
def test_lightnings_own_tensorboard_log_ingests_to_the_callbacks_row(tmp_path):
    """Lightning's TensorBoardLogger writes the run; ``escapestat ingest`` replays it into
    the row the EscapeCallback wrote live (accuracies are k/128: exact in float32).
    Lightning logs a validation at global_step − 1 (3, 7, 11, … where the callback sees
    4, 8, 12, …), so the steps are shifted by one: without it every time is one less."""
    _need("lightning")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from escapestat.monitor import ingest
    from escapestat.trackers import read_runs

    example = _example("lightning_escape")
    example.main(str(tmp_path / "live.csv"),
                 logger=TensorBoardLogger(str(tmp_path / "tb"), name="clf"))
    (run,) = read_runs("tensorboard", str(tmp_path / "tb"), ["val_acc"])
    assert run.name == "clf-version_0" and run.conditions["lr"] == 0.02
    assert min(run.series["val_acc"]) == 3
    result = ingest([run], tmp_path / "ingested.csv", "val_acc", 0.9, fallback=0.8,
                    commit_steps=8, step_offset=1)
    assert result.rows == 1
    live, ingested = (pd.read_csv(tmp_path / f) for f in ("live.csv", "ingested.csv"))
    same = ["duration", "event", "status", "first_cross_time", "last_step", "lr"]
    assert ingested[same].iloc[0].tolist() == live[same].iloc[0].tolist()


@_isolated
def test_the_huggingface_callback_with_real_transformers(tmp_path):
    transformers = _need("transformers")
    example = _example("huggingface_escape")

    class Seen(transformers.TrainerCallback):
        def __init__(self):
            self.values: list[tuple[int, float]] = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.values.append((state.global_step, metrics["eval_accuracy"]))

    seen = Seen()
    example.main(str(tmp_path / "escapes.csv"), callbacks=[seen])
    row = pd.read_csv(tmp_path / "escapes.csv")
    assert len(row) == 1 and row["event"].iloc[0] == 1
    assert [s for s, _ in seen.values][:3] == [5, 10, 15]  # eval_steps = 5
    first = next(s for s, v in seen.values if v >= 0.9)
    assert row["duration"].iloc[0] == first
    # stop_on_decision: training stopped at the evaluation that committed the escape.
    assert row["last_step"].iloc[0] == seen.values[-1][0] == first + 10
    hand = _by_hand(tmp_path / "hand.csv", seen.values, "eval_accuracy", commit_steps=10,
                    lr=3e-4, seed=0)
    assert row.iloc[0][SAME].tolist() == hand[SAME].tolist()
