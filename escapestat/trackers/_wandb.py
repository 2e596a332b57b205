"""W&B run directories read offline: the ``run-*.wandb`` transaction log of each run.

A W&B run (``wandb.init(mode="offline")``, or an online run's local copy) keeps every
record it sent in ``wandb/<run folder>/run-<id>.wandb``: a LevelDB-style log (32 KiB
blocks; each chunk a 7-byte header — CRC, length, type — then protobuf bytes) after a
7-byte ``:W&B`` header. Its ``run`` record holds the config, its ``history`` records the
logged rows with their ``_step``. The records are parsed with wandb's own protobuf
classes; nothing is sent anywhere.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.trackers._run import LoggedRun, flatten, require, run_name

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[bytes]:
    """The raw records of a ``.wandb`` transaction log, in order; a torn tail (a run
    killed while writing) ends the iteration."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise EscapestatError(f"{path}: not a W&B transaction log (no ':W&B' header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        body = data[pos + HEADER:pos + HEADER + length]
        if len(body) < length:
            return
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


def _value(text: str) -> object:
    value = json.loads(text)
    if isinstance(value, dict) and set(value) >= {"value"} and set(value) <= {"value", "desc"}:
        return value["value"]  # config.yaml's wrapping, seen in older logs
    return value


def _read_run(path: Path, metrics: list[str], pb) -> LoggedRun:
    run = LoggedRun(run_name(path.parent.name))
    config: dict[str, object] = {}
    for raw in records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            if record.run.display_name:
                run.name = run_name(f"{record.run.display_name}-{record.run.run_id}")
            config.update({i.key: _value(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: _value(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {(i.key or ".".join(i.nested_key)): i.value_json for i in record.history.item}
            step = int(json.loads(row["_step"])) if "_step" in row else record.history.step.num
            wall = float(json.loads(row["_timestamp"])) if "_timestamp" in row else None
            run.logged.update(k for k in row if not k.startswith("_"))
            for metric in metrics:
                if metric in row:
                    value = json.loads(row[metric])
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        run.add(metric, step, float(value), wall)
                    elif value in ("NaN", "Infinity", "-Infinity"):
                        run.add(metric, step, float(value.replace("Infinity", "inf")), wall)
    run.conditions = flatten(config)
    return run


def read_wandb(source: str, metrics: list[str]) -> list[LoggedRun]:
    """The runs under ``source`` (a ``wandb`` folder, a folder holding one, or one run's
    folder) that logged one of ``metrics``."""
    root = Path(source)
    if not root.exists():
        raise EscapestatError(f"{source}: no such W&B folder")
    logs = [root] if root.is_file() else sorted(root.rglob("run-*.wandb"))
    if not logs:
        raise EscapestatError(f"{source}: no W&B run logs (run-*.wandb) under it")
    pb = require("wandb.proto.wandb_internal_pb2", "wandb", "reading W&B runs")
    return [_read_run(p, metrics, pb) for p in logs]
