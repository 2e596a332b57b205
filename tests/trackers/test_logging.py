"""``--log``: what ``run`` and a search send to TensorBoard or MLflow is what they measured,
read back with the trackers' own readers (and ``read_runs``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from testdata import ROOT, TINY_SEARCH

from escapestat.engine._tracking import log_run
from escapestat.search._search import Objective
from escapestat.search._space import load_search
from escapestat.trackers import open_log, parse_log_spec, read_runs

pytest.importorskip("tensorboard")


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_run_log_sends_each_conditions_escaped_fraction(cli, tmp_path, kind):
    if kind == "mlflow":
        pytest.importorskip("mlflow")
    target = tmp_path / "log"
    code, out, err = cli("run", ROOT / "studies" / "langevin-arrhenius.toml", "--replicas", 8,
                         "--max-steps", 1500, "--out", tmp_path / "run", "--log",
                         f"{kind}:{target}")
    assert code == 0, err
    assert f"logged 10 conditions to {kind}:{target}" in err
    escapes = pd.read_csv(tmp_path / "run" / "escapes.csv")
    runs = {r.name.split("-")[0] + "-" + r.name.split("-")[1]: r
            for r in read_runs(kind, str(target), ["escaped", "diverged"])}
    assert len(runs) == 10
    for cond, rows in escapes.groupby("condition"):
        run = runs[f"condition-{cond}"]
        escaped = run.series["escaped"]
        assert escaped[1500] == pytest.approx((rows["status"] == "escaped").mean(), abs=1e-6)
        first = rows.loc[rows["status"] == "escaped", "duration"].min()
        if np.isfinite(first):  # the fraction rises exactly at the first escape
            before = max(s for s in escaped if s < first)
            assert escaped[before] == 0 and escaped[int(first)] > 0
        assert run.conditions["temperature"] == pytest.approx(rows["temperature"].iloc[0])


def test_curves_are_logged_as_median_and_quantiles(tmp_path):
    escapes = pd.DataFrame({"condition": [0, 0], "status": ["escaped", "censored"],
                            "duration": [30.0, 100.0], "lr": [0.1, 0.1]})
    curves = pd.DataFrame({"condition": 0, "metric": "test_accuracy", "step": [10, 20],
                           "n": 2, "q10": [0.1, 0.2], "median": [0.5, 0.6],
                           "q90": [0.9, 0.95]})
    log_run(escapes, curves, 100, open_log(f"tensorboard:{tmp_path}"))
    (run,) = read_runs("tensorboard", str(tmp_path),
                       ["escaped", "test_accuracy/median", "test_accuracy/q90"])
    assert run.series["test_accuracy/median"] == pytest.approx({10: 0.5, 20: 0.6})
    assert run.series["test_accuracy/q90"][20] == pytest.approx(0.95)
    assert run.series["escaped"] == {0: 0.0, 30: 0.5, 100: 0.5}
    assert run.conditions == {"condition": 0, "lr": 0.1}


def test_a_search_trial_logs_what_it_reported_to_optuna(tmp_path):
    raw, spec = load_search(TINY_SEARCH, "tiny.toml")
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(Objective(raw, spec, "tiny.toml", "cpu", log=f"tensorboard:{tmp_path}"),
                   n_trials=1)
    trial = study.trials[0]
    (run,) = read_runs("tensorboard", str(tmp_path), ["log_rmst_ratio", "objective"])
    assert run.name == "search-trial-0"
    assert run.series["log_rmst_ratio"] == pytest.approx(trial.intermediate_values)
    assert run.series["objective"] == pytest.approx({600: trial.value})
    for name, value in trial.params.items():
        logged = run.conditions[name]
        assert logged == (pytest.approx(value) if isinstance(value, float) else value)
    assert math.isfinite(trial.value)


@pytest.mark.parametrize("spec, message", [
    ("tensorboard", "write KIND:TARGET"), ("tensorbord:x", "did you mean 'tensorboard'"),
    ("wandb:x", "choose tensorboard or mlflow")])
def test_a_bad_log_spec_is_one_clear_error(spec, message):
    with pytest.raises(Exception, match=message):
        parse_log_spec(spec)


def test_run_with_a_bad_log_spec_trains_nothing(cli, tmp_path):
    code, out, err = cli("run", ROOT / "studies" / "langevin-arrhenius.toml", "--replicas", 2,
                         "--out", tmp_path / "run", "--log", "tensorbord:x")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "tensorbord" in err
    assert not (tmp_path / "run").exists()


def test_the_real_tensorboard_server_shows_what_was_logged(tmp_path):
    """Start TensorBoard itself on loopback and read the logged run back over its HTTP API."""
    import json
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    escapes = pd.DataFrame({"condition": [0, 0, 0, 0], "duration": [30.0, 50.0, 50.0, 100.0],
                            "status": ["escaped", "escaped", "diverged", "censored"],
                            "temperature": 0.01})
    log_run(escapes, None, 100, open_log(f"tensorboard:{tmp_path}"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
    server = subprocess.Popen([exe or "tensorboard", "--logdir", str(tmp_path), "--host",
                               "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, runs = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as r:
                    runs = json.load(r)
                if runs:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert runs == ["condition-0"]
        query = f"{url}/data/plugin/scalars/scalars?run=condition-0&tag="
        with urllib.request.urlopen(query + "escaped", timeout=10) as r:
            escaped = {step: value for _, step, value in json.load(r)}
        with urllib.request.urlopen(query + "diverged", timeout=10) as r:
            diverged = {step: value for _, step, value in json.load(r)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert escaped == {0: 0.0, 30: 0.25, 50: 0.5, 100: 0.5}
    assert diverged == {0: 0.0, 30: 0.0, 50: 0.25, 100: 0.25}
