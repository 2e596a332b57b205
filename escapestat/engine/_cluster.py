"""Independent pieces of work on a Dask cluster (``--cluster``): one task each.

``run --cluster``: each unfinished chunk is one Dask task; a worker runs it with
``run_chunk_output`` and returns its output (table and curves), never touching the
client's disk (no mid-chunk checkpoints on workers). The client writes each chunk into
the run directory as it finishes, through the same calls as a local run, so a run can be
resumed whichever way it was started. Chunk seeds depend only on the chunk's index: the
tables are byte-identical to a single process's. Workers report their steps as Dask
events, so one progress bar counts the steps done across the cluster. ``compare
--cluster`` maps its arms the same way (``Session.results``). Dask places the tasks and
reschedules those of a worker that dies; there is no retry loop here. ``distributed`` is
an optional dependency, imported only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from escapestat.config._study import Condition, Study
from escapestat.engine._chunks import Chunk, resolve_device
from escapestat.engine._loop import (
    ChunkDone,
    ChunkOutput,
    ChunkProgress,
    ClusterReady,
    ClusterSteps,
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
#: Seconds between a worker's step reports, and between the client's looks at them.
REPORT_EVERY = 0.5

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

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


def as_cluster(value: ClusterSpec | str | None) -> ClusterSpec | None:
    """A ``--cluster`` value as given to the library: a spec, its text, or None."""
    return parse_cluster(value) if isinstance(value, str) else value


def cluster_device(device: str) -> torch.device:
    """The device a cluster's workers run on: "cuda" is theirs (the client, e.g. a login
    node, needs none, so it is not checked here); "auto" and "cpu" are decided here."""
    return torch.device("cuda") if device == "cuda" else resolve_device(device)


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise EscapestatError(f"--cluster needs Dask's distributed, which is not installed: "
                              f"{PIP_CLUSTER}") from None
    return distributed


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


def _steps_reporter(topic: str | None, chunk: int) -> Progress | None:
    """On a worker: the chunk's steps as Dask events on ``topic``, at most one per
    ``REPORT_EVERY`` seconds (a check can come every few milliseconds)."""
    if topic is None:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # called outside a worker
        return None
    last = [-REPORT_EVERY]

    def report(event) -> None:
        now = time.monotonic()
        if isinstance(event, ChunkProgress) and now - last[0] >= REPORT_EVERY:
            last[0] = now
            worker.log_event(topic, {"chunk": chunk, "step": event.step})

    return report


def chunk_task(study: Study, conds: list[Condition], chunk: Chunk, device: torch.device,
               topic: str | None = None) -> tuple[ChunkOutput, float, dict]:
    """What a worker runs: the chunk, its seconds and what it ran with (versions, and the
    worker's address); its steps go out as events on ``topic``."""
    began = time.perf_counter()
    output = run_chunk_output(study, conds, chunk, device,
                              progress=_steps_reporter(topic, chunk.index),
                              hold=study.run.hold)
    seconds = time.perf_counter() - began
    try:
        from distributed import get_worker

        worker = str(get_worker().address)
    except (ImportError, ValueError):  # called outside a worker
        worker = ""
    return output, seconds, {"versions": versions(), "worker": worker}


class TaskFailed(Exception):
    """A task of ``Session.results`` did not come back: ``how`` is ``raised`` (on its
    worker), ``unreadable`` (its result would not unpickle here) or ``lost`` (the
    scheduler went away); ``why`` is the exception in one line."""

    def __init__(self, item: Any, how: str, why: str):
        super().__init__(f"{item}: {how} ({why})")
        self.item, self.how, self.why = item, how, why


@dataclass
class Session:
    """A client connected to a cluster; ``steps`` holds the last step each running chunk
    reported (filled from the workers' events on ``topic``)."""

    client: Any
    gpu: bool
    topic: str = field(default_factory=lambda: f"escapestat-steps-{uuid.uuid4().hex[:8]}")
    steps: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client.subscribe_topic(self.topic, self._seen)

    def _seen(self, event: tuple[float, dict]) -> None:
        # Dask's IO thread: one dict store (atomic), read by the caller's thread.
        message = event[1]
        self.steps[int(message["chunk"])] = int(message["step"])

    def ready(self, total: int, done: int) -> ClusterReady:
        """The progress event that says where the work goes (the dashboard, if any)."""
        return ClusterReady(str(self.client.scheduler.address), len(self.client.nthreads()),
                            _dashboard(self.client), total, done)

    def results(self, jobs: Mapping[K, tuple[str, Callable[..., R], tuple]],
                tick: Callable[[], None] | None = None) -> Iterator[tuple[K, R]]:
        """Submit each job (its key, function and arguments, with ``GPU: 1`` on CUDA) and
        yield (job, result) as each finishes, calling ``tick`` about every
        ``REPORT_EVERY`` seconds in between; a job that fails is a ``TaskFailed``. The
        jobs still running are cancelled when the caller stops."""
        distributed = _distributed()
        futures = {self.client.submit(fn, *args, key=key, pure=False,
                                      resources={"GPU": 1} if self.gpu else None): item
                   for item, (key, fn, args) in jobs.items()}
        pending = distributed.as_completed(futures)
        try:
            while not pending.is_empty():
                batch = pending.next_batch(block=False)
                if not batch:
                    if tick is not None:
                        tick()
                    time.sleep(REPORT_EVERY)
                for future in batch:
                    yield futures[future], _result(future, futures[future])
        finally:
            with contextlib.suppress(Exception):
                self.client.cancel(list(futures))


def _result(future: Any, item: Any) -> Any:
    try:
        result = future.result()
    except Exception as exc:
        if future.status == "error":
            raise TaskFailed(item, "raised", _why(exc)) from None
        # A closed connection while fetching a finished result (Dask's CommClosedError is
        # an OSError) is the scheduler going away, not a result that would not unpickle.
        if future.status == "finished"  and not isinstance(exc, OSError):
            raise TaskFailed(item, "unreadable", _why(exc)) from None
        raise TaskFailed(item, "lost", _why(exc)) from None  # cancelled: the scheduler gone
    future.release()
    return result


@contextlib.contextmanager
def connect(spec: ClusterSpec, gpu: bool) -> Iterator[Session]:
    """A session on ``spec``'s cluster (started here for ``local``), with Dask's own log
    lines kept off the terminal; a CUDA study needs workers that declare a GPU."""
    with _quiet(), _client(spec, gpu) as client:
        if gpu:
            _check_gpus(client, spec)
        yield Session(client, gpu)


def run_on_cluster(spec: ClusterSpec, study: Study, conds: list[Condition],
                   chunks: list[Chunk], pending: list[Chunk], device: torch.device,
                   write: Callable[[Chunk, ChunkOutput, float, dict, int | None, str | None],
                                   None],
                   progress: Progress | None, out: Path) -> None:
    """Run the ``pending`` chunks of ``chunks`` as Dask tasks; ``write`` each one here as
    it finishes. A chunk that raised, or the scheduler lost, is one EscapestatError;
    what was written stays."""
    if not pending:  # every chunk finished before: nothing for a cluster to do
        return
    total, done = len(chunks), len(chunks) - len(pending)
    budget = study.run.max_steps
    with connect(spec, device.type == "cuda") as session:
        token = uuid.uuid4().hex[:8]
        jobs = {chunk.index: (f"escapestat-{study.config_hash()[:12]}-chunk-"
                              f"{chunk.index:05d}-{token}", chunk_task,
                              (study, conds, chunk, device, session.topic))
                for chunk in pending}
        written: set[int] = set()

        def steps() -> int:
            running = sum(min(s, budget) for c, s in list(session.steps.items())
                          if c not in written)
            return (done + len(written)) * budget + running

        def tick() -> None:
            if progress is not None:
                progress(ClusterSteps(steps(), total * budget, done + len(written), total))

        if progress is not None:
            progress(session.ready(total, done))
            tick()
        by_index = {chunk.index: chunk for chunk in pending}
        try:
            for index, (output, seconds, ran) in session.results(jobs, tick):
                chunk = by_index[index]
                write(chunk, output, seconds, ran["versions"], None, ran["worker"])
                written.add(chunk.index)
                if progress is not None:
                    progress(ChunkDone(chunk.index, done + len(written), total, steps(),
                                       total * budget))
        except TaskFailed as failed:
            finished = done + len(written)
            label = f"chunk {failed.item + 1}/{total}"
            if failed.how == "raised":
                raise EscapestatError(
                    f"{label} failed on a Dask worker ({failed.why}); {finished} of {total} "
                    f"finished chunks are kept in {out}: fix the cause and rerun with "
                    f"--resume") from None
            if failed.how == "unreadable":
                raise EscapestatError(
                    f"{label} finished on a Dask worker but its result could not be read "
                    f"here ({failed.why}); {finished} of {total} finished chunks are kept "
                    f"in {out}") from None
            raise EscapestatError(
                f"lost the Dask scheduler at {spec}; {finished} of {total} chunks had "
                f"finished and are kept in {out}: rerun with --resume (with or without "
                f"--cluster) to finish the rest") from None
