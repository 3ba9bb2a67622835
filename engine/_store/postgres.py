"""The PostgreSQL backend: several engines on one database, through asyncpg.

``open_store("postgresql://user:password@host:port/database")`` connects,
checks the schema version and migrates (see ``postgres_schema``), creates the
declared indexes of tables that exist, and returns a ``PostgresStore``. Reads
go through a small pool; writes through one ordered writer connection, a
batch of concurrent writes per transaction (``postgres_writer``). Records are
``postgres_records``, engine state and liveness ``postgres_state``, the filter
language ``postgres_filters``. Every asyncpg error is translated into the
store's errors (``postgres_errors``). Unlike SQLite, no file lock: engines
share the database, and ``register_engine`` gives each a liveness lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from engine._store.base import Store
from engine._store.errors import StoreError, UnsupportedDatabase
from engine._store.filters import check_field, check_table
from engine._store.postgres_errors import connect_error, translate_pg
from engine._store.postgres_records import PgRecordsMixin
from engine._store.postgres_schema import index_ddl, migrate, qualified, table_lock_key
from engine._store.postgres_state import PgStateMixin
from engine._store.postgres_writer import PgWriter
from engine._store.state import StateMixin

__all__ = ("PostgresStore", "postgres_where")

#: seconds to wait for a connection before calling the server unreachable
CONNECT_TIMEOUT = 10.0
#: read connections at most
POOL_SIZE = 4
#: session settings of the read connections. Statements are prepared once and cached (asyncpg), and
#: PostgreSQL's default plan cache switches a prepared statement to a generic plan (one ignoring
#: the parameters) after five runs. For a record query that plan is a trap: ``WHERE (data #>
#: '{status}') = $1 ORDER BY seq LIMIT $2`` planned without ``$1`` and ``$2`` walks the primary key
#: in ``seq`` order and filters every row (the whole table when few match) instead of reading the
#: expression index; measured 2.9 ms instead of 0.2 ms on 5,000 rows, worse as the table grows.
#: Custom plans cost a short planning per run (the parse is still cached) and follow the values.
#: The writer keeps the default: its statements have a fixed shape (planning the multi-row add
#: every time halved sequential adds), and its one filtered ``LIMIT`` (upsert's ``LIMIT 1`` on an
#: identifier) is planned with a known limit.
SESSION = {"plan_cache_mode": "force_custom_plan"}


async def _reset_read(conn: Any) -> None:
    """Return a read connection to the pool without asyncpg's default reset round trip
    (``RESET ALL; CLOSE ALL; UNLISTEN *; pg_advisory_unlock_all()``): reads set no session
    state, take no locks and listen to nothing; only a transaction left open is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def postgres_where(url: str) -> str:
    """``host:port/database`` of a URL, for messages (never the password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError as exc:
        raise StoreError(f"database URL is not a valid postgresql:// URL ({exc})") from None
    return f"{host}:{port}{parts.path or '/'}"


def _asyncpg():
    try:
        import asyncpg
    except ImportError:  # the optional extra is not installed
        raise UnsupportedDatabase(
            "postgresql:// URLs need the asyncpg package: pip install 'cronstack[postgres]'"
        ) from None
    return asyncpg


class PostgresStore(PgRecordsMixin, PgStateMixin, Store):
    """The PostgreSQL implementation of ``Store``; open it with ``open_store``."""

    #: engines on one PostgreSQL database share the work (the engine checks for dead ones periodically)
    shared = True

    _new_run = StateMixin._new_run
    _updated = StateMixin._updated

    def __init__(self, url: str, *, indexes: dict[str, tuple[str, ...]], clock: Callable[[], float]) -> None:
        self.url = url
        self.where = postgres_where(url)
        self.indexes = indexes
        self._clock = clock
        self._tables: set[str] = set()
        #: the schema record tables live in (the connection's ``current_schema()``); every record
        #: table is named with it
        self._schema = "public"
        self._pool: Any = None
        self._writer = PgWriter(self._connect, self._tables.clear)
        self._live_conn: Any = None
        self._live_id: str | None = None
        self._closing: asyncio.Future[None] | None = None

    async def _connect(self) -> Any:
        asyncpg = _asyncpg()
        try:
            return await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT, statement_cache_size=256)
        except Exception as exc:
            raise connect_error(exc, self.where) from None

    @classmethod
    async def open(cls, url: str, *, indexes: Mapping[str, Sequence[str]] | None = None,
                   synchronous: str = "NORMAL", clock: Callable[[], float] = time.time, **_ignored: Any
                   ) -> PostgresStore:
        """``synchronous``: PostgreSQL commits are durable when they return whatever the value
        (``synchronous_commit`` is the server's setting); it is checked, as for SQLite."""
        if str(synchronous).upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be one of ('NORMAL', 'FULL'), got {synchronous!r}")
        asyncpg = _asyncpg()
        merged: dict[str, dict[str, None]] = {}
        for t, fields in (indexes or {}).items():
            merged.setdefault(check_table(t), {}).update(dict.fromkeys(check_field(f) for f in fields))
        store = cls(url, indexes={t: tuple(f) for t, f in merged.items()}, clock=clock)
        conn = await store._connect()
        try:
            try:
                await migrate(conn, store.where)
                store._schema = await conn.fetchval("SELECT current_schema()")
                if store._schema is None:
                    raise StoreError(f"{store.where}: the connection has no schema to create tables in "
                                     "(search_path names none that exists); set search_path for this user")
                for table, fields in store.indexes.items():
                    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified(store._schema, table)):
                        continue
                    # CREATE INDEX IF NOT EXISTS is not safe against itself (two sessions both find
                    # the name free, one fails on pg_class): engines opening together take turns
                    # under the table's DDL lock, as creating the table does
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", table_lock_key(table))
                        for field in fields:
                            if field != "id":
                                await conn.execute(index_ddl(store._schema, table, field))
            except StoreError:
                raise
            except Exception as exc:
                raise translate_pg(exc, f"opening {store.where}") from exc
        finally:
            await conn.close()
        try:
            store._pool = await asyncpg.create_pool(
                url, min_size=1, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT, statement_cache_size=256,
                server_settings=SESSION, reset=_reset_read)
        except Exception as exc:
            raise connect_error(exc, store.where) from None
        try:
            await store._writer.start()
        except BaseException:
            await store._pool.close()
            raise
        return store

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        if self._closing is not None:
            raise StoreError("the store is closed; open it again to read")
        return await self._pool.fetch(sql, *params)

    @property
    def write_stats(self) -> dict[str, int]:
        return {"batches": self._writer.batches, "writes": self._writer.writes}

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_once())
        elif self._closing.done():
            return
        await asyncio.shield(self._closing)

    async def _close_once(self) -> None:
        try:
            await self._writer.close()
        finally:
            if self._pool is not None:
                await self._pool.close()
            if self._live_conn is not None and not self._live_conn.is_closed():
                await self._live_conn.close()  # ends the session: the liveness lock goes with it
