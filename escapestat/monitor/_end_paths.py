"""The process-wide end paths of ``EscapeMonitor``: at interpreter exit or on SIGTERM/SIGINT
every open monitor of this process writes its row (a signal waits for a row being written)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

    from escapestat.monitor._monitor import EscapeMonitor

    # A signal handler as signal.getsignal returns it (typeshed's private _HANDLER).
    _Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_OPEN: dict[int, EscapeMonitor] = {}  # id -> monitors that hold an unwritten row
_PREVIOUS: dict[int, _Handler] = {}  # signal -> handler before ours
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WRITING = [0]  # > 0 while a row is being written; a signal then waits for it
_DEFERRED: list[tuple[int, object]] = []
_ATEXIT = [False]


def _close_all(ended_by: str) -> None:
    """Write the row of every open monitor of this process (atexit and signal path)."""
    for monitor in list(_OPEN.values()):
        if monitor._pid != os.getpid():  # inherited through fork: the parent writes it
            continue
        try:
            monitor._finish(ended_by)
        except Exception as exc:  # never lose the signal chain over one bad row
            print(f"escapestat: could not write the escape row of run {monitor.run_id}: "
                  f"{exc}", file=sys.stderr)


def _on_signal(signum, frame) -> None:
    if _WRITING[0]:  # interrupted in the middle of writing a row: finish it, then come back
        _DEFERRED.append((signum, frame))
        return
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    _close_all(signal.Signals(signum).name)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL, or a handler not installed from Python
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextmanager
def _writing():
    """Hold signals off while a row is being made and written; then deliver them."""
    _WRITING[0] += 1
    try:
        yield
    finally:
        _WRITING[0] -= 1
        if not _WRITING[0] and _DEFERRED:
            _on_signal(*_DEFERRED.pop(0))


def _install_handlers() -> None:
    if not _ATEXIT[0]:
        atexit.register(_close_all, "exit")
        _ATEXIT[0] = True
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if current is _on_signal or current == signal.SIG_IGN:
            continue  # installed already, or ignored: the signal does not end the run
        _PREVIOUS[sig] = current
        signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_PREVIOUS.items()):
        if signal.getsignal(sig) is _on_signal:  # nobody replaced ours since
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        del _PREVIOUS[sig]
