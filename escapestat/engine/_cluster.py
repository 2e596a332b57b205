"""A run's chunks on a Dask cluster (``escapestat run --cluster``): one task per chunk.

Each unfinished chunk is one Dask task; a worker runs it with ``run_chunk_output`` and
returns its output (table and curves), never touching the client's disk (no mid-chunk
checkpoints on workers). The client writes each chunk into the run directory as it
finishes, through the same calls as a local run, so a run can be resumed whichever way it
was started. Chunk seeds depend only on the chunk's index: the tables are byte-identical
to a single process's. Dask places the tasks and reschedules those of a worker that dies;
there is no retry loop here. ``distributed`` is an optional dependency, imported only
when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from escapestat.config._study import Condition, Study
from escapestat.engine._chunks import Chunk
from escapestat.engine._loop import (
    ChunkDone,
    ChunkOutput,
    ClusterReady,
    Progress,
    run_chunk_output,
)
from escapestat.engine._storage import versions
from escapestat.errors import EscapestatError

#: Worker processes of ``--cluster local`` without a count.
LOCAL_WORKERS = 2
#: What to install for ``--cluster``.
PIP_CLUSTER = 'pip install "escapestat[cluster]"'
#: Seconds to reach a scheduler (and to get it back after losing it) before giving up.
CONNECT_TIMEOUT = 20.0

_LOCAL = re.compile(r"local(?::(\d+))?")
_ADDRESS = re.compile(r"(tcp|tls)://[^\s/:]+:\d+")


@dataclass(frozen=True)
class ClusterSpec:
    """Where chunks run: a ``LocalCluster`` of ``workers`` processes (``address`` None),
    or the Dask scheduler at ``address``."""

    address: str | None = None
    workers: int = LOCAL_WORKERS

    def __str__(self) -> str:
        return self.address or f"local:{self.workers}"


def parse_cluster(text: str) -> ClusterSpec:
    """``local``, ``local:N`` or ``tcp://HOST:PORT``; anything else is an error."""
    text = text.strip()
    local = _LOCAL.fullmatch(text)
    if local:
        workers = int(local.group(1)) if local.group(1) else LOCAL_WORKERS
        if workers < 1:
            raise EscapestatError(f"--cluster {text}: a local cluster needs at least 1 worker")
        return ClusterSpec(None, workers)
    if _ADDRESS.fullmatch(text):
        return ClusterSpec(text)
    raise EscapestatError(f"--cluster {text!r}: use local, local:N (N worker processes) or "
                          f"tcp://HOST:PORT (a running Dask scheduler)")


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise EscapestatError(f"--cluster needs Dask's distributed, which is not installed: "
                              f"{PIP_CLUSTER}") from None
    return distributed


def chunk_task(study: Study, conds: list[Condition], chunk: Chunk,
               device: torch.device) -> tuple[ChunkOutput, float, dict]:
    """What a worker runs: the chunk, its seconds and what it ran with (versions, and the
    worker's address)."""
    began = time.perf_counter()
    output = run_chunk_output(study, conds, chunk, device, hold=study.run.hold)
    seconds = time.perf_counter() - began
    try:
        from distributed import get_worker

        worker = str(get_worker().address)
    except (ImportError, ValueError):  # called outside a worker
        worker = ""
    return output, seconds, {"versions": versions(), "worker": worker}


@contextlib.contextmanager
def _client(spec: ClusterSpec, gpu: bool) -> Iterator[Any]:
    """A client of the scheduler at ``spec.address``, or of a local cluster started here
    (and stopped afterwards)."""
    distributed = _distributed()
    if spec.address is None:
        cluster = distributed.LocalCluster(
            n_workers=spec.workers, threads_per_worker=1, processes=True,
            dashboard_address=":0", silence_logs=logging.CRITICAL,
            resources={"GPU": 1} if gpu else None)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = distributed.Client(spec.address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise EscapestatError(f"cannot reach the Dask scheduler at {spec.address} "
                              f"({_why(exc)})") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Dask's own log lines (a lost connection's tracebacks) stay off the terminal while
    a run uses it: what went wrong is said once, as the run's error."""
    names = ["distributed", *(n for n in logging.root.manager.loggerDict
                              if n.startswith("distributed."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dashboard(client: Any) -> str | None:
    try:
        info = client.scheduler_info()
        return client.dashboard_link if "dashboard" in info.get("services", {}) else None
    except Exception:
        return None


def _check_gpus(client: Any, spec: ClusterSpec) -> None:
    """A CUDA study's tasks ask for a GPU: refuse a cluster whose workers declare none
    (they would wait forever)."""
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise EscapestatError(
            f"the study runs on CUDA, one chunk per GPU, but no worker of {spec} declares a "
            f"GPU resource; start the workers with --resources GPU=1 (or "
            f"LocalCUDACluster(resources={{'GPU': 1}})), or run with --device cpu")


def run_on_cluster(spec: ClusterSpec, study: Study, conds: list[Condition],
                   chunks: list[Chunk], pending: list[Chunk], device: torch.device,
                   write: Callable[[Chunk, ChunkOutput, float, dict, int | None, str | None],
                                   None],
                   progress: Progress | None, out: Path) -> None:
    """Run the ``pending`` chunks of ``chunks`` as Dask tasks; ``write`` each one here as
    it finishes. A chunk that raised, or the scheduler lost, is one EscapestatError;
    what was written stays."""
    distributed = _distributed()
    if not pending:  # every chunk finished before: nothing for a cluster to do
        return
    gpu = device.type == "cuda"
    total, done = len(chunks), len(chunks) - len(pending)
    with _quiet(), _client(spec, gpu) as client:
        if gpu:
            _check_gpus(client, spec)
        if progress is not None:
            progress(ClusterReady(str(client.scheduler.address), len(client.nthreads()),
                                  _dashboard(client), total, done))
        token = uuid.uuid4().hex[:8]
        futures = {
            client.submit(chunk_task, study, conds, chunk, device, pure=False,
                          key=f"escapestat-{study.config_hash()[:12]}-chunk-"
                              f"{chunk.index:05d}-{token}",
                          resources={"GPU": 1} if gpu else None): chunk
            for chunk in pending}
        try:
            for future in distributed.as_completed(futures):
                chunk = futures[future]
                try:
                    output, seconds, ran = future.result()
                except Exception as exc:
                    if future.status == "error":  # the chunk raised on its worker
                        raise EscapestatError(
                            f"chunk {chunk.index + 1}/{total} failed on a Dask worker "
                            f"({_why(exc)}); {done} of {total} finished chunks are kept "
                            f"in {out}: fix the cause and rerun with --resume") from None
                    if future.status == "finished":  # a result that won't unpickle here
                        raise EscapestatError(
                            f"chunk {chunk.index + 1}/{total} finished on a Dask worker but "
                            f"its result could not be read here ({_why(exc)}); {done} of "
                            f"{total} finished chunks are kept in {out}") from None
                    # cancelled, or the connection broke: the scheduler is gone
                    raise EscapestatError(
                        f"lost the Dask scheduler at {spec}; {done} of {total} chunks had "
                        f"finished and are kept in {out}: rerun with --resume (with or "
                        f"without --cluster) to finish the rest") from None
                future.release()
                write(chunk, output, seconds, ran["versions"], None, ran["worker"])
                done += 1
                if progress is not None:
                    progress(ChunkDone(chunk.index, done, total))
        finally:
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
