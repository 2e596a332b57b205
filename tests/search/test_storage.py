"""escapestat.search._storage: the embedded SQLite default, its errors, and a study shared by
worker processes on a real PostgreSQL server (fixture ``postgres_url``, tests/postgres.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import optuna
import pytest

from escapestat.errors import EscapestatError
from escapestat.search._storage import embedded_url, open_storage, retried_from

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)

# One worker process: opens the storage, joins the study by name, and optimizes. The config
# (JSON in argv[1]) picks the objective: "share" sleeps 0.2 s, "block" writes a marker file
# then hangs (to be killed), "quick" returns at once. It prints the trial numbers it ran.
# With "go", it waits after its imports until that file exists.
WORKER = r'''
import json, os, sys, time
from pathlib import Path

import optuna

from escapestat.search._storage import open_storage

cfg = json.loads(sys.argv[1])
optuna.logging.set_verbosity(optuna.logging.WARNING)
if cfg.get("go"):  # started early (imports are slow): wait for the word
    deadline = time.monotonic() + 120
    while not Path(cfg["go"]).exists():
        assert time.monotonic() < deadline, "never told to go"
        time.sleep(0.02)
storage = open_storage(cfg["url"], heartbeat_interval=cfg["heartbeat"],
                       grace_period=cfg["grace"], max_retry=cfg["max_retry"])
study = optuna.create_study(study_name=cfg["study"], storage=storage, load_if_exists=True)
if cfg.get("barrier"):  # start together: each worker must get a share of the trials
    Path(cfg["barrier"], f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(cfg["barrier"]).glob("ready-*"))) < cfg["workers"]:
        assert time.monotonic() < deadline, "the other workers never got ready"
        time.sleep(0.02)
ran = []

def objective(trial):
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("worker", os.getpid())
    ran.append(trial.number)
    if cfg["mode"] == "block":
        Path(cfg["marker"]).write_text(str(trial.number))
        time.sleep(60)
    elif cfg["mode"] == "share":
        time.sleep(0.2)
    return x * x

callbacks = []
if cfg.get("max_complete"):
    callbacks.append(optuna.study.MaxTrialsCallback(
        cfg["max_complete"], states=(optuna.trial.TrialState.COMPLETE,)))
study.optimize(objective, n_trials=cfg.get("n_trials"), callbacks=callbacks)
print(json.dumps({"pid": os.getpid(), "ran": ran}))
'''


@pytest.fixture(autouse=True)
def _quiet_optuna():
    """No "A new study created" lines from this process; the previous level afterwards."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def _worker(tmp_path, **cfg) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER)
    cfg = {"heartbeat": 1, "grace": 2, "max_retry": 3, **cfg}
    return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The worker's report; its stderr in the failure message if it did not exit cleanly."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.pid} still running after {timeout} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"worker {proc.pid} exited {proc.returncode}:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _study_name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- embedded SQLite and errors --------------------------------------------------------------

def test_embedded_storage_is_optuna_db_in_the_folder_and_persists(tmp_path):
    url = embedded_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    assert (tmp_path / "optuna.db").is_file()
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) ** 2, n_trials=3)

    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.state for t in again.trials] == [COMPLETE] * 3
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert again.best_value == study.best_value


def test_unknown_scheme_is_one_line():
    with pytest.raises(EscapestatError) as info:
        open_storage("mongodb://localhost/escapes")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown scheme 'mongodb'" in message


def test_unreachable_postgres_is_one_line_without_the_password():
    url = f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(EscapestatError) as info:
        open_storage(url)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot open it" in message
    assert "secret" not in message
    assert "u:***@127.0.0.1" in message


# --- a real PostgreSQL server ----------------------------------------------------------------

@pytest.mark.postgres
def test_workers_share_one_study(postgres_url, tmp_path):
    name, workers, max_complete = _study_name("share"), 2, 10
    open_storage(postgres_url)  # the schema, once: workers only race to create the study
    procs = [_worker(tmp_path, url=postgres_url, study=name, mode="share", barrier=str(tmp_path),
                     workers=workers, max_complete=max_complete) for _ in range(workers)]
    reports = [_finish(p) for p in procs]

    trials = optuna.load_study(study_name=name, storage=open_storage(postgres_url)).trials
    k = len(trials)
    assert [t.state for t in trials] == [COMPLETE] * k
    assert sorted(t.number for t in trials) == list(range(k))  # numbered 0..k-1, no gaps
    ran = [n for r in reports for n in r["ran"]]
    assert sorted(ran) == list(range(k))  # every trial run by one worker, none by two
    pids = {r["pid"] for r in reports}
    assert {t.user_attrs["worker"] for t in trials} == pids  # both workers ran trials
    assert all(r["ran"] for r in reports)
    # Workers stop once they see max_complete COMPLETE trials, but each worker checks only
    # after its own trial ends: it may start one more trial before it sees the others' last
    # completions, so each of the other workers can overshoot by at most one trial.
    assert max_complete <= k <= max_complete + workers - 1


@pytest.mark.postgres
def test_a_killed_workers_trial_fails_and_is_retried(postgres_url, tmp_path):
    name, grace = _study_name("killed"), 2
    storage = open_storage(postgres_url, heartbeat_interval=1, grace_period=grace)
    study = optuna.create_study(study_name=name, storage=storage)
    marker, go = tmp_path / "started", tmp_path / "go"
    victim = _worker(tmp_path, url=postgres_url, study=name, mode="block", marker=str(marker),
                     heartbeat=1, grace=grace, n_trials=1)
    # The next worker, started now so that its slow imports overlap; it waits for `go`.
    rescuer = _worker(tmp_path, url=postgres_url, study=name, mode="quick", go=str(go),
                      heartbeat=1, grace=grace, n_trials=2)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and study.get_trials(deepcopy=False, states=(RUNNING,))):
            assert victim.poll() is None, f"blocked worker exited: {victim.communicate()[1]}"
            assert time.monotonic() < deadline, "the blocked worker's trial never ran"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=10)
        (killed,) = study.get_trials(deepcopy=False, states=(RUNNING,))
        assert killed.number == int(marker.read_text())

        # Its heartbeat stops with it: after the grace period the next worker that looks
        # fails the trial and queues a copy, which it runs first.
        time.sleep(grace + 1)
        go.touch()
        report = _finish(rescuer)
        assert report["ran"]
    finally:
        for proc in (victim, rescuer):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed.number].state == FAIL
    retries = [t for t in trials.values() if retried_from(t) == killed.number]
    assert len(retries) == 1, f"expected one retry of trial {killed.number}: {retries}"
    (retry,) = retries
    assert retry.state == COMPLETE
    assert retry.params == killed.params
    assert retry.user_attrs["worker"] == report["pid"]
    assert retry.number in report["ran"]


@pytest.mark.postgres
def test_workers_starting_together_on_a_fresh_database_all_open_it(postgres_url, tmp_path):
    """Workers that open a brand-new database at once race to create Optuna's tables;
    each must still open it (the losers retry). Without the retry 8 workers failed 2 runs
    in 3 with a UniqueViolation."""
    import psycopg

    fresh = f"fresh_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    base = postgres_url.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{fresh}"')
    url = base.rsplit("/", 1)[0] + "/" + fresh
    start = time.time() + 3.0
    script = (
        "import time, sys\n"
        "from escapestat.search._storage import open_storage\n"
        f"time.sleep(max(0.0, {start} - time.time()))\n"
        f"open_storage({url!r})\n"
        "print('opened')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and "opened" in out, err
