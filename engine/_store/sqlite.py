"""The SQLite backend: one file, one engine, WAL, a group-commit writer.

Two connections: the writer's (a plain ``sqlite3`` connection living on its
own thread, driven batch by batch by ``GroupWriter``) and the reader's
(``aiosqlite``). WAL lets reads run while a batch commits, and every read
starts after the commits its caller awaited, so a caller reads its writes.
``sqlite:///:memory:`` has a single connection, so its reads queue on the
writer thread between batches.

Opening checks before it touches anything: the directory must exist (it is
never created), an existing file must start with the SQLite header (anything
else is refused, never overwritten), and ``<db>.lock`` must be free: the
engine holds ``flock`` on it for the store's lifetime, which the kernel drops
when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from engine._store.base import Store
from engine._store.errors import StoreCorrupt, StoreError, StoreLocked, translate
from engine._store.filters import check_field, check_table
from engine._store.records import RecordsMixin
from engine._store.schema import (
    check_index_names,
    check_version,
    index_ddl,
    migrate,
    upgrade_index_names,
)
from engine._store.state import StateMixin
from engine._store.writer import GroupWriter, WriteContext

__all__ = ("SQLiteStore", "sqlite_path", "FileLock")

_HEADER = b"SQLite format 3\x00"
_SYNCHRONOUS = ("NORMAL", "FULL")
MEMORY = ":memory:"
#: WAL pages (4 KiB) between automatic checkpoints; SQLite's default is 1,000
WAL_AUTOCHECKPOINT = 10_000


def sqlite_path(url: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """The file a ``sqlite:///`` URL names (or ``:memory:``).

    ``sqlite:///rel/x.db`` is relative (to ``base_dir`` when given, else the
    working directory); ``sqlite:////abs/x.db`` is absolute. With a
    ``base_dir``, a relative path may not climb out of it.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise StoreError(f"database URL {url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db")
    rest = url[len(prefix):]
    if any(c in rest for c in "?#\x00"):
        raise StoreError(
            f"database URL {url!r}: query strings, fragments and NUL are not accepted; "
            "give a plain file path"
        )
    if rest == MEMORY:
        return MEMORY
    if not rest or rest.endswith("/"):
        raise StoreError(f"database URL {url!r} names no file; e.g. sqlite:///cronstack.db")
    path = Path(rest)
    if not path.is_absolute() and base_dir is not None:
        base = Path(base_dir).resolve()
        path = (base / path).resolve()
        if not path.is_relative_to(base):
            raise StoreError(
                f"database URL {url!r} leaves the project directory {str(base)!r}; "
                "write an absolute path (sqlite:////...) if you mean that file"
            )
    return str(path)


def _check_file(path: str) -> None:
    """Refuse what is not an SQLite file (or a place where one may be created)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(
            f"the directory of database {path!r} does not exist; create it first "
            "(cronstack never creates directories)"
        )
    if p.is_dir():
        raise StoreError(f"database path {path!r} is a directory; name a file inside it")
    if p.exists() and p.stat().st_size > 0:
        with open(p, "rb") as f:
            head = f.read(len(_HEADER))
        if head != _HEADER:
            raise StoreCorrupt(
                f"{path!r} is not an SQLite database (its header is {head[:16]!r}); "
                "cronstack will not overwrite it: use another path"
            )


class FileLock:
    """An exclusive ``flock`` on ``<db>.lock``, holding the owner's pid."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + ".lock"
        self._fd: int | None = None

    def acquire(self, db_path: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"another cronstack engine (pid {owner}) is using {db_path}; "
                "stop it or use another database",
                pid=owner,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class SQLiteStore(RecordsMixin, StateMixin, Store):
    """The SQLite implementation of ``Store``; open it with ``open_store``."""

    def __init__(
        self,
        url: str,
        path: str,
        *,
        indexes: dict[str, tuple[str, ...]],
        synchronous: str,
        clock: Callable[[], float],
        lock: bool,
    ) -> None:
        self.url = url
        self.path = path
        self.indexes = indexes
        self.synchronous = synchronous
        self._clock = clock
        self._lock = FileLock(path) if lock and path != MEMORY else None
        self._counters: dict[str, int] = {}
        self._counter_loads: dict[str, asyncio.Future[int]] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cronstack-store")
        self._conn: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer: GroupWriter  # set by _open
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        indexes: Mapping[str, Sequence[str]] | None = None,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        lock: bool = True,
    ) -> SQLiteStore:
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        merged: dict[str, dict[str, None]] = {}
        for t, fields in (indexes or {}).items():
            # "Items" and "items" are one table: merge, rather than let one hide the other
            merged.setdefault(check_table(t), {}).update(dict.fromkeys(check_field(f) for f in fields))
        checked = {t: tuple(fields) for t, fields in merged.items()}
        check_index_names(checked)
        store = cls(url, sqlite_path(url, base_dir), indexes=checked, synchronous=sync,
                    clock=clock, lock=lock)
        loop = asyncio.get_running_loop()
        opened = False
        try:
            store._conn = await loop.run_in_executor(store._executor, store._open_sync)
            store._writer = GroupWriter(WriteContext(store._conn, checked))
            store._writer.start()
            if store.path != MEMORY:
                store._reader = await aiosqlite.connect(store.path, isolation_level=None)
                await store._reader.execute("PRAGMA busy_timeout = 10000")
                await store._reader.execute("PRAGMA query_only = 1")
            opened = True
        finally:
            if not opened:
                if getattr(store, "_writer", None) is not None:
                    await store._writer.close()
                await store._abort()
        return store

    def _open_sync(self) -> sqlite3.Connection:
        where = self.path
        if self.path != MEMORY:
            _check_file(self.path)
            if self._lock is not None:
                self._lock.acquire(self.path)
        conn = None
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=512
            )
            check_version(conn, where)  # before WAL mode rewrites the header of a newer file
            if self.path != MEMORY:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"{where}: SQLite refused WAL mode (got {mode!r})")
                # checkpoint every ~40 MB of WAL rather than 4 MB: fewer copies of
                # pages that many small batches rewrite, and fewer fsyncs
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA cache_size = -32000")
            migrate(conn, where)
            conn.execute("BEGIN IMMEDIATE")
            upgrade_index_names(conn)
            for table, fields in self.indexes.items():
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                    (table,),
                ).fetchone()
                for field in fields if exists else ():
                    if field != "id":
                        conn.execute(index_ddl(table, field))
            conn.execute("COMMIT")
            return conn
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise translate(exc, f"opening {where}") from exc
        except Exception:
            if conn is not None:
                conn.close()
            raise

    async def _abort(self) -> None:
        """Undo a half-finished open: close what opened, drop the lock."""
        if self._reader is not None:
            await self._reader.close()
        conn = self._conn
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)
        if self._lock is not None:
            self._lock.release()

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StoreError("the store is closed; open it again to read")
        if self._reader is not None:
            return list(await self._reader.execute_fetchall(sql, params))
        conn = self._conn
        assert conn is not None
        return await self._writer.call(lambda: conn.execute(sql, params).fetchall())

    async def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` lines (``["ok"]`` when healthy).

        Damage that stops SQLite from running the check at all ("database disk
        image is malformed") is ``StoreCorrupt``, like the same error anywhere else.
        """
        try:
            rows = await self._fetchall("PRAGMA integrity_check", ())
        except sqlite3.Error as exc:
            raise translate(exc, f"checking the integrity of {self.path}") from exc
        return [r[0] for r in rows]

    @property
    def write_stats(self) -> dict[str, int]:
        """Batches committed and writes they carried since open."""
        return {"batches": self._writer.batches, "writes": self._writer.writes}

    async def close(self) -> None:
        """Commit what is queued, then close. Callers that come while it runs wait for
        the same close (and see its error, if any); a closed store closes at once."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_once())
        elif self._closing.done():
            return
        # shielded: a caller cancelled while waiting leaves the close running
        await asyncio.shield(self._closing)

    async def _close_once(self) -> None:
        try:
            await self._writer.close()
        finally:
            self._closed = True
            await self._abort()
