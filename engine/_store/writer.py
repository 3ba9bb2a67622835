"""Group commit: one writer drains every pending write into one transaction.

Callers (the runs of a busy engine) each submit a write and await a future;
the writer task takes everything queued, runs it on the connection's own
thread in a single transaction and resolves each future after COMMIT, so a
write is durable when its caller resumes. While one batch commits, the next
one accumulates: the busier the engine, the bigger the batches.

Consecutive writes of the same batchable op on the same table (``add``) go to
SQLite as one ``executemany``. If anything in the optimistic pass fails, the
transaction is rolled back and the batch replayed with one SAVEPOINT per
write, so a bad write fails only its own caller and the others still commit.
Writes that fail without touching the database (``edit`` of a missing id)
return their error instead of raising, and do not force the replay.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from operator import itemgetter
from typing import Any

from engine._store.errors import StoreError, WriteFailed, translate
from engine._store.schema import index_ddl, record_table_ddl

__all__ = ("WriteContext", "GroupWriter", "Op")

#: An op runs on the writer thread: ``op(ctx, key, args) -> results | None``.
#: ``results`` lines up with ``args`` (None means every result is None); an
#: exception instance as a result fails that one write without a rollback.
Op = Callable[["WriteContext", Any, list[Any]], "list[Any] | None"]

MAX_BATCH = 20_000
_OP_AND_KEY = itemgetter(0, 1)
_ARG = itemgetter(2)
#: smallest run of futures resolved before the writer yields to their callers
CHUNK = 128
#: a committed batch is resolved in this many slices (at least CHUNK futures each)
SLICES = 4


class WriteContext:
    """Writer-thread state: the connection and which record tables exist."""

    def __init__(self, conn: sqlite3.Connection, indexes: dict[str, tuple[str, ...]]) -> None:
        self.conn = conn
        self.indexes = indexes
        self.tables: set[str] = set()
        self.created: list[str] = []  # tables created by the open transaction

    def ensure_table(self, table: str) -> None:
        """Create record table ``table`` (and its declared indexes) if it is new."""
        if table in self.tables:
            return
        self.conn.execute(record_table_ddl(table))
        for field in self.indexes.get(table, ()):
            if field != "id":
                self.conn.execute(index_ddl(table, field))
        self.tables.add(table)
        self.created.append(table)

    def table_exists(self, table: str) -> bool:
        if table in self.tables:
            return True
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
            (table,),
        ).fetchone()
        if row is not None:
            self.tables.add(table)
        return row is not None

    def forget_created(self, mark: int) -> None:
        """Tables created after ``mark`` were rolled back: forget them."""
        for table in self.created[mark:]:
            self.tables.discard(table)
        del self.created[mark:]


class GroupWriter:
    """Owns the write connection's thread and the queue of pending writes."""

    def __init__(self, ctx: WriteContext, executor: ThreadPoolExecutor) -> None:
        self._ctx = ctx
        self._executor = executor
        self._queue: list[tuple[Op, Any, Any, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        #: batches committed and writes they held, for tests and metrics
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="cronstack-store-writer")

    def submit(self, op: Op, key: Any, arg: Any) -> asyncio.Future[Any]:
        """Queue one write; the future resolves after its batch commits."""
        if self._closing:
            raise StoreError("the store is closed; open it again to write")
        fut = self._loop.create_future()
        queue = self._queue
        queue.append((op, key, arg, fut))
        if len(queue) == 1:
            self._wake.set()
        return fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the writer thread, between batches."""
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Commit everything queued, then stop the writer task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _dispatch(self) -> tuple[list[Any], asyncio.Future[list[Any]]]:
        """Hand what is queued (up to MAX_BATCH) to the writer thread."""
        if len(self._queue) <= MAX_BATCH:
            batch, self._queue = self._queue, []
        else:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        return batch, self._loop.run_in_executor(self._executor, self._apply, batch)

    async def _run(self) -> None:
        """Commit batches; resolve their futures in chunks, pipelining the next batch.

        Resolving a big batch chunk by chunk (yielding in between) lets the
        resumed callers queue their next writes, which go to the thread as
        soon as it is idle: the thread commits while the loop runs callers.
        """
        inflight: tuple[list[Any], asyncio.Future[list[Any]]] | None = None
        while True:
            if inflight is None:
                while not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                inflight = self._dispatch()
            batch, done = inflight
            try:
                results = await done
            except asyncio.CancelledError:
                why = "the engine stopped before the write was committed"
                _fail(batch, why)
                _fail(self._queue, why)
                self._queue = []
                raise
            except Exception as exc:  # a defect in _apply: fail the batch, keep serving
                results = [WriteFailed(f"the write batch failed unexpectedly ({exc!r})")
                           for _ in batch]
            inflight = None
            self.batches += 1
            self.writes += len(batch)
            n = len(batch)
            step = max(CHUNK, n // SLICES)
            for start in range(0, n, step):
                _deliver(batch, results, start, min(start + step, n))
                if start + step < n:
                    await asyncio.sleep(0)  # let the resumed callers queue writes
                    if inflight is None and self._queue:
                        inflight = self._dispatch()

    # -- writer thread -------------------------------------------------------

    def _apply(self, batch: list[tuple[Op, Any, Any, Any]]) -> list[Any] | None:
        conn = self._ctx.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return _failed(batch, exc, "starting a write transaction")
        mark = len(self._ctx.created)
        try:
            results = self._optimistic(batch)
            conn.execute("COMMIT")
        except Exception:  # replay write by write, isolating the bad ones
            _rollback(conn)
            self._ctx.forget_created(mark)
            return self._isolated(batch)
        del self._ctx.created[:]
        return results

    def _optimistic(self, batch: list[tuple[Op, Any, Any, Any]]) -> list[Any] | None:
        ctx = self._ctx
        results: list[Any] = []
        trivial = True  # every result None: the common case of a batch of adds
        for (op, key), run in groupby(batch, _OP_AND_KEY):
            items = list(run)
            if key is None:  # not batchable: one call per write
                groups = [[item[2]] for item in items]
            else:
                groups = [list(map(_ARG, items))]
            for args in groups:
                out = op(ctx, key, args)
                if out is None:
                    results.extend([None] * len(args))
                else:
                    results.extend(out)
                    trivial = False
        return None if trivial else results

    def _isolated(self, batch: list[tuple[Op, Any, Any, Any]]) -> list[Any]:
        ctx = self._ctx
        conn = ctx.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return _failed(batch, exc, "starting a write transaction")
        results: list[Any] = []
        for op, key, arg, _ in batch:
            mark = len(ctx.created)
            conn.execute("SAVEPOINT w")
            try:
                out = op(ctx, key, [arg])
            except Exception as exc:
                conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
                ctx.forget_created(mark)
                what = getattr(op, "what", "writing")
                results.append(translate(exc, what, record=getattr(op, "record", False)))
            else:
                conn.execute("RELEASE w")
                results.append(out[0] if out is not None else None)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            ctx.forget_created(0)
            return _failed(batch, exc, "committing writes")
        del ctx.created[:]
        return results


def _failed(batch: list[Any], exc: Exception, what: str) -> list[Any]:
    """One error per write of a batch that failed as a whole (each caller its own)."""
    return [translate(exc, what, record=getattr(item[0], "record", False)) for item in batch]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _deliver(batch: list[Any], results: list[Any] | None, start: int, stop: int) -> None:
    """Resolve futures ``start:stop``; ``results`` None means every result is None."""
    if results is None:
        for item in batch[start:stop]:
            fut = item[3]
            if not fut.done():  # a cancelled caller's write committed anyway
                fut.set_result(None)
        return
    for i in range(start, stop):
        fut = batch[i][3]
        if fut.done():  # its caller was cancelled; the write committed anyway
            continue
        result = results[i]
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _fail(items: Iterable[tuple[Any, Any, Any, asyncio.Future[Any]]], why: str) -> None:
    for item in items:
        if not item[3].done():
            item[3].set_exception(WriteFailed(f"{why}; the write was not stored"))
