"""Where a search lives: an embedded SQLite file by default, or a shared database server.

Every worker of a shared study opens the same URL. Workers send heartbeats while a trial
runs; a trial whose worker stopped beating for ``grace_period`` seconds is failed by the
next worker that looks, and ``RetryHeartbeatStaleTrialCallback`` queues a copy of it (same
parameters) so that no trial is lost.
"""

from __future__ import annotations

import importlib.util
import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from escapestat.errors import EscapestatError

#: Seconds between a running trial's heartbeats, and how long a silent one is trusted.
HEARTBEAT_SECONDS = 30
MAX_RETRY = 3
OPEN_ATTEMPTS = 4

_SCHEMES = ("sqlite", "postgresql", "mysql")


def embedded_url(out_dir: str | Path) -> str:
    """The default storage: ``optuna.db`` in the search's output folder (no server)."""
    return f"sqlite:///{Path(out_dir).resolve() / 'optuna.db'}"


def open_storage(url: str, heartbeat_interval: int = HEARTBEAT_SECONDS,
                 grace_period: int | None = None, max_retry: int = MAX_RETRY) -> RDBStorage:
    """An RDB storage with heartbeats and a retry callback; a bad URL is one error line.

    ``grace_period`` defaults to twice the heartbeat interval. A ``postgresql://`` URL is
    opened with psycopg 3 (``postgresql+psycopg://``), which ``escapestat[postgres]``
    installs.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in _SCHEMES:
        raise EscapestatError(
            f"storage {url!r}: unknown scheme {scheme!r}; use sqlite:///FILE or "
            f"postgresql://USER@HOST:PORT/DB")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgresql+psycopg://") and importlib.util.find_spec("psycopg") is None:
        raise EscapestatError(f"storage {redact(url)}: PostgreSQL needs the psycopg driver: "
                              f"pip install 'escapestat[postgres]'")
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback: "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url, heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period or 2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry))
        except Exception as exc:  # SQLAlchemy/driver errors: say which storage, in one line
            # Workers that start together on a fresh database race to create its tables;
            # the losers' CREATE fails (a unique violation) and a retry finds them made.
            if attempt + 1 < OPEN_ATTEMPTS and not url.startswith("sqlite"):
                time.sleep(0.5 + random.random())
                continue
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise EscapestatError(f"storage {redact(url)}: cannot open it: {first}") from None
    raise AssertionError("unreachable")


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the failed trial that ``trial`` re-runs, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def redact(url: str) -> str:
    """The URL without a password."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url
