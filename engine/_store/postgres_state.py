"""Engine state on PostgreSQL: runs, traces, task state, and the engines sharing the database.

Row checks and encodings are ``state.py``'s (the same errors, the same
defaults). What makes several engines safe on one database:

- ``claim_fire(s)``: ``INSERT ... ON CONFLICT (task, scheduled_at) WHERE
  trigger IN ('schedule', 'catchup') DO NOTHING`` on a unique index: a fire
  has one row whatever the number of engines; the one whose insert took is
  the one that runs it.
- ``claim_run``: ``UPDATE ... WHERE id = $ AND status = 'queued'``: the row
  lock lets one engine move it to running; the others see it no longer queued.
- ``claim_fires_checked``: the claim of engines that each see only their own
  runs: under a transaction-level advisory lock (one for every engine's
  checked claims, on a pool connection, committed before it returns: held
  for that transaction only, never beside other writes), it reads the
  task's stored ``paused`` and its ``running`` runs, then inserts. Two
  engines cannot both count a task idle.
- ``cancel_queued``: ``UPDATE ... SET status = 'cancelled' WHERE id = $ AND
  status = 'queued'``: claim_run's condition, one write.
- liveness: ``register_engine(engine_id)`` stores the engine in
  ``cronstack_engines`` and takes a session-level advisory lock on its
  ``lock_key`` on a connection held for the store's lifetime. PostgreSQL drops
  the lock when that session ends (the process died, or its connection did).
  ``recover_running`` marks crashed only the runs left running by engines
  whose lock nobody holds (read from ``pg_locks``), never a live engine's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from engine._store import codec
from engine._store.errors import RunNotFound, StoreError, StoreLocked, WriteOutcomeUnknown
from engine._store.postgres_errors import commit_error, roll_back, translate_pg
from engine._store.postgres_schema import LOCK_NAMESPACE
from engine._store.postgres_writer import PgWriter
from engine._store.state import (
    _CANCEL_QUEUED_SQL,
    _CRASH_ERROR,
    _FINISHED,
    _RUN_ORDER,
    _UNSET,
    RUN_COLUMNS,
    StateMixin,
    _run,
    skip_error,
)

__all__ = ("PgStateMixin", "LIVE_ENGINE")

_COLS = ", ".join(RUN_COLUMNS)
_SELECT = f"SELECT {_COLS} FROM cronstack_runs"
_TRACE_SQL = "INSERT INTO cronstack_traces (run_id, entries, created_at) VALUES ($1, $2, $3)"
#: SQL true when the engine of run row ``r`` holds its liveness lock
LIVE_ENGINE = (
    "EXISTS (SELECT 1 FROM cronstack_engines e JOIN pg_locks l ON l.locktype = 'advisory' "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND l.classid = {LOCK_NAMESPACE}::oid AND l.objid = e.lock_key::oid AND l.objsubid = 2 AND l.granted "
    "WHERE e.engine_id = r.engine_id)"
)


async def _claim_row(conn: Any, row: dict[str, Any]) -> str | None:
    """Insert fire ``row`` unless its fire has a row; the stored status when the row is this
    claim's (inserted now, or by an earlier attempt of the same claim whose outcome was unknown:
    same run id), else None (another engine's claim)."""
    if await conn.fetchval(_insert_sql(row, _FIRE_CONFLICT), *_floats(row)) is not None:
        return row["status"]
    return await conn.fetchval(
        "SELECT status FROM cronstack_runs WHERE task = $1 AND scheduled_at = $2 "
        "AND trigger IN ('schedule', 'catchup') AND id = $3",
        row["task"], float(row["scheduled_at"]), row["id"])


def _insert_sql(cols: Iterable[str], conflict: str = "") -> str:
    cols = list(cols)
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return f"INSERT INTO cronstack_runs ({', '.join(cols)}) VALUES ({marks}){conflict}"


#: the second key of the transaction-level advisory lock of ``claim_fires_checked``
#: (the first is LOCK_NAMESPACE; session-level liveness locks use (LOCK_NAMESPACE, lock_key))
CLAIM_LOCK_KEY = -1
_PG_CANCEL_QUEUED = _CANCEL_QUEUED_SQL.replace("?", "{}").format("$1", "$2", "$3", "$4")
_FIRE_CONFLICT = " ON CONFLICT (task, scheduled_at) WHERE trigger IN ('schedule', 'catchup') DO NOTHING RETURNING 1"


def _floats(row: dict[str, Any]) -> list[Any]:
    """Row values for asyncpg: times as floats (a whole int would be refused for float8)."""
    return [float(v) if isinstance(v, int) and not isinstance(v, bool) and k not in ("attempt",) else v
            for k, v in row.items()]


async def _update(conn: Any, run_id: str, fields: dict[str, Any]) -> None:
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(fields, 1))
    status = await conn.execute(f"UPDATE cronstack_runs SET {sets} WHERE id = ${len(fields) + 1}",
                                *_floats(fields), run_id)
    if status == "UPDATE 0":
        raise RunNotFound(f"no run with id {run_id!r} is stored")


class PgStateMixin:
    _writer: PgWriter
    _clock: Callable[[], float]
    _fetch: Callable[..., Awaitable[list[Any]]]
    _new_run: Callable[..., dict[str, Any]]
    _pool: Any
    _closing: Any
    _updated: Callable[..., dict[str, Any]]

    #: fires checked as SQLite's claim_fires checks them
    _fire_rows = StateMixin._fire_rows

    async def _state_read(self, sql: str, params: Iterable[Any], what: str) -> list[Any]:
        try:
            return await self._fetch(sql, *params)
        except Exception as exc:
            raise translate_pg(exc, what, reading=True) from exc

    def insert_run(self, row: dict[str, Any]) -> Awaitable[None]:
        full = self._new_run(row, "insert_run")

        async def op(conn: Any) -> None:
            try:
                await conn.execute(_insert_sql(full), *_floats(full))
            except Exception as exc:
                if getattr(exc, "sqlstate", None) == "23505":
                    raise StoreError(f"run {full['id']!r} cannot be stored ({exc}); run ids must be unique") from exc
                raise

        return self._writer.submit(op, what="storing a run")

    async def claim_fire(self, task: str, scheduled_at: float, run_row: dict[str, Any]) -> bool:
        row = dict(run_row, task=task, scheduled_at=scheduled_at)
        row.setdefault("trigger", "schedule")
        if row["trigger"] not in ("schedule", "catchup"):
            raise StoreError(f"claim_fire: trigger must be 'schedule' or 'catchup', got {row['trigger']!r}")
        return (await self._claim([self._new_run(row, "claim_fire")]))[0]

    async def claim_fires(self, rows: list[dict[str, Any]]) -> list[bool]:
        checked = []
        for run_row in rows:
            row = dict(run_row)
            row.setdefault("trigger", "schedule")
            if row["trigger"] not in ("schedule", "catchup") or "scheduled_at" not in row:
                raise StoreError(
                    "claim_fires: every row needs a scheduled_at and the trigger "
                    f"'schedule' or 'catchup', got {run_row!r}")
            checked.append(self._new_run(row, "claim_fires"))
        return await self._claim(checked) if checked else []

    async def _claim(self, rows: list[dict[str, Any]]) -> list[bool]:
        async def op(conn: Any) -> list[bool]:
            return [await _claim_row(conn, r) is not None for r in rows]

        try:
            return await self._writer.submit(op, what="claiming scheduled fires")
        except WriteOutcomeUnknown:
            # the claim may have committed: claimed again, a fire whose row carries our run id is ours
            return await self._writer.submit(op, what="claiming scheduled fires")

    async def claim_fires_checked(self, rows: list[dict[str, Any]], limits: list[int | None]) -> list[str]:
        checked = self._fire_rows(rows, "claim_fires_checked")
        if len(limits) != len(checked):
            raise StoreError("claim_fires_checked: one limit (or None) per row")
        if not checked:
            return []
        if self._closing is not None:
            raise StoreError("the store is closed; open it again to write")
        try:
            return await self._claim_checked(checked, limits)
        except WriteOutcomeUnknown:
            # the claim may have committed: claimed again, fires whose rows carry our run ids are ours
            return await self._claim_checked(checked, limits)

    async def _claim_checked(self, checked: list[dict[str, Any]], limits: list[int | None]) -> list[str]:
        now = float(self._clock())
        tasks = sorted({r["task"] for r in checked})
        counted = sorted({r["task"] for r, limit in zip(checked, limits, strict=True) if limit is not None})
        try:
            async with self._pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    out = await self._claim_locked(conn, checked, limits, tasks, counted, now)
                except BaseException:
                    await roll_back(conn, tr)
                    raise
                try:
                    await tr.commit()
                except Exception as exc:
                    raise commit_error(exc, "claiming scheduled fires") from exc
                return out
        except StoreError:
            raise
        except Exception as exc:
            raise translate_pg(exc, "claiming scheduled fires") from exc

    @staticmethod
    async def _claim_locked(conn: Any, checked: list[dict[str, Any]], limits: list[int | None],
                            tasks: list[str], counted: list[str], now: float) -> list[str]:
        # held until this transaction commits: every engine's checked claims, one at a time
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, CLAIM_LOCK_KEY)
        paused = {r[0] for r in await conn.fetch(
            "SELECT task FROM cronstack_task_state WHERE task = ANY($1::text[]) AND paused", tasks)}
        counts: dict[str, int] = dict.fromkeys(counted, 0)
        if counted:
            counts.update((r[0], r[1]) for r in await conn.fetch(
                "SELECT task, count(*) FROM cronstack_runs WHERE status = 'running' "
                "AND task = ANY($1::text[]) GROUP BY task", counted))
        out = []
        for row, limit in zip(checked, limits, strict=True):
            task = row["task"]
            if task in paused:
                out.append("paused")
                continue
            if limit is not None and counts[task] >= limit:
                row = dict(row, status="skipped", started_at=None, finished_at=now,
                           error=codec.encode_lenient(skip_error(counts[task])))
            stored = await _claim_row(conn, row)
            if stored is None:
                out.append("taken")
                continue
            outcome = "skipped" if stored == "skipped" else "claimed"
            if outcome == "claimed" and row["status"] == "running" and task in counts:
                counts[task] += 1
            out.append(outcome)
        return out

    async def cancel_queued(self, run_id: str, finished_at: float, error: dict[str, Any]) -> bool:
        text = codec.encode_lenient(error)
        now = float(self._clock())

        async def op(conn: Any) -> bool:
            return await conn.execute(_PG_CANCEL_QUEUED, float(finished_at), text, now, run_id) == "UPDATE 1"

        return await self._writer.submit(op, what=f"cancelling queued run {run_id!r}")

    def update_run(self, run_id: str, fields: dict[str, Any]) -> Awaitable[None]:
        fields = self._updated(run_id, fields, "update_run")

        async def op(conn: Any) -> None:
            await _update(conn, run_id, fields)

        return self._writer.submit(op, what=f"updating run {run_id!r}")

    def finish_run(self, run_id: str, fields: dict[str, Any],
                   trace: str | list[dict[str, Any]] | None = None) -> Awaitable[None]:
        fields = self._updated(run_id, fields, "finish_run")
        text = trace if type(trace) is str else codec.encode_lenient(list(trace)) if trace else None

        async def op(conn: Any) -> None:
            await _update(conn, run_id, fields)
            if text is not None:
                await conn.execute(_TRACE_SQL, run_id, text, float(fields["updated_at"]))

        return self._writer.submit(op, what=f"finishing run {run_id!r}")

    async def claim_run(self, run_id: str, engine_id: str, started_at: float) -> bool:
        now = self._clock()

        async def op(conn: Any) -> bool:
            status = await conn.execute(
                "UPDATE cronstack_runs SET status = 'running', engine_id = $1, started_at = $2, updated_at = $3 "
                "WHERE id = $4 AND status = 'queued'", engine_id, float(started_at), float(now), run_id)
            return status == "UPDATE 1"

        return await self._writer.submit(op, what=f"claiming run {run_id!r}")

    async def recover_running(self, engine_id: str) -> list[dict[str, Any]]:
        now = float(self._clock())
        await self._keep_alive()

        async def op(conn: Any) -> list[dict[str, Any]]:
            rows = await conn.fetch(
                f"UPDATE cronstack_runs r SET status = 'crashed', finished_at = $2, updated_at = $2, error = $3 "
                f"WHERE status = 'running' AND (engine_id IS NULL OR engine_id <> $1) AND NOT {LIVE_ENGINE} "
                f"RETURNING seq, {', '.join('r.' + c for c in RUN_COLUMNS)}",
                engine_id, now, codec.encode(_CRASH_ERROR))
            # engines that are gone and left nothing running: forget them
            await conn.execute(
                "DELETE FROM cronstack_engines e WHERE engine_id <> $1 AND NOT EXISTS (SELECT 1 FROM "
                "cronstack_runs x WHERE x.engine_id = e.engine_id AND x.status = 'running') AND NOT "
                + LIVE_ENGINE.replace("e.engine_id = r.engine_id", "e2.engine_id = e.engine_id")
                .replace("cronstack_engines e JOIN", "cronstack_engines e2 JOIN").replace("= e.lock_key", "= e2.lock_key"),
                engine_id)
            return [_run(tuple(r)[1:]) for r in sorted(rows, key=lambda r: r[0])]

        return await self._writer.submit(op, what="recovering runs of engines that stopped")

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = await self._state_read(f"{_SELECT} WHERE id = $1", (run_id,), "reading a run")
        return _run(tuple(rows[0])) if rows else None

    async def list_runs(self, task: str | None = None, *, status: str | Iterable[str] | None = None,
                        limit: int = 50, offset: int = 0, newest_first: bool = True,
                        by: str = "created_at") -> list[dict[str, Any]]:
        where, params = self._run_where(task, status)
        order = "DESC" if newest_first else "ASC"
        key = _RUN_ORDER.get(by)
        if key is None:
            raise StoreError(f"runs can be listed by {' or '.join(map(repr, _RUN_ORDER))}, not {by!r}")
        n = len(params)
        rows = await self._state_read(
            f"{_SELECT} WHERE {where} ORDER BY {key} {order}, seq {order} LIMIT ${n + 1} OFFSET ${n + 2}",
            (*params, limit, offset), "listing runs")
        return [_run(tuple(r)) for r in rows]

    async def count_runs(self, task: str | None = None, status: str | Iterable[str] | None = None) -> int:
        where, params = self._run_where(task, status)
        rows = await self._state_read(f"SELECT count(*) FROM cronstack_runs WHERE {where}", params, "counting runs")
        return rows[0][0]

    @staticmethod
    def _run_where(task: str | None, status: str | Iterable[str] | None) -> tuple[str, list[Any]]:
        parts, params = ["TRUE"], []
        if task is not None:
            params.append(task)
            parts.append(f"task = ${len(params)}")
        if status is not None:
            params.append([status] if isinstance(status, str) else list(status))
            parts.append(f"status = ANY(${len(params)}::text[])")
        return " AND ".join(parts), params

    async def due_runs(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._state_read(
            f"{_SELECT} WHERE status = 'queued' AND not_before <= $1 ORDER BY not_before, seq LIMIT $2",
            (float(now), limit), "reading due runs")
        return [_run(tuple(r)) for r in rows]

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        rows = await self._state_read(
            f"SELECT DISTINCT ON (task) {_COLS} FROM cronstack_runs ORDER BY task, created_at DESC, seq DESC",
            (), "reading the last runs")
        return {r[1]: _run(tuple(r)) for r in rows}

    async def add_trace(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        if entries:
            text = codec.encode_lenient(list(entries))
            now = float(self._clock())

            async def op(conn: Any) -> None:
                await conn.execute(_TRACE_SQL, run_id, text, now)

            await self._writer.submit(op, what="storing a trace")

    async def get_trace(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._state_read(
            "SELECT entries FROM cronstack_traces WHERE run_id = $1 ORDER BY seq", (run_id,), "reading a trace")
        return [e for r in rows for e in codec.decode(r[0])]

    async def get_task_state(self, task: str) -> dict[str, Any] | None:
        rows = await self._state_read(
            "SELECT task, last_fire, paused, extra, updated_at FROM cronstack_task_state WHERE task = $1",
            (task,), "reading task state")
        return _state(rows[0]) if rows else None

    async def all_task_states(self) -> dict[str, dict[str, Any]]:
        rows = await self._state_read(
            "SELECT task, last_fire, paused, extra, updated_at FROM cronstack_task_state", (), "reading task states")
        return {r[0]: _state(r) for r in rows}

    async def set_task_state(self, task: str, **fields: Any) -> None:
        last_fire = fields.pop("last_fire", _UNSET)
        paused = fields.pop("paused", _UNSET)
        for reserved in ("task", "updated_at"):
            if reserved in fields:
                raise StoreError(f"set_task_state: {reserved!r} is set by the store")
        now = float(self._clock())

        async def op(conn: Any) -> None:
            await conn.execute("INSERT INTO cronstack_task_state (task, updated_at) VALUES ($1, $2) "
                               "ON CONFLICT (task) DO NOTHING", task, now)
            row = await conn.fetchrow(
                "SELECT last_fire, paused, extra FROM cronstack_task_state WHERE task = $1 FOR UPDATE", task)
            merged = codec.decode(row[2])
            merged.update(fields)
            await conn.execute(
                "UPDATE cronstack_task_state SET last_fire = $2, paused = $3, extra = $4, updated_at = $5 "
                "WHERE task = $1", task,
                row[0] if last_fire is _UNSET else (None if last_fire is None else float(last_fire)),
                row[1] if paused is _UNSET else bool(paused), codec.encode_lenient(merged), now)

        await self._writer.submit(op, what=f"storing the state of task {task!r}")

    async def prune_history(self, task: str | None, before: float) -> int:
        params: list[Any] = [float(before), list(_FINISHED)]
        where = "created_at < $1 AND status = ANY($2::text[])"
        if task is not None:
            params.append(task)
            where += " AND task = $3"

        async def op(conn: Any) -> int:
            await conn.execute(
                f"DELETE FROM cronstack_traces WHERE run_id IN (SELECT id FROM cronstack_runs WHERE {where})", *params)
            status = await conn.execute(f"DELETE FROM cronstack_runs WHERE {where}", *params)
            return int(status.split()[-1])

        return await self._writer.submit(op, what="pruning history")

    # -- liveness ------------------------------------------------------------------------

    _live_conn: Any
    _live_id: str | None
    _connect: Callable[[], Awaitable[Any]]

    async def register_engine(self, engine_id: str) -> None:
        """Hold this engine's liveness lock (see the module's docstring) until ``close``."""
        if self._live_id == engine_id and self._live_conn is not None and not self._live_conn.is_closed():
            return
        if self._live_id not in (None, engine_id):
            raise StoreError(f"this store already serves engine {self._live_id!r}; open another store")
        try:
            conn = self._live_conn if self._live_conn is not None and not self._live_conn.is_closed() else None
            conn = conn or await self._connect()
            self._live_conn = conn
            async with conn.transaction():
                key = await conn.fetchval(
                    "INSERT INTO cronstack_engines (engine_id, started_at) VALUES ($1, $2) ON CONFLICT (engine_id) "
                    "DO UPDATE SET started_at = excluded.started_at RETURNING lock_key", engine_id, float(self._clock()))
                got = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, key)
        except StoreError:
            raise
        except Exception as exc:
            raise translate_pg(exc, f"registering engine {engine_id!r}") from exc
        if not got:
            raise StoreLocked(f"another live engine already uses the engine id {engine_id!r} on this database; "
                              "give each engine its own id")
        self._live_id = engine_id

    async def _keep_alive(self) -> None:
        """Take the liveness lock again if its connection was lost (its runs may have been taken as crashed)."""
        if self._live_id is not None and (self._live_conn is None or self._live_conn.is_closed()):
            import logging

            logging.getLogger("cronstack.store").error(
                "the connection holding engine %s's liveness lock was lost; taking the lock again "
                "(other engines may have marked its running runs crashed meanwhile)", self._live_id)
            self._live_conn = None
            await self.register_engine(self._live_id)


def _state(row: Any) -> dict[str, Any]:
    state = codec.decode(row[3])
    state.update(task=row[0], last_fire=row[1], paused=bool(row[2]), updated_at=row[4])
    return state
