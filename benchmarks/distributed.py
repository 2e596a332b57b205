"""Throughput of `escapestat run` in one process against `--cluster local:N`, and the cost
of one chunk as a Dask task.

Why: a study's chunks are independent, so they can run as Dask tasks on many
processes, GPUs or machines. On one small machine the question is what that costs: the
start of a local cluster, and a per-chunk overhead (submitting the task, pickling the study
and the chunk's table and curves back, writing it here).

What, on a study (default: the quickstart ladder with 64-replica chunks and a shorter
budget; ``--study`` for another), each in a fresh run directory:

1. one process: ``run_study`` as ``escapestat run`` runs it;
2. ``local:N``: the same through a ``LocalCluster`` started for the run (start included);
3. the same on a cluster already running (start excluded);
4. overhead per chunk: a study of many tiny chunks (10 steps, 1 replica each) in one
   process and on the running cluster; (cluster − one process) / chunks · workers.

Replica-steps are the steps the replicas trained (the sum of their durations in
replicas.csv). The tables of every run are compared byte for byte with the
one-process run's. The last line is one JSON object.

    python benchmarks/distributed.py [--workers N] [--study FILE] [--chunk-replicas N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# This file's name is the package's: drop its folder from the path so that
# ``import distributed`` finds Dask's, not this script.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import pandas as pd  # noqa: E402

from escapestat.config._study import load_study  # noqa: E402
from escapestat.engine._cluster import ClusterSpec  # noqa: E402
from escapestat.engine._trials import run_study  # noqa: E402

ROOT = HERE.parent
TABLES = ("escapes.csv", "replicas.csv")


def study_file(where: Path, text: str, chunk_replicas: int, name: str) -> Path:
    """The study with ``[run] chunk_replicas`` set (the [run] table ends the file)."""
    path = where / f"{name}.toml"
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("chunk_replicas")]
    body = "\n".join(lines)
    tail = body[body.rindex("["):]
    assert tail.startswith("[run]"), "the benchmark expects [run] to be the last table"
    path.write_text(body + f"\nchunk_replicas = {chunk_replicas}\n", encoding="utf-8")
    return path


def timed(study, out: Path, text: str, **kw) -> tuple[float, object]:
    began = time.perf_counter()
    result = run_study(study, out, device="cpu", study_text=text, checkpoint_every=None, **kw)
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "quickstart.toml")
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=8000)
    parser.add_argument("--chunk-replicas", type=int, default=64)
    parser.add_argument("--tiny-chunks", type=int, default=48)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        text = args.study.read_text(encoding="utf-8")
        path = study_file(where, text, args.chunk_replicas, "bench")
        study = load_study(path).with_overrides(replicas=args.replicas,
                                                max_steps=args.max_steps)
        one_s, one = timed(study, where / "one", path.read_text())
        reference = {n: (where / "one" / n).read_bytes() for n in TABLES}
        steps = float(pd.to_numeric(one.replicas["duration"]).sum())
        chunks = one.meta["chunks_total"]
        spec = ClusterSpec(None, args.workers)
        local_s, _ = timed(study, where / "local", path.read_text(), cluster=spec)
        same = {n: (where / "local" / n).read_bytes() for n in TABLES} == reference

        tiny_path = study_file(where, text, 1, "tiny")
        tiny = load_study(tiny_path).with_overrides(
            replicas=max(1, args.tiny_chunks // len(one.conditions)), max_steps=10)
        tiny_one_s, tiny_one = timed(tiny, where / "tiny-one", tiny_path.read_text())
        tiny_chunks = tiny_one.meta["chunks_total"]
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster) as client:
            address = ClusterSpec(cluster.scheduler_address)
            client.run(lambda: __import__("escapestat.engine._trials"))  # warm the imports
            warm_s, _ = timed(study, where / "warm", path.read_text(), cluster=address)
            same &= {n: (where / "warm" / n).read_bytes() for n in TABLES} == reference
            tiny_cl_s, _ = timed(tiny, where / "tiny-cl", tiny_path.read_text(),
                                 cluster=address)
    per_chunk = (tiny_cl_s - tiny_one_s / args.workers) / tiny_chunks * args.workers
    figures = {
        "study": args.study.name, "replicas": args.replicas * len(one.conditions),
        "max_steps": args.max_steps, "chunks": chunks, "workers": args.workers,
        "cpus": os.cpu_count(), "replica_steps": steps,
        "one_process_s": round(one_s, 2), "local_cluster_s": round(local_s, 2),
        "running_cluster_s": round(warm_s, 2),
        "one_process_replica_steps_per_s": round(steps / one_s),
        "local_cluster_replica_steps_per_s": round(steps / local_s),
        "running_cluster_replica_steps_per_s": round(steps / warm_s),
        "speedup_with_start": round(one_s / local_s, 2),
        "speedup_running": round(one_s / warm_s, 2),
        "tiny_chunks": tiny_chunks, "tiny_one_process_s": round(tiny_one_s, 2),
        "tiny_cluster_s": round(tiny_cl_s, 2),
        "overhead_per_chunk_s": round(per_chunk, 3),
        "tables_identical": same,
    }
    print(f"{chunks} chunks of ≤ {args.chunk_replicas} replicas, {steps:,.0f} replica-steps",
          file=sys.stderr)
    print(f"one process      {one_s:6.1f} s  {steps / one_s:12,.0f} replica-steps/s",
          file=sys.stderr)
    print(f"local:{args.workers} (start)  {local_s:6.1f} s  {steps / local_s:12,.0f} "
          f"replica-steps/s", file=sys.stderr)
    print(f"local:{args.workers} running  {warm_s:6.1f} s  {steps / warm_s:12,.0f} "
          f"replica-steps/s", file=sys.stderr)
    print(f"per-chunk overhead ≈ {per_chunk * 1000:.0f} ms ({tiny_chunks} tiny chunks: "
          f"{tiny_one_s:.2f} s in one process, {tiny_cl_s:.2f} s on the cluster); tables "
          f"identical: {same}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
