"""The real optuna-dashboard shows a search's feasibility (skipped without the package).

optuna 5 writes a trial's constraints as system attributes ``constraints:NAME``;
optuna-dashboard 0.21 reads the older list attribute and shows every trial's
constraints as empty. The search also writes ``constraints`` and ``feasible`` as user
attributes, which the dashboard shows: this starts the dashboard on loopback and reads
its JSON API (``/api/studies``, ``/api/studies/<id>``) as its page does.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from testdata import TINY_SEARCH as STUDY  # a grokking search, max_final_test_error

dashboard = pytest.importorskip("optuna_dashboard")

from escapestat.search._optimize import optimize  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _command() -> list[str]:
    """The ``optuna-dashboard`` command on this interpreter: its console entry point run
    by ``sys.executable``, so neither PATH nor the scripts folder matters."""
    points = importlib.metadata.entry_points(group="console_scripts", name="optuna-dashboard")
    point = next(iter(points), None)
    module, _, func = (point.value if point else "optuna_dashboard._cli:main").partition(":")
    return [sys.executable, "-c", f"from {module} import {func} as main; main()"]


def _serve(url: str, tmp_path) -> dict[str, list[dict]]:
    """Start the dashboard on 127.0.0.1, wait (≤ 90 s, for a loaded CI machine) until it
    answers, and return each study's trials as it serves them, by study name."""
    port = _free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    server = subprocess.Popen([*_command(), url, "--host", "127.0.0.1", "--port", str(port),
                               "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline, studies = time.monotonic() + 90, None
        while studies is None and time.monotonic() < deadline:
            try:
                studies = _get(f"{base}/studies")["study_summaries"]
            except OSError:  # not listening yet (URLError, a refused connection)
                assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.2)
        assert studies is not None, "the dashboard did not answer in 90 s"
        return {s["study_name"]: _get(f"{base}/studies/{s['study_id']}")["trials"]
                for s in studies}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def _tiny(limit: float) -> str:
    """test_search's tiny study, 60 steps (test error ≈ 0.99: no time to generalise) and
    the final test error bounded by ``limit``."""
    text = STUDY.replace("max_steps = 600", "max_steps = 60").replace(
        "max_final_test_error = 0.5", f"max_final_test_error = {limit}")
    assert "max_steps = 60\n" in text and f"max_final_test_error = {limit}\n" in text
    return text


def test_the_dashboard_shows_each_trials_feasibility(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    # A bound of 1 every trial meets (error − 1 ≤ 0); one of 0.01 none does in 60 steps.
    for name, limit in (("tiny-feasible", 1.0), ("tiny-infeasible", 0.01)):
        path = tmp_path / f"{name}.toml"
        path.write_text(_tiny(limit), encoding="utf-8")
        optimize(path, tmp_path / name, storage_url=url, study_name=name, trials=2,
                 device="cpu", compare=False)
    served = _serve(url, tmp_path)
    assert {"tiny-feasible", "tiny-infeasible"} <= set(served)
    verdicts: dict[str, set[bool]] = {}
    for name, trials in served.items():
        truth = {t.number: t for t in optuna.load_study(study_name=name, storage=url).trials}
        assert sorted(t["number"] for t in trials) == sorted(truth)
        assert any(t["state"] == "Complete" for t in trials)
        for trial in trials:
            own = truth[trial["number"]].constraints
            if trial["state"] == "Complete":
                assert own, f"{name}: the search set no constraint"
            if not own:  # a trial pruned before its first check has none
                continue
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert json.loads(attrs["constraints"]) == pytest.approx(own)
            feasible = all(v <= 0 for v in own.values())
            assert attrs["feasible"] == str(feasible)  # served as "True" / "False"
            verdicts.setdefault(name.removesuffix("-constant"), set()).add(feasible)
            # What motivates the attributes: 0.21 serves system_attrs["constraints"]
            # (optuna 4's list), absent under optuna 5, so its own field is empty. A later
            # dashboard may read optuna 5's: then it would be the values, in order.
            if dashboard.__version__.startswith("0.21."):
                assert trial["constraints"] == []
            else:
                assert trial["constraints"] in ([], pytest.approx(list(own.values())))
    # Both verdicts served, each where its bound puts it (and the constant-only
    # searches alike).
    assert verdicts == {"tiny-feasible": {True}, "tiny-infeasible": {False}}
