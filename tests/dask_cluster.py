"""A real Dask cluster on loopback for tests: ``dask scheduler`` and ``dask worker``
processes on 127.0.0.1 with random ports, stopped by the ``cluster`` fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

DASK = Path(sys.executable).with_name("dask")
TESTS = Path(__file__).resolve().parent
#: The test folders on the workers' path: a test's task function is pickled by reference.
PATHS = [TESTS, *(p for p in sorted(TESTS.iterdir()) if p.is_dir() and p.name != "studies")]


class Cluster:
    """A scheduler and workers as processes on loopback; stopped by the fixture."""

    def __init__(self, where: Path):
        self.where, self.workers = where, []
        self.file = where / "scheduler.json"
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--no-dashboard", "--scheduler-file", self.file)
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert self.scheduler.poll() is None, "dask scheduler exited"
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, *args) -> subprocess.Popen:
        log = open(self.where / f"{args[0]}-{len(self.workers)}.log", "wb")  # noqa: SIM115
        path = os.pathsep.join([*map(str, PATHS), os.environ.get("PYTHONPATH", "")])
        return subprocess.Popen([str(DASK), *map(str, args)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.where,
                                env={**os.environ, "PYTHONPATH": path})

    def add_workers(self, n: int) -> None:
        from distributed import Client

        for i in range(n):
            self.workers.append(self._start(
                "worker", "--scheduler-file", self.file, "--host", "127.0.0.1",
                "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                "--death-timeout", "30"))
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=60)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.add_workers(2)
        yield c
    finally:
        c.stop()
