"""TensorBoard event files: read a log directory's runs, write escapes and metrics to one.

A run is a directory holding ``events.out.tfevents.*`` files. Its scalars are the
``simple_value`` summaries (``torch.utils.tensorboard``, TF1) and the ``scalars``-plugin
tensors (``tf.summary.scalar``, ``tensorboard.summary.Writer``); its hyperparameters are
the hparams plugin's session-start record, in its own files or in a subdirectory's
(``SummaryWriter.add_hparams`` writes one there). TensorBoard stores float32: a value
within 1e-7 of a threshold may land on the other side of it than the float64 it logged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from escapestat.errors import EscapestatError
from escapestat.trackers._run import LoggedRun, condition_value, require, run_name

EVENTS = "events.out.tfevents."


def _event_dirs(root: Path) -> list[Path]:
    return sorted({Path(d) for d, _, files in os.walk(root)
                   if any(f.startswith(EVENTS) for f in files)})


def _accumulator(path: Path):
    ea = require("tensorboard.backend.event_processing.event_accumulator", "tensorboard",
                 "reading TensorBoard logs")
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _hparams(acc) -> dict[str, object]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        contents = acc.PluginTagToContent("hparams")
    except KeyError:  # no hparams in this directory
        return {}
    out: dict[str, object] = {}
    for content in contents.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.WhichOneof("data") != "session_start_info":
            continue
        for key, value in data.session_start_info.hparams.items():
            kind = value.WhichOneof("kind")
            if kind in ("number_value", "string_value", "bool_value"):
                out[str(key)] = condition_value(getattr(value, kind))
    return out


def _scalars(acc, run: LoggedRun, metrics: list[str]) -> None:
    from tensorboard.util import tensor_util

    tags = acc.Tags()
    for tag in tags.get("scalars", []):
        run.logged.add(tag)
        if tag in metrics:
            for e in acc.Scalars(tag):
                run.add(tag, e.step, e.value, e.wall_time)
    for tag in tags.get("tensors", []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        run.logged.add(tag)
        if tag in metrics:
            for e in acc.Tensors(tag):
                run.add(tag, e.step, float(tensor_util.make_ndarray(e.tensor_proto)),
                        e.wall_time)


def read_tensorboard(source: str, metrics: list[str]) -> list[LoggedRun]:
    """The runs under the log directory ``source`` that logged one of ``metrics``."""
    root = Path(source)
    if not root.is_dir():
        raise EscapestatError(f"{source}: not a TensorBoard log directory")
    dirs = _event_dirs(root)
    if not dirs:
        raise EscapestatError(f"{source}: no TensorBoard event files "
                              f"({EVENTS}*) under it")
    found: dict[Path, LoggedRun] = {}
    params: dict[Path, dict[str, object]] = {}
    for d in dirs:
        acc = _accumulator(d)
        name = "." if d == root else d.relative_to(root).as_posix()
        run = LoggedRun(run_name(name if name != "." else root.name))
        _scalars(acc, run, metrics)
        params[d] = _hparams(acc)
        if run.logged:
            found[d] = run
    for d, run in found.items():
        # add_hparams writes to a subdirectory of the run: take the nearest hparams
        below = [p for p in params if p != d and d in p.parents and p not in found]
        merged: dict[str, object] = {}
        for p in sorted(below, key=lambda p: (len(p.parts), str(p))):
            merged.update({k: v for k, v in params[p].items() if k not in merged})
        run.conditions = {**merged, **params[d]}
    return list(found.values())


class TensorBoardLog:
    """Scalars and hyperparameters written as TensorBoard event files, one directory per
    run under ``root`` (``simple_value`` scalars, read by every TensorBoard)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._writers: dict[str, object] = {}

    def _writer(self, run: str):
        if run not in self._writers:
            mod = require("tensorboard.summary.writer.event_file_writer", "tensorboard",
                          "logging to TensorBoard")
            self._writers[run] = mod.EventFileWriter(str(self.root / run))
        return self._writers[run]

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                 for k, v in values.items()])
        self._writer(run).add_event(Event(wall_time=time.time(), step=int(step),
                                          summary=summary))

    def hparams(self, run: str, conditions: dict[str, object]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.plugins.hparams import summary_v2

        values = {k: v for k, v in conditions.items()
                  if isinstance(v, (bool, int, float, str))}
        if values:
            self._writer(run).add_event(Event(wall_time=time.time(),
                                              summary=summary_v2.hparams_pb(values)))

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()  # type: ignore[attr-defined]

    def close(self) -> None:
        for w in self._writers.values():
            w.close()  # type: ignore[attr-defined]
        self._writers.clear()
