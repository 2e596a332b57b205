"""A throwaway PostgreSQL cluster for the test session (fixture ``postgres_url``).

The cluster lives in a fresh temp folder, listens on a free loopback port with ``trust``
authentication, holds one database ``escapestat_test``, and is stopped and deleted when the
session ends. The server binaries are looked for on PATH and in Debian's
``/usr/lib/postgresql/N/bin`` (which is not on PATH). Without them the fixture skips its
tests, except under CI (the ``CI`` environment variable set), where it fails them: CI
installs PostgreSQL (``.ci/run``), so missing binaries there are a broken setup, not a reason
to skip.

``initdb`` refuses to run as root; as root, the server tools run as the ``postgres`` system
user (created by the Debian package) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "escapestat_test"
SUPERUSER = "postgres"
_STARTS = 3  # a picked port can be taken before the server binds it: try a few


class PostgresUnavailable(Exception):
    """The PostgreSQL server binaries are not installed."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else the newest Debian one."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)  # a symlink: pg_ctl sits by the target
        candidates.append(Path(on_path).parent)

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parts[-3]))

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)
    candidates += [Path(p).parent for p in debian]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in "
        "/usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One throwaway cluster: ``start()`` it, use ``url``, ``stop()`` it (deletes its files)."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="escapestat-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port: int | None = None
        self.sockets.mkdir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:  # initdb refuses root: run the server tools as `postgres`
            try:
                account = pwd.getpwnam(SUPERUSER)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise RuntimeError(
                    f"running as root and there is no {SUPERUSER!r} system user to run "
                    "PostgreSQL as (the Debian package creates it)") from None
            self._runuser = shutil.which("runuser")
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, as_server: bool = True) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if as_server and self._as_postgres:
            cmd = ([self._runuser, "-u", SUPERUSER, "--", *cmd] if self._runuser
                   else ["su", "-s", "/bin/sh", "-c", shlex.join(cmd), SUPERUSER])
        # cwd: the postgres user may not be allowed into the caller's working directory.
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
                + (f"\nserver log:\n{log}" if log else ""))

    def start(self) -> str:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER,
                  "-E", "UTF8", "--no-locale", "--no-sync")
        for attempt in range(_STARTS):
            self.port = _free_port()
            options = (f"-k {self.sockets} -p {self.port} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                          "-t", "60", "-o", options, "start")
                break
            except RuntimeError:
                if attempt == _STARTS - 1:
                    raise
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                  DATABASE, as_server=False)
        return self.url

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/escapestat_test`` of a cluster for this session.

    Tests share the database: each uses its own study name.
    """
    try:
        bin_dir = find_bin_dir()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}", pytrace=False)
        pytest.skip(str(exc))
    cluster = Cluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
