"""``escapestat ingest``: runs logged to TensorBoard, MLflow and W&B by those packages
themselves give exactly the rows an ``EscapeMonitor`` writes watching the same runs live.

The series are built to exercise the rule: a crossing that falls back before it commits,
a run that never escapes (censored at its last step), one that diverges (NaN), one that
starts outside the trap (no row). Values are multiples of 1/64, exact in TensorBoard's
float32, so the float64 monitor and the float32 log agree bit for bit.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from escapestat.monitor import EscapeMonitor

RULE = {"fallback": 0.875, "commit_steps": 200, "fit_metric": "train_acc",
        "fit_threshold": 0.96875, "record": ["loss"]}
THRESHOLD = 0.953125  # 61/64
SAME = ["duration", "event", "status", "first_cross_time", "fit_time", "generalize_time",
        "delay", "final_test_acc", "final_train_acc", "final_loss", "nonfinite_updates",
        "last_step", "lr", "seed", "condition"]


def _series(kind: str) -> dict[int, dict[str, float]]:
    """step → metrics for one kind of run, evaluated every 50 steps to 1000."""
    out = {}
    for step in range(0, 1001, 50):
        train = min(1.0, step / 400) * 63 / 64
        if kind == "escapes":  # crosses at 300, falls back at 350, crosses again at 500
            test = 62 / 64 if step in (300,) or step >= 500 else min(step, 400) / 400 * 48 / 64
        elif kind == "censored":
            test = 40 / 64
        elif kind == "diverges":
            test = float("nan") if step == 400 else 30 / 64
        else:  # "untrapped": already past the fallback at step 0
            test = 63 / 64
        out[step] = {"test_acc": test, "train_acc": train, "loss": 1 - train}
    return out


RUNS = [("escapes", 0.01, 1), ("censored", 0.02, 2), ("diverges", 0.04, 3),
        ("untrapped", 0.08, 4)]


def _live_rows(tmp_path, log=None) -> pd.DataFrame:
    path = tmp_path / "live.csv"
    for kind, lr, seed in RUNS:
        with EscapeMonitor(path, "test_acc", THRESHOLD, run_id=f"{kind}", lr=lr, seed=seed,
                           handle_signals=False, quiet=True, log=log, **RULE) as monitor:
            for step, metrics in _series(kind).items():
                monitor.update(step, metrics)
    return pd.read_csv(path)


def _ingest(cli, tracker, source, out, *extra):
    code, stdout, stderr = cli("ingest", tracker, source, "--metric", "test_acc",
                               "--threshold", THRESHOLD, "--fallback", 0.875,
                               "--commit-steps", 200, "--fit-metric", "train_acc",
                               "--fit-threshold", 0.96875, "--record", "loss", "--out", out,
                               *extra)
    return code, stdout, stderr


def _same_rows(live: pd.DataFrame, ingested: pd.DataFrame) -> None:
    ingested = ingested.sort_values("lr").reset_index(drop=True)
    live = live.sort_values("lr").reset_index(drop=True)
    assert len(ingested) == len(live) == 3  # the untrapped run writes no row
    pd.testing.assert_frame_equal(live[SAME], ingested[SAME], check_dtype=False)


def test_the_live_rows_exercise_the_rule(tmp_path):
    live = _live_rows(tmp_path).set_index("status")
    assert live.loc["escaped", "duration"] == 500  # the crossing at 300 fell back
    assert live.loc["escaped", "first_cross_time"] == 300
    assert live.loc["censored", "duration"] == 1000
    assert live.loc["diverged", "duration"] == 400


def test_tensorboard_written_by_torch_summarywriter(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    for kind, lr, seed in RUNS:
        writer = SummaryWriter(str(tmp_path / "tb" / f"{kind}"))
        for step, metrics in _series(kind).items():
            for name, value in metrics.items():
                writer.add_scalar(name, value, step)
        # add_hparams writes the hyperparameters into a subfolder of the run
        writer.add_hparams({"lr": lr, "seed": seed, "condition": f"lr={lr}"}, {})
        writer.close()
    code, out, err = _ingest(cli, "tensorboard", tmp_path / "tb", tmp_path / "in.csv")
    assert code == 0, err
    assert "wrote 3 rows" in out and "1 censored, 1 diverged, 1 escaped" in out
    assert "skipped untrapped: not in the trap at step 0" in err
    _same_rows(_live_rows(tmp_path), pd.read_csv(tmp_path / "in.csv"))


@pytest.mark.parametrize("kind, target", [
    ("tensorboard", "{tmp}/log"), ("mlflow", "{tmp}/log"), ("mlflow", "sqlite:///{tmp}/m.db")])
def test_the_monitor_logs_to_a_tracker_and_ingest_reads_the_same_rows(cli, tmp_path, kind,
                                                                      target):
    pytest.importorskip(kind)
    source = target.format(tmp=tmp_path)
    live = _live_rows(tmp_path, log=f"{kind}:{source}")
    code, out, err = _ingest(cli, kind, source, tmp_path / "in.csv")
    assert code == 0, err
    ingested = pd.read_csv(tmp_path / "in.csv")
    _same_rows(live, ingested)
    assert len(set(ingested["run_id"])) == 3 and (ingested["ended_by"] == f"ingest {kind}").all()


def test_mlflow_file_store_written_by_mlflow(cli, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        for kind, lr, seed in RUNS:
            with mlflow.start_run(run_name=kind):
                mlflow.log_params({"lr": lr, "seed": seed, "condition": f"lr={lr}"})
                for step, metrics in _series(kind).items():
                    mlflow.log_metrics(metrics, step=step)
    finally:
        mlflow.set_tracking_uri(None)
    code, out, err = _ingest(cli, "mlflow", tmp_path / "mlruns", tmp_path / "in.csv")
    assert code == 0, err
    _same_rows(_live_rows(tmp_path), pd.read_csv(tmp_path / "in.csv"))


WANDB_WRITER = textwrap.dedent('''
    import json, sys, wandb
    runs, folder = json.loads(sys.argv[1]), sys.argv[2]
    for name, config, series in runs:
        run = wandb.init(mode="offline", dir=folder, project="grok", name=name, config=config)
        for step, metrics in series:
            run.log(metrics, step=step)
        run.finish()
''')


def test_wandb_offline_runs_written_by_wandb(cli, tmp_path):
    pytest.importorskip("wandb")
    import json

    runs = [(kind, {"lr": lr, "seed": seed, "condition": f"lr={lr}",
                    "optimizer": {"name": "adamw", "betas": [0.9, 0.98]}},
             [(s, {k: (v if math.isfinite(v) else "nan") for k, v in m.items()})
              for s, m in _series(kind).items()]) for kind, lr, seed in RUNS]
    # wandb.log takes float('nan'); JSON carries it as text, turned back in the writer
    script = WANDB_WRITER.replace("run.log(metrics, step=step)",
                                  "run.log({k: float(v) for k, v in metrics.items()}, "
                                  "step=step)")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(runs), str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true", "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    code, out, err = _ingest(cli, "wandb", tmp_path / "wandb", tmp_path / "in.csv")
    assert code == 0, err
    ingested = pd.read_csv(tmp_path / "in.csv")
    _same_rows(_live_rows(tmp_path), ingested)
    assert (ingested["optimizer.name"] == "adamw").all()  # nested config, flattened


def test_an_existing_table_is_refused_and_kept_unless_append(cli, tmp_path):
    pytest.importorskip("tensorboard")
    _live_rows(tmp_path, log=f"tensorboard:{tmp_path / 'tb'}")
    out = tmp_path / "in.csv"
    assert _ingest(cli, "tensorboard", tmp_path / "tb", out)[0] == 0
    before = out.read_bytes()
    code, stdout, err = _ingest(cli, "tensorboard", tmp_path / "tb", out)
    assert code == 1 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "exists" in err and "--append" in err and out.read_bytes() == before
    code, stdout, err = _ingest(cli, "tensorboard", tmp_path / "tb", out, "--append")
    assert code == 0, err  # the same runs again: already there, never counted twice
    assert out.read_bytes() == before and "wrote 0 rows" in stdout
    assert err.count("already in") == 3
    from escapestat.trackers._tensorboard import TensorBoardLog

    log = TensorBoardLog(tmp_path / "tb")  # one more run in the same log
    log.hparams("extra", {"lr": 0.16, "seed": 5, "condition": "lr=0.16"})
    for step, metrics in _series("escapes").items():
        log.scalars("extra", step, metrics)
    log.close()
    code, stdout, err = _ingest(cli, "tensorboard", tmp_path / "tb", out, "--append")
    assert code == 0, err
    table = pd.read_csv(out)
    assert len(table) == 4 and table["run_id"].iloc[-1] == "extra"
    assert out.read_bytes().startswith(before)


@pytest.mark.parametrize("tracker, make, message", [
    ("tensorboard", lambda p: p, "no TensorBoard event files"),
    ("tensorboard", lambda p: p / "missing", "not a TensorBoard log directory"),
    ("wandb", lambda p: p, "no W&B run logs"),
    ("mlflow", lambda p: p / "missing", "not an MLflow store"),
    ("mlflow", lambda p: f"sqlite:///{p}/missing.db", "no such MLflow database"),
])
def test_a_bad_source_is_one_line(cli, tmp_path, tracker, make, message):
    code, out, err = _ingest(cli, tracker, make(tmp_path), tmp_path / "in.csv")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert message in err and not (tmp_path / "in.csv").exists()
    assert not (tmp_path / "missing.db").exists()  # reading never creates a store


def test_a_metric_no_run_logged_is_one_line_naming_what_was_logged(cli, tmp_path):
    pytest.importorskip("tensorboard")
    _live_rows(tmp_path, log=f"tensorboard:{tmp_path / 'tb'}")
    code, out, err = cli("ingest", "tensorboard", tmp_path / "tb", "--metric", "test_accuracy",
                         "--threshold", 0.95, "--out", tmp_path / "in.csv")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "none of its 4 runs logged 'test_accuracy' (did you mean 'test_acc'?)" in err
    assert "train_acc" in err and not (tmp_path / "in.csv").exists()


def test_an_unknown_tracker_is_a_usage_error(cli, tmp_path):
    code, out, err = _ingest(cli, "tensorbord", tmp_path, tmp_path / "in.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_a_run_with_bad_steps_is_one_line_naming_it(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from escapestat.trackers._tensorboard import TensorBoardLog

    log = TensorBoardLog(tmp_path / "tb")
    for step in (0, 50, -5):
        log.scalars("odd", step, {"test_acc": 0.5})
    log.close()
    code, out, err = _ingest(cli, "tensorboard", tmp_path / "tb", tmp_path / "in.csv")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "run odd: step" in err and not (tmp_path / "in.csv").exists()


def test_a_missing_tracker_package_names_the_extra(cli, tmp_path, monkeypatch):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    for mod in [m for m in sys.modules if m.startswith("tensorboard")]:
        monkeypatch.delitem(sys.modules, mod)
    code, out, err = _ingest(cli, "tensorboard", tmp_path / "tb", tmp_path / "in.csv")
    assert code == 1 and "pip install 'escapestat[tensorboard]'" in err


def test_condition_values_from_text_and_floats():
    from escapestat.trackers import condition_value

    assert condition_value("0.001") == 0.001 and condition_value("32") == 32
    assert condition_value(32.0) == 32 and isinstance(condition_value(32.0), int)
    assert condition_value("True") is True and condition_value("adamw") == "adamw"
    assert condition_value([1, 2]) == "[1, 2]" and np.isnan(float(condition_value("nan")))


def test_step_offset_shifts_every_logged_step(cli, tmp_path):
    """Lightning logs at steps done − 1; --step-offset 1 counts steps done instead."""
    pytest.importorskip("tensorboard")
    live = _live_rows(tmp_path, log=f"tensorboard:{tmp_path / 'tb'}")
    code, out, err = _ingest(cli, "tensorboard", tmp_path / "tb", tmp_path / "in.csv",
                             "--step-offset", 1)
    assert code == 0, err
    shifted = pd.read_csv(tmp_path / "in.csv")
    # No logged step is now the state before training, so the run that started outside
    # the trap is not recognised as untrapped: it escapes at its first step.
    assert shifted.set_index("run_id").loc["untrapped", "duration"] == 1
    shifted = shifted[shifted["run_id"] != "untrapped"].sort_values("lr").reset_index(drop=True)
    live = live.sort_values("lr").reset_index(drop=True)
    for col in ("duration", "first_cross_time", "last_step"):
        pd.testing.assert_series_equal(shifted[col], live[col] + 1, check_dtype=False)
