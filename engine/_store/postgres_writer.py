"""One ordered writer connection: writes run in the order they were made, a batch per transaction.

Concurrent writes queue; the writer task takes everything queued as one batch
and runs it in one transaction, each write under its own savepoint so that a
failing write fails only its caller (as the SQLite writer's replay does).
Every caller's future resolves after COMMIT: a write is durable and visible
to any later read when its coroutine returns (PostgreSQL's
``synchronous_commit`` is on by default). Order matters: runs inserted
together keep their insertion order, and two writes of one run land in the
order they were made. A lost connection fails the batch it happened in
(translated, never an asyncpg error) and is reopened for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from engine._store.errors import StoreError
from engine._store.postgres_errors import translate_pg

__all__ = ("PgWriter",)

#: writes in one transaction at most
MAX_BATCH = 1_000


class PgWriter:
    def __init__(self, connect: Callable[[], Awaitable[Any]], on_failure: Callable[[], None] = lambda: None) -> None:
        self._connect = connect
        #: called when a write fails (its transaction or savepoint rolled back): caches of what
        #: the database holds (tables created) are dropped
        self._on_failure = on_failure
        self._conn: Any = None
        self._queue: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], asyncio.Future[Any], str, bool]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.writes = 0

    async def start(self) -> None:
        self._conn = await self._connect()
        self._task = asyncio.ensure_future(self._run())

    def submit(self, op: Callable[..., Awaitable[Any]], *args: Any, what: str = "writing",
               record: bool = False) -> asyncio.Future[Any]:
        """Queue ``await op(conn, *args)``; the future resolves to its result after COMMIT."""
        if self._closed:
            raise StoreError("the store is closed; open it again to write")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((op, args, fut, what, record))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            await self._batch(batch)

    async def _batch(self, batch: list[Any]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            conn = self._conn
            async with conn.transaction():
                for op, args, _fut, what, record in batch:
                    try:
                        if len(batch) == 1:
                            results.append((True, await op(conn, *args)))
                        else:
                            async with conn.transaction():  # a savepoint: a failure undoes this write only
                                results.append((True, await op(conn, *args)))
                    except Exception as exc:  # the caller gets it, translated; the batch goes on
                        if len(batch) == 1:
                            raise
                        results.append((False, translate_pg(exc, what, record=record)))
        except Exception as exc:
            results = [(False, translate_pg(exc, b[3], record=b[4])) for b in batch]
        if not all(ok for ok, _ in results):
            self._on_failure()
        self.batches += 1
        self.writes += len(batch)
        for (_op, _args, fut, _w, _r), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    async def close(self) -> None:
        """Commit what is queued, then close the connection."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
