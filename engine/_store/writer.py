"""Group commit: one writer thread drains every pending write into one transaction.

Callers (the runs of a busy engine) each submit a write and await a future;
the writer thread takes everything queued, runs it in a single transaction
and hands the batch back to the event loop after COMMIT, which resolves each
future, so a write is durable when its caller resumes. The thread never waits
for the loop: as soon as a batch is committed it starts on whatever was
queued meanwhile, so the busier the engine, the bigger the batches, and the
loop resumes one batch's callers while the thread commits the next.

Consecutive writes of the same batchable op on the same table (``add``) go to
SQLite together. Row writes (``submit_row``) are queued as one entry per run
of rows: one flat parameter list, the callers' futures and the value each
future resolves to, rather than a tuple per write, so a batch of adds leaves
little for the cyclic GC to scan and reaches the thread as ready-made
statement parameters. Because a row's future resolves to its caller's result
(the record ``add`` returns), an add needs no coroutine of its own: the
record step awaits the future directly (see ``RecordsMixin.queue_add``).

If anything in the optimistic pass fails, the transaction is
rolled back and the batch replayed with one SAVEPOINT per write, so a bad
write fails only its own caller and the others still commit. Writes that
fail without touching the database (``edit`` of a missing id) return their
error instead of raising, and do not force the replay.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from itertools import chain, groupby
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
#: rows per queued row entry (``submit_row``); a longer run starts a new entry
GROUP_ROWS = 256
#: futures are made without naming the loop: ``Future()`` takes the running loop
#: (this writer's: ``submit`` and ``submit_row`` are called on its thread while it
#: runs), about 800 instructions cheaper than ``Future(loop=...)`` through a partial
_Future = asyncio.Future
_OP = itemgetter(0)
_OP_AND_KEY = itemgetter(0, 1)
_ARG = itemgetter(2)
_flatten = chain.from_iterable
#: futures resolved per loop callback; the resumed callers run (and queue
#: their next writes) before the next slice is resolved
SLICE = 256


def _call_op(ctx: WriteContext, fn: Any, args: list[Any]) -> list[Any]:
    """Marker op of ``GroupWriter.call``: runs ``fn(*args)`` between batches."""
    return [fn(*args[0])]


class WriteContext:
    """Writer-thread state: the connection and which record tables exist."""

    def __init__(self, conn: sqlite3.Connection, indexes: dict[str, tuple[str, ...]]) -> None:
        self.conn = conn
        self.indexes = indexes
        self.tables: set[str] = set()
        self.created: list[str] = []  # tables created by the open transaction
        self.sql: dict[Any, str] = {}  # statement texts built once, by (table, shape)

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
    """Owns the writer thread and the queue of pending writes.

    Loop side: ``submit`` appends to a local list and schedules one flush
    per loop iteration, which hands everything queued to the thread under a
    lock (one lock round trip per iteration, not per write). Thread side:
    take what was handed over, commit it, post the batch back with one
    ``call_soon_threadsafe``.
    """

    def __init__(self, ctx: WriteContext) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        # entries (op, key, arg, future, None), or (op, key, flat row parameters,
        # [futures], [values the futures resolve to]) for a run of ``submit_row`` rows
        self._local: list[tuple[Any, Any, Any, Any, Any]] = []
        # the open row entry
        self._rows: tuple[Any, Any, list[Any], list[Any], list[Any]] | None = None
        self._handed: list[tuple[Any, Any, Any, Any, Any]] = []
        self._lock = threading.Lock()
        # released (by the loop, under _lock) to wake the thread when it is idle:
        # plain lock calls, cheaper than a Condition's Python-level notify
        self._wake = threading.Lock()
        self._wake.acquire()
        self._idle = False  # the thread waits on _wake (read and written under _lock)
        self._stop = False  # close() was called: drain, then exit
        self._closing = False
        self._thread_done = False
        self._delivering = 0  # batches handed back whose futures are not all resolved
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        #: wake committed writes' tasks directly (``_wake_all``): on asyncio's own
        #: loop, whose ``call_soon`` is Python; uvloop's is C and cheaper than that
        self._direct = _DIRECT and isinstance(self._loop, asyncio.BaseEventLoop)
        self._thread = threading.Thread(
            target=self._main, name="cronstack-store-writer", daemon=True
        )
        #: batches committed and writes they held, for tests and metrics
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Op, key: Any, arg: Any) -> asyncio.Future[Any]:
        """Queue one write; the future resolves after its batch commits."""
        if self._closing:
            raise StoreError("the store is closed; open it again to write")
        fut = _Future()
        self._rows = None  # a later row must not jump ahead of this write
        local = self._local
        local.append((op, key, arg, fut, None))
        if len(local) == 1:
            self._loop.call_soon(self._flush)
        return fut

    def submit_row(
        self, op: Op, key: Any, row: tuple[Any, ...], value: Any = None
    ) -> asyncio.Future[Any]:
        """Queue one row write of batchable ``op``; like ``submit``, cheaper per write.

        The future resolves to ``value`` once the row is committed (``op``
        returns nothing for rows), or to the row's error: the caller can
        hand the future itself to whoever awaits the result, with no
        coroutine in between. Consecutive rows of the same op and key share
        one queue entry: their values are appended to one flat list (``op``
        receives the rows of a run as one flat list, ``len(row)`` values
        each), their futures and results to two more. Every row of an op
        must have the same width.
        """
        if self._closing:
            raise StoreError("the store is closed; open it again to write")
        fut = _Future()
        entry = self._rows
        if entry is not None and entry[0] is op and entry[1] == key and len(entry[3]) < GROUP_ROWS:
            entry[2].extend(row)
            entry[3].append(fut)
            entry[4].append(value)
            return fut
        entry = self._rows = (op, key, list(row), [fut], [value])
        local = self._local
        local.append(entry)
        if len(local) == 1:
            self._loop.call_soon(self._flush)
        return fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the writer thread, between batches."""
        if self._closing:
            raise StoreError("the store is closed; open it again to use it")
        return await self.submit(_call_op, fn, args)

    async def close(self) -> None:
        """Commit everything queued, then stop the writer thread."""
        if not self._closing:
            self._closing = True
            self._flush()
            with self._lock:
                self._stop = True
                self._wake_thread()
        await asyncio.shield(self._stopped)

    # -- event-loop side -------------------------------------------------------

    def _flush(self) -> None:
        """Hand the writes queued during this loop iteration to the thread."""
        local = self._local
        if not local:
            return
        self._local = []
        self._rows = None
        with self._lock:
            if self._handed:
                self._handed.extend(local)
            else:
                self._handed = local
            self._wake_thread()

    def _wake_thread(self) -> None:
        """Called under ``_lock``: let an idle thread go (one release per wait)."""
        if self._idle:
            self._idle = False
            self._wake.release()

    def _deliver(
        self, batch: list[Any], results: list[Any] | None, start: int = 0, done: int = 0
    ) -> None:
        """Resolve a slice of a committed batch (entries from ``start``, writes
        from ``done``), then schedule the next slice."""
        if start == 0:
            self._delivering += 1
        stop, done, woken = _resolve(batch, results, start, done, self._direct)
        if stop < len(batch):
            self._loop.call_soon(self._deliver, batch, results, stop, done)
        else:  # counted once every write of the batch is resolved
            self.batches += 1
            self.writes += done
            self._delivering -= 1
            self._maybe_stopped()
        if woken:  # after the bookkeeping: the callers see the batch counted
            _wake_all(woken)

    def _exited(self) -> None:
        self._thread_done = True
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self._thread_done and not self._delivering and not self._stopped.done():
            self._stopped.set_result(None)

    # -- writer thread ---------------------------------------------------------

    def _main(self) -> None:
        """Take what was handed over, commit it, post it back; until closed and drained."""
        loop = self._loop
        try:
            while True:
                with self._lock:
                    batch = self._take()
                    if batch is None:
                        if self._stop:
                            return
                        self._idle = True
                if batch is None:
                    self._wake.acquire()  # until _flush or close releases it
                    continue
                results = self._commit(batch)
                loop.call_soon_threadsafe(self._deliver, batch, results)
        except RuntimeError:  # the event loop is closed: nobody awaits these writes
            return
        finally:
            try:
                loop.call_soon_threadsafe(self._exited)
            except RuntimeError:
                pass

    def _take(self) -> list[Any] | None:
        """Under ``_lock``: the next batch, at most about MAX_BATCH writes (None: nothing).

        Writes are counted only when there are enough entries to exceed it
        (a row entry holds up to GROUP_ROWS), so the loop side counts nothing.
        """
        handed = self._handed
        if not handed:
            return None
        if len(handed) * GROUP_ROWS <= MAX_BATCH or _count(handed) <= MAX_BATCH:
            self._handed = []
            return handed
        taken = n = 0
        while taken < MAX_BATCH:
            taken += _writes_of(handed[n])
            n += 1
        batch = handed[:n]
        del handed[:n]
        return batch

    def _commit(self, batch: list[tuple[Op, Any, Any, Any, Any]]) -> list[Any] | None:
        """Results of ``batch``: ``call`` items run alone, between transactions."""
        try:
            if _call_op not in map(_OP, batch):  # the common case, checked in C
                return self._apply(batch)
            results: list[Any] = []
            for is_call, run in groupby(batch, lambda item: item[0] is _call_op):
                items = list(run)
                if is_call:
                    for _, fn, args, _, _ in items:
                        try:
                            results.append(fn(*args))
                        except Exception as exc:  # the caller gets its own error
                            results.append(exc)
                else:
                    out = self._apply(items)
                    results.extend([None] * _count(items) if out is None else out)
            return results
        except Exception as exc:  # a defect in _apply: fail the batch, keep serving
            _rollback(self._ctx.conn)
            self._ctx.forget_created(0)
            return [
                WriteFailed(f"the write batch failed unexpectedly ({exc!r})")
                for _ in range(_count(batch))
            ]

    def _apply(self, batch: list[tuple[Op, Any, Any, Any, Any]]) -> list[Any] | None:
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

    def _optimistic(self, batch: list[tuple[Op, Any, Any, Any, Any]]) -> list[Any] | None:
        ctx = self._ctx
        results: list[Any] = []
        trivial = True  # every result None: the common case of a batch of adds
        for (op, key, rows), run in groupby(batch, _run_key):
            items = list(run)
            if rows:  # one flat parameter list for the whole run of rows
                if len(items) == 1:
                    groups = [(items[0][2], len(items[0][3]))]
                else:
                    groups = [(list(_flatten(map(_ARG, items))), _count(items))]
            elif key is None:  # not batchable: one call per write
                groups = [([item[2]], 1) for item in items]
            else:
                groups = [(list(map(_ARG, items)), len(items))]
            for args, n in groups:
                out = op(ctx, key, args)
                if out is None:
                    results.extend([None] * n)
                else:
                    results.extend(out)
                    trivial = False
        return None if trivial else results

    def _isolated(self, batch: list[tuple[Op, Any, Any, Any, Any]]) -> list[Any]:
        ctx = self._ctx
        conn = ctx.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return _failed(batch, exc, "starting a write transaction")
        results: list[Any] = []
        try:
            for op, key, arg, fut, _ in batch:
                if type(fut) is list:  # a run of rows: each row alone
                    width = len(arg) // len(fut)
                    for i in range(0, len(arg), width):
                        results.append(self._one(op, key, arg[i : i + width]))
                else:
                    results.append(self._one(op, key, [arg]))
        except _TransactionLost as lost:  # the writes that had succeeded went with it
            ctx.forget_created(0)
            return _failed(batch, lost.cause, lost.what)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            ctx.forget_created(0)
            return _failed(batch, exc, "committing writes")
        del ctx.created[:]
        return results

    def _one(self, op: Op, key: Any, args: Any) -> Any:
        """The result of one write, under its own SAVEPOINT (its error, if it fails)."""
        ctx = self._ctx
        conn = ctx.conn
        mark = len(ctx.created)
        conn.execute("SAVEPOINT w")
        try:
            out = op(ctx, key, args)
        except Exception as exc:
            if not conn.in_transaction:  # SQLite rolled it all back (disk full, I/O error)
                raise _TransactionLost(exc, getattr(op, "what", "writing")) from exc
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
            ctx.forget_created(mark)
            what = getattr(op, "what", "writing")
            return translate(exc, what, record=getattr(op, "record", False))
        conn.execute("RELEASE w")
        return out[0] if out is not None else None


class _TransactionLost(Exception):
    """A write failed and SQLite rolled back the whole transaction with it.

    SQLite may do that on SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM or
    SQLITE_BUSY: the savepoint is gone, and so are the writes of the batch
    that had succeeded. Every write of the batch then fails with this error.
    """

    def __init__(self, cause: Exception, what: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.what = what


def _run_key(item: tuple[Any, Any, Any, Any, Any]) -> tuple[Any, Any, bool]:
    """Writes that go to ``op`` together: same op, same key, same kind of entry."""
    return item[0], item[1], type(item[3]) is list


def _writes_of(item: tuple[Any, Any, Any, Any, Any]) -> int:
    return len(item[3]) if type(item[3]) is list else 1


def _count(batch: list[Any]) -> int:
    """Writes in ``batch`` (a row entry holds several)."""
    return sum(map(_writes_of, batch))


def _failed(batch: list[Any], exc: Exception, what: str) -> list[Any]:
    """One error per write of a batch that failed as a whole (each caller its own)."""
    record = [getattr(item[0], "record", False) for item in batch for _ in range(_writes_of(item))]
    return [translate(exc, what, record=r) for r in record]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _resolve(
    batch: list[Any], results: list[Any] | None, start: int, done: int, direct: bool = False
) -> tuple[int, int, list[Any]]:
    """Resolve the futures of entries from ``start`` until at least SLICE writes.

    ``done`` counts the writes resolved before ``start`` (the index into
    ``results``; None means every result is None). Returns the next entry,
    the new count and the wake-ups to run. A row's future gets the value
    queued with it unless its result is an error (row ops return nothing on
    success). Kept inline: it runs once per write on the event loop.

    With ``direct``, a future awaited by a task and nothing else is resolved
    without its wake-up being scheduled; the caller runs those wake-ups
    (``_wake_all``) once the slice is resolved.
    """
    stop = start
    end = len(batch)
    limit = done + SLICE
    woken: list[Any] = []
    wake = woken.append
    if results is None:  # the common case: a batch of adds, every result None
        while stop < end and done < limit:
            entry = batch[stop]
            stop += 1
            futs = entry[3]
            if type(futs) is list:
                for fut, value in zip(futs, entry[4]):
                    if fut.done():  # a cancelled caller's write committed anyway
                        continue
                    if direct:
                        cbs = fut._callbacks
                        if cbs is not None and len(cbs) == 1:
                            cb, ctx = cbs[0]
                            if type(getattr(cb, "__self__", None)) is _Task:
                                fut.remove_done_callback(cb)
                                fut.set_result(value)
                                wake((ctx, cb, fut))
                                continue
                    fut.set_result(value)
                done += len(futs)
            else:
                if not futs.done():
                    futs.set_result(None)
                done += 1
    else:
        while stop < end and done < limit:
            entry = batch[stop]
            stop += 1
            futs = entry[3]
            if type(futs) is list:
                pairs: Any = zip(futs, entry[4])
            else:
                pairs = ((futs, None),)
            for fut, value in pairs:
                result = results[done]
                done += 1
                if fut.done():  # its caller was cancelled; the write committed anyway
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(value if result is None else result)
    return stop, done, woken


#: The C ``asyncio.Task``; a future whose one callback is such a task's wake-up
#: may have that task woken directly (``_wake_all``).
_Task = asyncio.Task
#: ``_callbacks`` of the C future (CPython 3.11+): (callback, context) pairs
_DIRECT = hasattr(asyncio.Future, "_callbacks")


def _wake_all(woken: list[tuple[Any, Any, Any]]) -> None:
    """Run the wake-ups of tasks whose futures were resolved without scheduling them.

    ``fut.set_result`` would schedule each with ``loop.call_soon`` (on the
    asyncio loop: a Python call and a ``Handle`` per write, then the loop's
    dispatch of it); here each runs in its context as that handle would, in
    the order the futures were resolved, from this one loop callback. Every
    future is resolved before the first task runs, so a task that cancels
    another sees what it would have seen. Should one raise (only
    KeyboardInterrupt or SystemExit leave a task's step), the wake-ups not run
    yet are scheduled the ordinary way before the error goes on.
    """
    i = 0
    n = len(woken)
    try:
        while i < n:
            ctx, cb, fut = woken[i]
            i += 1
            ctx.run(cb, fut)
    except BaseException:
        for ctx, cb, fut in woken[i:]:
            fut.get_loop().call_soon(cb, fut, context=ctx)
        raise
