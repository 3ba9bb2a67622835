"""One ordered writer connection: writes run in the order they were made, a batch per transaction.

Concurrent writes queue; the writer task takes everything queued as one batch
and runs it in one transaction, each write under its own savepoint so that a
failing write fails only its caller (as the SQLite writer's replay does).
Every caller's future resolves after COMMIT: a write is durable and visible
to any later read when its coroutine returns (PostgreSQL's
``synchronous_commit`` is on by default). Order matters: runs inserted
together keep their insertion order, and two writes of one run land in the
order they were made. A lost connection fails the batch it happened in
(translated, never an asyncpg error) and is reopened for the next one; lost
during COMMIT, the batch's writes may have been stored, and their callers get
``WriteOutcomeUnknown`` rather than a failure (writes that had failed under
their savepoint keep their own error).

Writes of one kind may also be submitted with a ``group``: ``(key, many)``.
Consecutive queued writes with the same key run as one statement,
``await many(conn, [args, ...])`` (a list of results, one per write, in
order): record adds of one table are one multi-row INSERT instead of a
savepoint and two statements each. If that statement fails, nothing of it
stays (its savepoint, or the whole transaction when it is the batch's only
work, rolls back) and the same writes run again one by one, each under its
own savepoint as above, so a failing write still fails only its caller, with
its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import asyncpg

from engine._store.errors import CronstackError, StoreError
from engine._store.postgres_errors import commit_error, roll_back, translate_pg

__all__ = ("PgWriter",)

#: writes in one transaction at most
MAX_BATCH = 1_000

#: ``(key, many)``: consecutive writes with one key may run as ``await many(conn, [args, ...])``
Group = tuple[Hashable, Callable[[Any, list[tuple[Any, ...]]], Awaitable[list[Any]]]]


#: times a write (or a batch without savepoints) chosen as a deadlock's victim runs again
DEADLOCK_RETRIES = 3


def _deadlock(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == "40P01"


class _Write:
    __slots__ = ("op", "args", "fut", "what", "record", "group")

    def __init__(self, op: Callable[..., Awaitable[Any]], args: tuple[Any, ...], fut: asyncio.Future[Any],
                 what: str, record: bool, group: Group | None) -> None:
        self.op, self.args, self.fut, self.what, self.record, self.group = op, args, fut, what, record, group


class _Replay(Exception):
    """A grouped statement failed as the batch's only work: roll back, run the writes one by one."""


def _segments(batch: list[_Write], grouped: bool) -> list[list[_Write]]:
    """``batch`` cut into runs of consecutive writes of one group (when ``grouped``) and single writes."""
    out: list[list[_Write]] = []
    for w in batch:
        if grouped and w.group is not None and out and out[-1][0].group is not None \
                and out[-1][0].group[0] == w.group[0]:
            out[-1].append(w)
        else:
            out.append([w])
    return out


class PgWriter:
    def __init__(self, connect: Callable[[], Awaitable[Any]], on_failure: Callable[[], None] = lambda: None) -> None:
        self._connect = connect
        #: called when a write fails (its transaction or savepoint rolled back): caches of what
        #: the database holds (tables created) are dropped
        self._on_failure = on_failure
        self._conn: Any = None
        self._queue: list[_Write] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.writes = 0

    async def start(self) -> None:
        self._conn = await self._connect()
        self._task = asyncio.ensure_future(self._run())

    def submit(self, op: Callable[..., Awaitable[Any]], *args: Any, what: str = "writing",
               record: bool = False, group: Group | None = None) -> asyncio.Future[Any]:
        """Queue ``await op(conn, *args)``; the future resolves to its result after COMMIT.
        ``group``: see the module's docstring (``op`` is what runs when the group's statement fails)."""
        if self._closed:
            raise StoreError("the store is closed; open it again to write")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(op, args, fut, what, record, group))
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

    async def _one(self, conn: Any, w: _Write, results: list[tuple[bool, Any]]) -> None:
        """``w`` alone under a savepoint: a failure undoes this write only and goes to its caller.
        Chosen as a deadlock's victim, it runs again (the rollback to its savepoint released what
        it had locked, so the other transaction goes on)."""
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                async with conn.transaction():
                    results.append((True, await w.op(conn, *w.args)))
                return
            except Exception as exc:
                self._on_failure()
                if _deadlock(exc) and attempt < DEADLOCK_RETRIES:
                    continue
                results.append((False, translate_pg(exc, w.what, record=w.record)))
                return

    async def _group(self, conn: Any, seg: list[_Write], alone: bool, results: list[tuple[bool, Any]]) -> None:
        assert seg[0].group is not None
        many = seg[0].group[1]
        if alone:  # the batch's only work: the transaction is its savepoint
            try:
                got = await many(conn, [w.args for w in seg])
            except (asyncpg.PostgresError, CronstackError) as exc:
                raise _Replay from exc
            results.extend((True, g) for g in got)
            return
        try:
            async with conn.transaction():
                got = await many(conn, [w.args for w in seg])
        except (asyncpg.PostgresError, CronstackError):
            self._on_failure()  # rolled back: what it created is gone
            for w in seg:
                await self._one(conn, w, results)
            return
        results.extend((True, g) for g in got)

    async def _batch(self, batch: list[_Write], grouped: bool = True, attempt: int = 0) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            conn = self._conn
            segments = _segments(batch, grouped)
            tr = conn.transaction()
            await tr.start()
            try:
                for seg in segments:
                    if seg[0].group is not None and grouped:
                        await self._group(conn, seg, len(segments) == 1, results)
                    elif len(segments) == 1:
                        results.append((True, await seg[0].op(conn, *seg[0].args)))
                    else:
                        await self._one(conn, seg[0], results)
            except BaseException:
                await roll_back(conn, tr)
                raise
            try:
                await tr.commit()
            except Exception as exc:  # the outcome of what succeeded in it is not known
                results = [(False, commit_error(exc, w.what, record=w.record) if ok else value)
                           for w, (ok, value) in zip(batch, results, strict=True)]
        except _Replay:
            self._on_failure()
            await self._batch(batch, grouped=False, attempt=attempt)
            return
        except Exception as exc:
            if _deadlock(exc) and attempt < DEADLOCK_RETRIES:  # nothing of it stayed: run it again
                self._on_failure()
                await self._batch(batch, grouped, attempt + 1)
                return
            results = [(False, translate_pg(exc, w.what, record=w.record)) for w in batch]
        if not all(ok for ok, _ in results):
            self._on_failure()
        self.batches += 1
        self.writes += len(batch)
        for w, (ok, value) in zip(batch, results, strict=True):
            if w.fut.done():
                continue
            if ok:
                w.fut.set_result(value)
            else:
                w.fut.set_exception(value)

    async def close(self) -> None:
        """Commit what is queued, then close the connection."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
