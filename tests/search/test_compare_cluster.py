"""`compare --cluster`: a search's arms as tasks on a real Dask cluster on loopback.

Each arm is one task; its seed does not depend on the worker, so every arm's replicas
equal those of a compare in one process, and so does every number but the wall-clock
ones. An arm that raises, or a lost scheduler, is one error line, with nothing written.
"""

from __future__ import annotations

import json
import signal

import pytest
from testdata import TINY_SEARCH

pytest.importorskip("distributed")

from escapestat.errors import EscapestatError  # noqa: E402
from escapestat.search import _compare  # noqa: E402
from escapestat.search._optimize import compare_searches  # noqa: E402

#: The compare.json fields measured in wall-clock time (they differ between any two runs).
WALL = ("seconds", "wall_ratio", "time_ratio")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished tiny search, and the compare of its arms in this process."""
    import optuna

    from escapestat.search._optimize import optimize

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    where = tmp_path_factory.mktemp("search")
    path = where / "tiny.toml"
    path.write_text(TINY_SEARCH, encoding="utf-8")
    optimize(path, where / "out", device="cpu")
    return path, where / "out"


def _without_wall(out) -> list[dict]:
    rows = json.loads((out / "compare.json").read_text())
    return [{k: v for k, v in r.items() if not k.startswith(WALL)} for r in rows]


def _copy_search(searched, tmp_path):
    path, out = searched
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "optuna.db").write_bytes((out / "optuna.db").read_bytes())
    return path, tmp_path / "out"


def test_two_workers_same_arms(cluster, searched, tmp_path, cli):
    path, here = searched
    _, out = _copy_search(searched, tmp_path)
    code, stdout, stderr = cli("compare", path, "--out", out, "--device", "cpu",
                               "--cluster", cluster.address, "--json")
    assert code == 0, stderr
    assert f"dask: {cluster.address}, 2 workers" in stderr
    assert (out / "compare_arms.csv").read_bytes() == (here / "compare_arms.csv").read_bytes()
    assert _without_wall(out) == _without_wall(here)
    arms = {r["arm"] for r in json.loads(stdout)["compare"]}
    assert {"default", "best-constant"} <= arms
    assert sum(line.startswith("compare ") for line in stderr.splitlines()) == len(arms)


def test_arm_raising_on_a_worker_is_one_error_line(cluster, searched, tmp_path, cli,
                                                   monkeypatch):
    path, _ = searched
    _, out = _copy_search(searched, tmp_path)
    monkeypatch.setattr(_compare, "run_arm", _raises)
    code, stdout, stderr = cli("compare", path, "--out", out, "--device", "cpu",
                               "--cluster", cluster.address)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and stdout == "" and len(errors) == 1, stderr
    assert "failed on a Dask worker (RuntimeError: CUDA error: out of memory)" in errors[0]
    assert "nothing was written" in errors[0] and "Traceback" not in stderr
    assert not (out / "compare.csv").exists()


def _raises(study, device, watch, hold):
    raise RuntimeError("CUDA error: out of memory")


def test_lost_scheduler_is_one_error(cluster, searched, tmp_path):
    """The scheduler killed once the cluster is reached: one error, nothing written."""
    path, _ = searched
    _, out = _copy_search(searched, tmp_path)

    def kill(_event):
        cluster.scheduler.send_signal(signal.SIGKILL)

    with pytest.raises(EscapestatError, match="lost the Dask scheduler") as err:
        compare_searches(path, out, device="cpu", cluster=cluster.address, on_cluster=kill)
    assert "rerun compare" in str(err.value)
    assert not (out / "compare.csv").exists() and not (out / "compare_arms.csv").exists()


@pytest.mark.parametrize("command", ["compare", "optimize"])
def test_bad_cluster_is_a_usage_error(searched, tmp_path, cli, command):
    path, _ = searched
    code, stdout, stderr = cli(command, path, "--out", tmp_path / "o", "--cluster", "lokal")
    assert code == 2 and stdout == "" and stderr.startswith("error: --cluster"), stderr
    assert not (tmp_path / "o").exists()
