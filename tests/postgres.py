"""A real PostgreSQL server for tests: Debian's binaries, ``initdb`` in a temporary directory.

The server refuses to run as root, so as root it runs as the ``postgres`` user (created by
Debian's ``postgresql`` package, which ``scripts/system-deps.sh test`` installs). It listens on
a free loopback port with trust authentication for a test role; ``fsync=off`` because a test
cluster need not survive the machine (it does survive a server restart: committed data is in
the page cache). Fixtures::

    from tests.postgres import pg_url_fixture, postgres_fixture  # noqa: F401

``postgres`` is one server per test session; ``pg_url`` a fresh, empty database on it for each
test. A test that restarts the server makes its own :class:`Postgres`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

HOST = "127.0.0.1"
ROLE = "fieldgate"
# initdb and a start take a second or two; this only bounds a broken installation.
START_TIMEOUT = 60
_databases = itertools.count(1)


def _bin_dir() -> Path:
    """The newest installed major version's binaries (/usr/lib/postgresql/*/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/system-deps.sh test")
    return Path(found[-1]).parent


def _major(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Postgres:
    """One server: ``start()``, ``stop()``, ``restart()``; ``url(db)`` for a database."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.directory = Path(tempfile.mkdtemp(prefix="fieldgate-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"
        )

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=self._user,
            timeout=START_TIMEOUT,
            cwd=self.directory,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop; ``immediate`` is a crash (no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"test_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(name="pg_url")
def pg_url_fixture(postgres: Postgres) -> str:
    return postgres.new_database()
