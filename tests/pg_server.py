"""A private PostgreSQL server for the tests: initdb into a temporary directory, start, stop, delete.

``PgServer.start()`` finds ``initdb``/``pg_ctl`` (PATH, then
``/usr/lib/postgresql/*/bin``), makes a cluster owned by the ``postgres`` OS
user when the tests run as root (PostgreSQL refuses to run as root), listens
on a unix socket in that directory and a free port on 127.0.0.1, and trusts
local connections. ``fsync`` is off: the tests check behaviour, not the disk
(``start(settings=...)`` changes any server setting; the benchmarks use it).
``skip_reason()`` is the only reason the PostgreSQL tests skip: no binaries.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ("PgServer", "find_bin", "skip_reason")


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def skip_reason() -> str | None:
    missing = [n for n in ("initdb", "pg_ctl", "postgres") if find_bin(n) is None]
    if missing:
        return f"no PostgreSQL binaries found ({', '.join(missing)}) in PATH or /usr/lib/postgresql/*/bin"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One running cluster; ``url(db)`` names a database in it, ``new_database()`` makes one."""

    def __init__(self) -> None:
        self.dir = ""
        self.port = 0
        self._as: list[str] = []
        self._pg_ctl = ""
        self._n = 0

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=60, **kw)

    def start(self, settings: dict[str, str] | None = None) -> PgServer:
        """Make and start the cluster; ``settings`` are server settings added to (or overriding)
        the defaults below (the benchmarks run with ``synchronous_commit=on``, a server's default)."""
        initdb, self._pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        assert initdb and self._pg_ctl, skip_reason()
        self.dir = tempfile.mkdtemp(prefix="cronstack-pg-")
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.dir, "data")
        self._run(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        self.port = _free_port()
        options = {"listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
                   "full_page_writes": "off", "max_connections": "200", **(settings or {})}
        opts = f"-p {self.port} -k {self.dir} " + " ".join(f"-c {k}={v}" for k, v in options.items())
        self._run(self._pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "-t", "30", "start")
        return self

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database's URL."""
        self._n += 1
        name = f"t{self._n}_{uuid.uuid4().hex[:8]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = find_bin("psql")
        assert psql
        return self._run(psql, "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-Atc", sql).stdout

    def stop(self) -> None:
        if self.dir:
            data = os.path.join(self.dir, "data")
            if Path(data, "postmaster.pid").exists():
                subprocess.run([*self._as, self._pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                               capture_output=True, timeout=60)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""
