"""`run --cluster`: a run's chunks as tasks on a real Dask cluster on loopback.

A scheduler and two workers are started as processes (``dask scheduler``, ``dask worker``)
on 127.0.0.1 with random ports; the tables of a run across them must equal, byte for byte,
the single-process run's, also when a worker is killed mid-run; a lost scheduler leaves
the finished chunks, and ``--resume`` (here without a cluster) finishes the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testdata import FAST

pytest.importorskip("distributed")

from escapestat.config._study import load_study  # noqa: E402
from escapestat.engine import _cluster  # noqa: E402
from escapestat.engine._loop import ChunkDone  # noqa: E402
from escapestat.engine._trials import run_study  # noqa: E402
from escapestat.errors import EscapestatError  # noqa: E402

#: 2 conditions × 24 replicas in chunks of 8: six chunks of a fraction of a second each.
STUDY = FAST.replace("chunk_replicas = 20", "chunk_replicas = 8")
TABLES = ("escapes.csv", "replicas.csv")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "fast.toml"
    path.write_text(STUDY)
    return path


@pytest.fixture(scope="module")
def reference(study_file, tmp_path_factory):
    """The single-process run's tables (bytes)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_study(load_study(study_file), out, device="cpu", study_text=STUDY)
    return {name: (out / name).read_bytes() for name in TABLES}


def tables(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in TABLES}


def test_two_workers_same_tables(cluster, study_file, reference, tmp_path, cli):
    out = tmp_path / "run"
    code, _, stderr = cli("run", study_file, "--out", out, "--device", "cpu",
                          "--cluster", cluster.address)
    assert code == 0, stderr
    assert tables(out) == reference
    assert f"dask: {cluster.address}, 2 workers" in stderr and "6/6 chunks" in stderr
    infos = [json.loads(p.read_text()) for p in sorted((out / "chunks").glob("*.json"))]
    assert len(infos) == 6 and all(i["worker"].startswith("tcp://127.0.0.1:") for i in infos)
    assert all({"device", "dtype", "versions", "seconds"} <= set(i) for i in infos)


def test_killed_worker_same_tables(cluster, study_file, reference, tmp_path):
    """SIGKILL one worker while chunks run: Dask reruns its chunk on the other one."""
    killed = []

    def progress(event):
        if isinstance(event, ChunkDone) and not killed:
            cluster.workers[0].send_signal(signal.SIGKILL)
            killed.append(event.done)

    out = tmp_path / "run"
    run_study(load_study(study_file), out, device="cpu", study_text=STUDY,
              progress=progress, cluster=cluster.address)
    assert killed and killed[0] < 6 and cluster.workers[0].wait(timeout=10) == -signal.SIGKILL
    assert tables(out) == reference


def test_lost_scheduler_keeps_chunks_then_resume(cluster, study_file, reference, tmp_path):
    """The scheduler killed after the first chunk: one error, finished chunks kept; a
    resume in this process (no cluster) finishes the run with the same tables."""
    def progress(event):
        if isinstance(event, ChunkDone) and cluster.scheduler.poll() is None:
            cluster.scheduler.send_signal(signal.SIGKILL)

    out = tmp_path / "run"
    study = load_study(study_file)
    began = time.monotonic()
    with pytest.raises(EscapestatError, match="lost the Dask scheduler") as err:
        run_study(study, out, device="cpu", study_text=STUDY, progress=progress,
                  cluster=cluster.address)
    assert time.monotonic() - began < 30 and "--resume" in str(err.value)
    done = sorted((out / "chunks").glob("chunk-*.csv"))
    assert 1 <= len(done) < 6 and not (out / "escapes.csv").exists()
    result = run_study(study, out, device="cpu", resume=True, study_text=STUDY)
    assert result.resumed == f"read back {len(done)} of 6 finished chunks"
    assert tables(out) == reference


def _fails_on_chunk_3(study, conds, chunk, device, topic):
    if chunk.index == 2:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return _cluster.chunk_task(study, conds, chunk, device, topic)


def test_chunk_raising_on_a_worker_is_one_error_line(cluster, study_file, tmp_path, cli,
                                                     monkeypatch):
    monkeypatch.setattr(_cluster, "chunk_task", _fails_on_chunk_3)
    out = tmp_path / "run"
    code, stdout, stderr = cli("run", study_file, "--out", out, "--device", "cpu",
                               "--cluster", cluster.address)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and stdout == "" and len(errors) == 1, stderr
    assert "chunk 3/6 failed on a Dask worker (RuntimeError: CUDA error" in errors[0]
    assert "Traceback" not in stderr
    assert not (out / "chunks" / "chunk-00002.csv").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"


def _as_if_stopped(out, *chunks: str) -> None:
    """A complete run directory made to look stopped before its tables (and ``chunks``)."""
    for name in (*TABLES, *chunks):
        (out / name).unlink()
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "status": "running"}))


def test_local_cluster_resumes_a_local_run(study_file, reference, tmp_path, cli):
    """``--cluster local:2`` finishes a run begun in one process (chunks 2, 4, 6 left)."""
    out = tmp_path / "run"
    assert cli("run", study_file, "--out", out, "--device", "cpu")[0] == 0
    _as_if_stopped(out, "chunks/chunk-00001.csv", "chunks/chunk-00003.csv",
                   "chunks/chunk-00005.csv")
    code, _, stderr = cli("run", study_file, "--out", out, "--device", "cpu", "--resume",
                          "--cluster", "local:2")
    assert code == 0, stderr
    assert "2 workers" in stderr and "resumed: read back 3 of 6 finished chunks" in stderr
    assert tables(out) == reference
    assert "worker" in json.loads((out / "chunks" / "chunk-00001.json").read_text())
    assert "worker" not in json.loads((out / "chunks" / "chunk-00000.json").read_text())


@pytest.mark.parametrize("value", ["foo", "local:0", "local:x", "tcp://host", "http://h:1"])
def test_bad_cluster_is_a_usage_error(study_file, tmp_path, cli, value):
    code, stdout, stderr = cli("run", study_file, "--out", tmp_path / "r", "--cluster", value)
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: --cluster")
    assert not (tmp_path / "r").exists()


def test_without_distributed_one_line(study_file, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    code, _, stderr = cli("run", study_file, "--out", tmp_path / "r", "--device", "cpu",
                          "--cluster", "local:2")
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert 'pip install "escapestat[cluster]"' in stderr


def test_unreachable_scheduler_one_line(study_file, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(_cluster, "CONNECT_TIMEOUT", 1.0)
    code, _, stderr = cli("run", study_file, "--out", tmp_path / "r", "--device", "cpu",
                          "--cluster", "tcp://127.0.0.1:9")
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in stderr


def test_parse_cluster():
    assert _cluster.parse_cluster("local") == _cluster.ClusterSpec(None, 2)
    assert _cluster.parse_cluster("local:3") == _cluster.ClusterSpec(None, 3)
    assert str(_cluster.parse_cluster("tcp://10.0.0.5:8786")) == "tcp://10.0.0.5:8786"


def test_fit_does_not_import_distributed():
    probe = ("import sys\nfrom escapestat_cli.app import main\n"
             "try:\n    main()\nfinally:\n"
             "    print('DISTRIBUTED', 'distributed' in sys.modules, file=sys.stderr)\n")
    example = HERE.parents[1] / "studies" / "examples" / "escapes.csv"
    done = subprocess.run([sys.executable, "-c", probe, "fit", str(example), "--group-col",
                           "temperature"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "100"})
    assert "DISTRIBUTED False" in done.stderr, done.stderr[-400:]



def test_nothing_left_needs_no_cluster(study_file, reference, tmp_path, cli):
    """Every chunk finished (the tables not yet written): --resume completes without
    reaching the scheduler."""
    out = tmp_path / "run"
    assert cli("run", study_file, "--out", out, "--device", "cpu")[0] == 0
    _as_if_stopped(out)
    code, _, stderr = cli("run", study_file, "--out", out, "--device", "cpu", "--resume",
                          "--cluster", "tcp://127.0.0.1:9")
    assert code == 0, stderr
    assert tables(out) == reference and "dask:" not in stderr


def test_one_bar_counts_steps_across_workers(cluster, tmp_path):
    """Workers report their steps as Dask events: the client sees steps of chunks still
    running, never more than the budget of all chunks, and all of them at the end."""
    from escapestat.engine._loop import ClusterSteps

    # 4 chunks of 12 replicas, barriers far above T: every chunk runs its whole budget
    # (about 1.7 s on one core), long enough for the client to see it part-way.
    slow = (STUDY.replace("chunk_replicas = 8", "chunk_replicas = 12")
            .replace("[1.5, 2.5]", "[8.0, 9.0]").replace("max_steps = 3000", "max_steps = 10000"))
    path = tmp_path / "slow.toml"
    path.write_text(slow)
    events = []
    run_study(load_study(path), tmp_path / "run", device="cpu", study_text=slow,
              progress=events.append, cluster=cluster.address)
    steps = [e for e in events if isinstance(e, ClusterSteps | ChunkDone)]
    assert all(e.total_steps == 4 * 10000 and 0 <= e.steps <= e.total_steps for e in steps)
    assert any(isinstance(e, ClusterSteps) and e.steps % 10000 for e in steps), steps
    assert isinstance(steps[-1], ChunkDone) and steps[-1].steps == 4 * 10000
    assert [e.done for e in events if isinstance(e, ChunkDone)] == [1, 2, 3, 4]


class _Finished:
    """A future the scheduler marked finished whose result then fails to arrive."""

    status = "finished"

    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_a_closed_connection_fetching_a_result_is_the_scheduler_lost():
    """Killing the scheduler mid-gather surfaces as CommClosedError on a future already
    marked finished (seen in CI): that is the scheduler lost, not an unreadable result."""
    from distributed.comm.core import CommClosedError

    with pytest.raises(_cluster.TaskFailed) as lost:
        _cluster._result(_Finished(CommClosedError("connection reset")), 3)
    assert lost.value.how == "lost"
    with pytest.raises(_cluster.TaskFailed) as unreadable:
        _cluster._result(_Finished(ModuleNotFoundError("no module named 'x'")), 3)
    assert unreadable.value.how == "unreadable"
