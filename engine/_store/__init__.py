"""Persistence: records for stacks and the engine's own state, in one database.

``open_store(url)`` returns a ``Store``: a ``runtime.Records`` for the record
steps plus the engine's bookkeeping (runs, traces, schedule state): SQLite
(``sqlite:///``, one engine per file, group-committed writes) or PostgreSQL
(``postgresql://``, several engines sharing one database). See docs/store.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from engine._store.base import Store
from engine._store.errors import (
    DuplicateRecord,
    InvalidFilter,
    InvalidName,
    InvalidRecord,
    RecordError,
    RecordNotFound,
    RunNotFound,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    UnsupportedDatabase,
    WriteFailed,
    WriteOutcomeUnknown,
)
from engine._store.sqlite import SQLiteStore
from engine._store.state import RUN_COLUMNS, RUN_KINDS, RUN_STATUSES, RUN_TRIGGERS

__all__ = (
    "DuplicateRecord",
    "InvalidFilter",
    "InvalidName",
    "InvalidRecord",
    "RUN_COLUMNS",
    "RUN_KINDS",
    "RUN_STATUSES",
    "RUN_TRIGGERS",
    "RecordError",
    "RecordNotFound",
    "RunNotFound",
    "SQLiteStore",
    "SchemaTooNew",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "UnsupportedDatabase",
    "WriteFailed",
    "WriteOutcomeUnknown",
    "open_store",
)


class _Opening:
    """What ``open_store`` returns: await it, or use it with ``async with``."""

    def __init__(self, url: str, kwargs: dict[str, Any]) -> None:
        self._url = url
        self._kwargs = kwargs
        self._store: Store | None = None

    async def _open(self) -> Store:
        url = self._url
        if not isinstance(url, str):
            raise StoreError(f"a database URL must be a text, got {url!r}")
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("postgresql", "postgres"):
            from engine._store.postgres import PostgresStore

            kw = {k: v for k, v in self._kwargs.items() if k in ("indexes", "synchronous", "clock")}
            return await PostgresStore.open(url, **kw)
        if scheme != "sqlite":
            raise UnsupportedDatabase(
                f"unknown database URL scheme {scheme + ':'!r} in {_without_password(url)!r}; "
                "use sqlite:///path/to.db or "
                "postgresql://user:password@host:port/database"
            )
        return await SQLiteStore.open(url, **self._kwargs)

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


def _without_password(url: str) -> str:
    """``url`` fit for an error message: a password in it is replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def open_store(
    url: str,
    *,
    indexes: Mapping[str, Sequence[str]] | None = None,
    synchronous: str = "NORMAL",
    clock: Callable[[], float] = time.time,
    base_dir: str | os.PathLike[str] | None = None,
    lock: bool = True,
) -> _Opening:
    """Open the database at ``url``: ``store = await open_store(url)`` or ``async with``.

    ``indexes`` maps a table to fields queried through an index;
    ``synchronous`` is ``"NORMAL"`` (durable against a process crash) or
    ``"FULL"`` (also against power loss); ``clock`` gives the timestamps;
    relative paths resolve against ``base_dir`` (and may not leave it) or the
    working directory; ``lock=False`` skips the one-engine-per-file lock
    (read-only tools only).
    """
    return _Opening(
        url,
        {"indexes": indexes, "synchronous": synchronous, "clock": clock,
         "base_dir": base_dir, "lock": lock},
    )
