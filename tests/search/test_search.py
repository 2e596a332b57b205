"""The search's objective, pruning, constraint, and the optimize/compare commands end to end."""

from __future__ import annotations

import contextlib
import json
import math
import socket

import numpy as np
import optuna
import pandas as pd
import pytest

from escapestat.engine._detector import CENSORED, DIVERGED, ESCAPED
from escapestat.search._search import ArmRun, Objective, censored_rmst, objective_value, outcome
from escapestat.search._space import load_search
from escapestat.stats._survival import KaplanMeierMedian

optuna.logging.set_verbosity(optuna.logging.WARNING)

# lr 1e-2 to 3e-2 on (a + b) mod 23 groks within a few hundred steps (tests/test_grok_model).
from testdata import TINY_SEARCH as STUDY  # noqa: E402


def test_censored_rmst_is_the_km_area_with_undecided_replicas_censored_now():
    # Escapes at 10 and 20, two undecided at t = 40: S = 1, ¾, ½ → 10 + 7.5 + 10.
    status = np.array([ESCAPED, ESCAPED, CENSORED, CENSORED], dtype=object)
    duration = np.array([10.0, 20.0, 600.0, 600.0])
    assert censored_rmst(40, status, duration, np.array([2, 3])) == pytest.approx(27.5)


def _arm(durations, statuses, budget=100):
    rows = pd.DataFrame({"duration": durations, "status": statuses,
                         "event": [int(s == ESCAPED) for s in statuses]})
    return ArmRun(rows, seconds=1.0, steps=budget, budget=budget)


def test_the_objective_never_fills_censored_replicas_in_as_the_budget():
    # Two escapes at 10, two censored at 5 (still trapped when seen last); budget 100.
    # Filling the censored in as the budget would give a mean of 55; the incidence after
    # t = 10 is 1 (both replicas at risk then escaped), so the RMST is 10.
    arm = _arm([10.0, 10.0, 5.0, 5.0], [ESCAPED, ESCAPED, CENSORED, CENSORED])
    s = arm.summary()
    assert s.rmst == pytest.approx(10.0)
    assert objective_value("rmst", s) == pytest.approx(math.log(10.0))
    assert objective_value("log_tau", s) == pytest.approx(math.log(30.0 / 2))
    none = _arm([100.0, 100.0], [CENSORED, CENSORED]).summary()
    assert objective_value("log_tau", none) == pytest.approx(math.log(200.0 / 0.5))


def test_a_diverged_replica_never_escapes_in_the_objective():
    # The example: 8 escapes at 100 and 8 divergences at 50 must score worse than
    # 16 clean escapes at 100. Censoring the divergences (KM) scores them the same: 100.
    budget = 1000
    clean = _arm([100.0] * 16, [ESCAPED] * 16, budget).summary()
    mixed = _arm([100.0] * 8 + [50.0] * 8, [ESCAPED] * 8 + [DIVERGED] * 8, budget).summary()
    assert clean.rmst == pytest.approx(100.0)
    # Half never escape: 100 + ½ · (1000 − 100).
    assert mixed.rmst == pytest.approx(100.0 + 0.5 * 900.0)
    for kind in ("rmst", "log_tau"):
        assert objective_value(kind, mixed) > objective_value(kind, clean)
    assert (mixed.events, mixed.diverged, mixed.diverged_fraction) == (8, 8, 0.5)
    # The median is where the incidence of escape reaches ½: at 100 for the mixed arm too
    # (8 of 16 escaped), but an arm with 30% diverged and the clean arm's times cannot win.
    times = list(np.linspace(100, 400, 20))
    worse = _arm(times[:14] + [30.0] * 6, [ESCAPED] * 14 + [DIVERGED] * 6, budget).summary()
    base = _arm(times, [ESCAPED] * 20, budget).summary()
    assert worse.rmst > base.rmst and worse.median >= base.median
    assert objective_value("rmst", worse) > objective_value("rmst", base)
    # Kaplan–Meier, censoring the divergences at 30, would have made it the faster arm.
    km = KaplanMeierMedian().fit(np.array(times[:14] + [30.0] * 6), np.r_[np.ones(14), np.zeros(6)])
    assert km.median_ < base.median


@pytest.fixture(scope="module")
def raw_spec():
    return load_search(STUDY, "tiny.toml")


def test_a_trial_reports_at_checkpoints_and_keeps_its_numbers(raw_spec):
    raw, spec = raw_spec
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(Objective(raw, spec, "tiny.toml", "cpu"), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    a = t.user_attrs
    assert a["n"] == 4 and 0 <= a["events"] <= 4 and len(a["median_ci"]) == 2
    assert set(a["overrides"]) >= {"dynamics.lr", "dynamics.weight_decay.shape"}
    assert t.value == pytest.approx(math.log(a["rmst"]))
    # Reported at every checkpoint (a quarter, half, ... of the budget, on the check grid),
    # also those after every replica was decided, which hold the final curve's area.
    assert sorted(t.intermediate_values) == [160, 300, 460, 600]
    assert t.intermediate_values[600] == pytest.approx(t.value - math.log(600))
    values = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
    assert values == sorted(values, reverse=True)  # never rises: a trial's best is its last


def test_a_pruned_trial_stops_early(raw_spec):
    raw, spec = raw_spec
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=1.0))  # all
    study.optimize(Objective(raw, spec, "tiny.toml", "cpu"), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["pruned_at"] == 160 and "rmst" not in t.user_attrs
    assert "final_test_error" in t.constraints  # known for a pruned trial too


def test_an_infeasible_trial_is_never_the_best(raw_spec):
    raw, spec = raw_spec
    import dataclasses
    strict = dataclasses.replace(spec, max_final_test_error=1e-9)
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    # A test error of exactly 0 on every replica is possible, so make it impossible:
    study.optimize(Objective(raw, strict, "tiny.toml", "cpu"), n_trials=1)
    t = study.trials[0]
    err = t.user_attrs["final_test_error"]
    assert t.constraints == {"final_test_error": pytest.approx(err - 1e-9)}
    assert (outcome(study).best is None) == (err > 1e-9)


def test_optimize_and_compare_end_to_end(cli, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY, encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = cli("optimize", path, "--out", out, "--device", "cpu", "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert {"study_name", "storage", "n_trials", "n_complete", "n_pruned", "n_failed", "best",
            "compare"} <= set(payload)
    assert payload["study_name"] == "tiny-search" and payload["storage"].startswith("sqlite:")
    assert payload["n_trials"] == 2 and (out / "optuna.db").is_file()
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(set(trials["search"])) == ["tiny-search", "tiny-search-constant"]
    assert len(trials) == 4
    arms = {r["arm"]: r for r in payload["compare"]}
    assert "default" in arms and "best-constant" in arms
    for r in payload["compare"]:
        assert {"arm", "params", "median", "median_ci", "escaped_fraction", "final_test_error",
                "ratio_vs_default", "ratio_vs_default_ci", "ratio_vs_best_constant",
                "ratio_vs_best_constant_ci", "logrank_p", "diverged", "diverged_fraction",
                "censored_fraction", "final_train_error", "feasible", "ablations",
                "ablation_best", "ratio_vs_ablation", "ratio_vs_ablation_ci",
                "logrank_p_vs_ablation", "schedule_verdict"} <= set(r)
        assert r["params"] is not None
        # A scheduled best trial brings its ablations; anything else has none.
        scheduled = r["source"].startswith("search trial") and any(
            v not in ("constant",) for k, v in r["params"].items() if k.endswith(".shape"))
        assert (r["ablations"] is not None) == scheduled, r
        for name in r["ablations"] or ():
            assert name in arms, name
    assert arms["default"]["ratio_vs_default"] is None  # the reference itself
    assert (out / "compare.csv").is_file() and (out / "compare.json").is_file()
    replicas = pd.read_csv(out / "compare_arms.csv")  # every arm's replicas, for KM curves
    assert set(replicas["arm"]) == set(arms)
    assert (replicas.groupby("arm").size() == 4).all()
    # A second optimize on the same folder finds the trial budget spent: no new trials.
    code, stdout, err = cli("optimize", path, "--out", out, "--device", "cpu", "--json",
                            "--no-compare")
    assert code == 0 and json.loads(stdout)["n_trials"] == 2
    # compare alone re-runs the arms on the same fresh seed: the same medians.
    code, stdout2, err = cli("compare", path, "--out", out, "--device", "cpu", "--json")
    assert code == 0, err
    again = {r["arm"]: r["median"] for r in json.loads(stdout2)["compare"]}
    assert again == {name: r["median"] for name, r in arms.items()}


def test_compare_without_a_search_is_one_line(cli, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY, encoding="utf-8")
    code, stdout, err = cli("compare", path, "--out", tmp_path / "none")
    assert code == 1 and "no search named 'tiny-search'" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.postgres
def test_optimize_workers_share_a_postgres_search(postgres_url, tmp_path):
    """Two `escapestat optimize` processes on one PostgreSQL study: the trial budget is
    shared, every trial is run once and finishes, and `compare` then reads both searches."""
    import subprocess
    import sys

    from escapestat.search._storage import open_storage

    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.replace("trials = 2", "trials = 4"), encoding="utf-8")
    name = f"workers-{tmp_path.name}"
    cmd = [sys.executable, "-m", "escapestat_cli", "optimize", str(path), "--storage",
           postgres_url, "--study-name", name, "--device", "cpu", "--no-compare", "--json"]
    workers = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"w{i}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
        assert json.loads(out)["storage"].startswith("postgresql")
    storage = open_storage(postgres_url)
    for study_name in (name, name + "-constant"):
        trials = optuna.load_study(study_name=study_name, storage=storage).trials
        seen = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in trials]
        numbers = [t.number for t in trials]
        assert numbers == list(range(len(trials))), seen  # none lost, none run twice
        # Each worker checks the budget after its own trial: at most one extra per worker.
        assert 4 <= len(trials) <= 5, seen
        assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                   for t in trials), (seen, outs)
        assert {t.user_attrs["worker"] for t in trials} <= {
            f"{socket.gethostname()}:{w.pid}" for w in workers}
        # Seeded per trial: the two workers never drew the same parameters.
        drawn = [json.dumps(t.params, sort_keys=True) for t in trials]
        assert len(set(drawn)) == len(drawn), drawn
    from typer.testing import CliRunner

    from escapestat_cli.app import app
    result = CliRunner().invoke(app, ["compare", str(path), "--storage", postgres_url,
                                      "--study-name", name, "--device", "cpu", "--json",
                                      "--out", str(tmp_path / "cmp")])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 0, result.stderr
    assert {r["arm"] for r in json.loads(result.stdout)["compare"]} >= {"default",
                                                                       "best-constant"}


def test_the_median_pruner_stops_a_trial_slower_than_the_others(raw_spec):
    raw, spec = raw_spec
    from escapestat.search._search import make_pruner
    study = optuna.create_study(pruner=make_pruner(spec, 600))
    fast = {"dynamics.lr": 3e-2, "dynamics.weight_decay.shape": "constant",
            "dynamics.weight_decay.value": 1.0}
    for params in (fast, fast, fast, dict(fast, **{"dynamics.lr": 1e-2,
                                                   "dynamics.weight_decay.value": 0.5})):
        study.enqueue_trial(params)
    study.optimize(Objective(raw, spec, "tiny.toml", "cpu"), n_trials=4)
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE"] * 3 and states[3] == "PRUNED", states


LINEAR = """
name = "lin"
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
temperature = 0.004
[escape]
commit_steps = 50
check_every = 10
[run]
replicas = 8
max_steps = 800
seed = 3
[search]
trials = 1
max_final_loss = 0.3
[search.space]
"dynamics.temperature.shape" = {choices = ["cosine"]}
"dynamics.temperature.start" = {low = 0.01, high = 0.02}
"dynamics.temperature.end" = {low = 0.001, high = 0.002}
"dynamics.temperature.steps" = {low = 100, high = 400}
"""


def test_a_final_loss_constraint_trains_every_replica_to_the_budget():
    raw, spec = load_search(LINEAR, "lin.toml")
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(Objective(raw, spec, "lin.toml", "cpu"), n_trials=1)
    t = study.trials[0]
    loss = t.user_attrs["final_loss"]
    assert loss > 0 and t.constraints == {"final_loss": pytest.approx(loss - 0.3)}
    # The last checkpoint is the budget even if every replica escaped long before.
    assert max(t.intermediate_values) == 800


def test_loss_and_test_error_constraints_belong_to_their_models():
    with pytest.raises(Exception, match="max_final_loss needs the linear trap"):
        load_search(STUDY.replace("max_final_test_error = 0.5", "max_final_loss = 0.5"), "s")
    with pytest.raises(Exception, match="max_final_test_error needs a grokking model"):
        load_search(LINEAR.replace("max_final_loss = 0.3", "max_final_test_error = 0.3"), "s")


@pytest.mark.filterwarnings("ignore:Fixed parameter dynamics.lr:UserWarning")  # lr 0.5 on purpose
def test_final_test_error_is_measured_at_the_budget(raw_spec):
    """Grokking trials train every replica to the budget: lr 0.5 at B 256 escapes (and
    looked feasible when measured at escape) but forgets again by the budget."""
    import copy

    from escapestat.search._search import run_arm
    from escapestat.search._space import build_study
    raw, spec = copy.deepcopy(raw_spec[0]), raw_spec[1]
    raw["dynamics"]["batch_size"], raw["model"]["width"] = 256, 128
    raw["run"].update(replicas=8, max_steps=1000)
    study = build_study(raw, {"dynamics.lr": 0.5}, "tiny.toml")
    at_escape, at_budget = run_arm(study, "cpu"), run_arm(study, "cpu", hold=True)
    # (Escape times may differ a little: replicas that stay draw from the shared stream.)
    assert (at_budget.events == 1).all() and (at_escape.events == 1).all()
    assert at_budget.steps == 1000 > at_escape.steps
    assert at_budget.final_test_error() > at_escape.final_test_error()
    # The objective's constraint uses the value at the budget.
    trial_study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial_study.enqueue_trial({"dynamics.lr": 0.5, "dynamics.weight_decay.shape": "constant",
                               "dynamics.weight_decay.value": 1.0})
    trial_study.optimize(Objective(raw, spec, "tiny.toml", "cpu"), n_trials=1)
    a = trial_study.trials[0].user_attrs
    held = run_arm(build_study(raw, a["overrides"], "tiny.toml"), "cpu", hold=True)
    assert a["final_test_error"] == pytest.approx(held.final_test_error())
    assert a["feasible"] == (held.final_test_error() <= 0.5)
    assert a["constraints"] == {"final_test_error": pytest.approx(
        held.final_test_error() - 0.5)}


def test_a_replica_that_diverges_after_its_escape_has_no_final_accuracy(raw_spec):
    raw, _ = raw_spec
    from escapestat.search._search import run_arm
    from escapestat.search._space import build_study
    blow_up = {"shape": "steps", "values": [0.03, 1e30], "at": [400]}
    study = build_study(raw, {"dynamics.lr": blow_up}, "tiny.toml")
    held = run_arm(study, "cpu", hold=True)
    rows = held.survival
    assert (rows["status"] == ESCAPED).all() and rows["diverged_after_escape"].all()
    assert rows["final_test_accuracy"].isna().all() and held.final_test_error() == 1.0


class _Trial:
    """The parts of a FrozenTrial that ``spent`` reads."""

    def __init__(self, number, state, attrs):
        self.number, self.state, self.user_attrs, self.system_attrs = number, state, attrs, {}


def test_failed_trials_that_are_retried_or_interrupted_do_not_spend_the_budget(monkeypatch):
    from escapestat.search import _search as search
    S = optuna.trial.TrialState
    trials = [_Trial(0, S.COMPLETE, {}), _Trial(1, S.PRUNED, {}),
              _Trial(2, S.FAIL, {}),                    # a worker died: retried as 4
              _Trial(3, S.FAIL, {"interrupted": True}),  # Ctrl-C
              _Trial(4, S.COMPLETE, {}), _Trial(5, S.FAIL, {"fail_reason": "bad"}),
              _Trial(6, S.RUNNING, {})]
    monkeypatch.setattr(search, "retried_from", lambda t: 2 if t.number == 4 else None)
    assert search.spent(trials) == 4  # 0, 1, 4 and 5


def test_a_best_value_at_the_edge_of_its_range_gets_a_note(raw_spec):
    _, spec = raw_spec
    from escapestat.search._search import SearchOutcome, edge_notes
    study = optuna.create_study()
    for lr, wd in ((0.0299, 1.0), (0.02, 1.0)):
        study.enqueue_trial({"dynamics.lr": lr, "dynamics.weight_decay.shape": "constant",
                             "dynamics.weight_decay.value": wd})
    study.optimize(lambda t: 0.0 if t.suggest_float("dynamics.lr", 1e-2, 3e-2, log=True)
                   > 0.025 else 1.0, n_trials=2)
    best = study.best_trial
    notes = edge_notes(spec, SearchOutcome("s", study.trials, best))
    assert len(notes) == 1 and "'dynamics.lr'" not in notes[0]
    assert "dynamics.lr = 0.0299" in notes[0] and "top 5%" in notes[0]
    assert "(log scale)" in notes[0] and "widen the range" in notes[0]
    inner = SearchOutcome("s", study.trials, study.trials[1])
    assert edge_notes(spec, inner) == []  # 0.02 is well inside [0.01, 0.03] on a log scale
    assert edge_notes(spec, SearchOutcome("s", [], None)) == []


def _sigint_as_at_a_terminal() -> None:
    """Give the search SIGINT's default disposition: a suite started in the background of
    a non-interactive shell inherits SIGINT ignored (seen in CI: the Ctrl-C never came)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _a_trial_is_running(db) -> bool:
    """Whether the search writing ``db`` has a RUNNING trial, read through a read-only
    SQLite connection: ``optuna.load_study`` here would create the schema itself and race
    the search that is creating it (seen in CI: the search died, "no trial started")."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=1)) as con:
            rows = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'")
            return rows.fetchone()[0] > 0
    except sqlite3.OperationalError:  # the schema is not there yet, or the file is locked
        return False


def test_ctrl_c_is_one_line_and_marks_the_trial_in_flight_failed(tmp_path):
    """SIGINT mid-trial: exit 130 (128 + SIGINT) with one `error:` line (no Optuna
    traceback), the trial in flight FAIL and flagged ``interrupted``, so that it does not
    spend the budget."""
    import signal
    import subprocess
    import sys
    import time

    from escapestat.search._search import spent

    path, out = tmp_path / "tiny.toml", tmp_path / "out"
    path.write_text(STUDY.replace("max_steps = 600", "max_steps = 200000"), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "escapestat_cli", "optimize", str(path),
                             "--out", str(out), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_at_a_terminal)
    url = f"sqlite:///{out / 'optuna.db'}"
    try:
        deadline = time.monotonic() + 120
        running = False
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            running = _a_trial_is_running(out / "optuna.db")
        if not running:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"no trial started (exit {proc.returncode}); stderr: "
                                 f"{err[-2000:]}")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # seen once under load: keep what it said
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no exit 120 s after SIGINT; stderr: {err[-2000:]}"
                                 f"; stdout: {out[-500:]}") from None
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), err
    trials = optuna.load_study(study_name="tiny-search", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]
    assert trials[0].user_attrs["interrupted"] is True and spent(trials) == 0
