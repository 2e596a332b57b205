"""The real optuna-dashboard shows a search's feasibility (skipped without the package).

optuna 5 writes a trial's constraints as system attributes ``constraints:NAME``;
optuna-dashboard 0.21 reads the older list attribute and shows every trial's
constraints as empty. The search also writes ``constraints`` and ``feasible`` as user
attributes, which the dashboard shows: this starts the dashboard on loopback and reads
its JSON API as its page does.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from test_search import STUDY

pytest.importorskip("optuna_dashboard")

from escapestat.optimize import optimize  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_the_dashboard_shows_each_trials_feasibility(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY, encoding="utf-8")
    result = optimize(path, tmp_path / "out", device="cpu", compare=False)
    url = result.storage
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert exe, "optuna-dashboard is installed but its command is not beside python"
    port = _free_port()
    server = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline, studies = time.monotonic() + 30, None
        while studies is None and time.monotonic() < deadline:
            try:
                studies = _get(f"{base}/studies")["study_summaries"]
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.2)
        assert studies is not None, "the dashboard did not answer in 30 s"
        ids = {s["study_name"]: s["study_id"] for s in studies}
        served = _get(f"{base}/studies/{ids['tiny-search']}")["trials"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    truth = {t.number: t for t in optuna.load_study(study_name="tiny-search",
                                                    storage=url).trials}
    complete = [t for t in served if t["state"] == "Complete"]
    assert complete
    for trial in complete:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        own = truth[trial["number"]].constraints
        assert own, "the search set no constraint"
        assert json.loads(attrs["constraints"]) == pytest.approx(own)
        assert attrs["feasible"] == str(all(v <= 0 for v in own.values()))  # "True"/"False"
        # What motivates the attributes: the dashboard's own field stays empty.
        assert trial["constraints"] == []
