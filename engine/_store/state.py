"""Engine state: runs, traces and per-task schedule state.

Writes go through the same group-commit writer as records (a run's status
change is durable when ``update_run`` returns); reads use the read
connection. JSON columns (``result``, ``error``, ``inputs``, trace entries)
are encoded leniently: a value JSON cannot hold is stored as its ``repr``
rather than failing the run that produced it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import lru_cache, partial
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from engine._store import codec
from engine._store.errors import RunNotFound, StoreError, translate
from engine._store.multirow import UPDATE_FROM, execute_rows, values_list
from engine._store.writer import GroupWriter, WriteContext

__all__ = ("StateMixin", "RUN_COLUMNS", "RUN_STATUSES", "RUN_TRIGGERS", "RUN_KINDS")

RUN_COLUMNS = (
    "id",
    "task",
    "kind",
    "trigger",
    "scheduled_at",
    "not_before",
    "started_at",
    "finished_at",
    "attempt",
    "status",
    "result",
    "error",
    "parent_id",
    "inputs",
    "engine_id",
    "created_at",
    "updated_at",
)
RUN_STATUSES = frozenset(
    {"queued", "running", "completed", "failed", "timed_out", "cancelled", "skipped", "crashed"}
)
RUN_TRIGGERS = frozenset({"schedule", "manual", "retry", "catchup", "async_call"})
RUN_KINDS = frozenset({"task", "function"})
_COLUMN_SET = frozenset(RUN_COLUMNS)
_JSON_COLUMNS = frozenset({"result", "error", "inputs"})
_ALLOWED = {"status": RUN_STATUSES, "trigger": RUN_TRIGGERS, "kind": RUN_KINDS}
_FINISHED = ("completed", "failed", "timed_out", "cancelled", "skipped", "crashed")
_SELECT = f"SELECT {', '.join(RUN_COLUMNS)} FROM cronstack_runs"
#: orders of ``list_runs``: when the row was made, or when the run ran (started, else
#: scheduled: a retry is made when its attempt fails but runs later)
_RUN_ORDER = {
    "created_at": "created_at",
    "executed_at": "coalesce(started_at, scheduled_at, created_at)",
}
_MISSING: Any = object()
_flatten = chain.from_iterable
#: what a new run row holds unless its caller says otherwise
_RUN_DEFAULTS: dict[str, Any] = {
    "kind": "task",
    "trigger": "manual",
    "status": "queued",
    "attempt": 1,
    "not_before": None,
    "scheduled_at": None,
}
#: the group-commit key of run writes: consecutive ones reach the writer's op together
_RUNS = "cronstack_runs"
_TRACE_SQL = "INSERT INTO cronstack_traces (run_id, entries, created_at) VALUES (?, ?, ?)"
_CRASH_ERROR = {
    "message": "the engine running this run stopped without finishing it",
    "type": "EngineCrashed",
}


def _run(row: tuple[Any, ...]) -> dict[str, Any]:
    run = dict(zip(RUN_COLUMNS, row))
    for col in _JSON_COLUMNS:
        run[col] = codec.decode(run[col])
    return run


def _check_fields(fields: dict[str, Any], what: str) -> dict[str, Any]:
    """``fields`` checked and with JSON columns encoded, in place: callers pass a dict they own.

    Every run start and finish goes through here, so it allocates nothing
    for a valid row (no key-set difference, no copy) and tests the three
    enumerated columns in one expression; the loop that names the culprit
    runs only when that test fails.
    """
    if not _COLUMN_SET.issuperset(fields):
        unknown = fields.keys() - _COLUMN_SET
        raise StoreError(
            f"{what}: unknown run fields {sorted(unknown)}; known: {list(RUN_COLUMNS)}"
        )
    get = fields.get
    try:
        valid = (
            get("status", "queued") in RUN_STATUSES
            and get("trigger", "manual") in RUN_TRIGGERS
            and get("kind", "task") in RUN_KINDS
        )
    except TypeError:  # an unhashable value: not one of the allowed ones either
        valid = False
    if not valid:
        for col, allowed in _ALLOWED.items():
            value = get(col, _MISSING)
            if value is not _MISSING and not _one_of(value, allowed):
                raise StoreError(f"{what}: {col} {value!r} is not one of {sorted(allowed)}")
    value = get("result")
    if value is not None:
        fields["result"] = codec.encode_lenient(value)
    value = get("error")
    if value is not None:
        fields["error"] = codec.encode_lenient(value)
    value = get("inputs")
    if value is not None:
        fields["inputs"] = codec.encode_lenient(value)
    return fields


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    try:
        return value in allowed
    except TypeError:
        return False


@lru_cache(maxsize=256)
def _insert_sql(cols: tuple[str, ...], conflict: str = "") -> str:
    """The INSERT text for these columns (built once per shape: runs repeat few shapes)."""
    return (
        f"INSERT INTO cronstack_runs ({', '.join(cols)}) "
        f"VALUES ({', '.join('?' * len(cols))}){conflict}"
    )


@lru_cache(maxsize=256)
def _insert_rows_sql(cols: tuple[str, ...], n: int) -> str:
    """The INSERT text for ``n`` rows of these columns (see ``multirow``)."""
    row = "(" + ", ".join("?" * len(cols)) + ")"
    return f"INSERT INTO cronstack_runs ({', '.join(cols)}) VALUES {values_list(row, n)}"


@lru_cache(maxsize=256)
def _update_sql(cols: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in cols)
    return f"UPDATE cronstack_runs SET {sets} WHERE id = ?"


@lru_cache(maxsize=256)
def _update_rows_sql(cols: tuple[str, ...], n: int) -> str:
    """One UPDATE of ``n`` runs: each row of the VALUES list is the new values, then the id."""
    sets = ", ".join(f"{c} = v.column{i}" for i, c in enumerate(cols, 1))
    row = "(" + ", ".join("?" * (len(cols) + 1)) + ")"
    return (
        f"UPDATE cronstack_runs SET {sets} FROM (VALUES {values_list(row, n)}) AS v "
        f"WHERE cronstack_runs.id = v.column{len(cols) + 1}"
    )


# -- writer-thread half ---------------------------------------------------------


def _runs_of_shape(
    items: list[Any], shape_of: Callable[[Any], tuple[str, ...]]
) -> Iterator[tuple[tuple[str, ...], list[Any]]]:
    """Consecutive items with the same columns, in order: one ``executemany`` each.

    Only neighbours are grouped, so the statements run in the order they were
    submitted (rowids, and two writes to one run, keep that order).
    """
    for shape, group in groupby(items, shape_of):
        yield shape, list(group)


#: columns a new run usually leaves empty (NULL is their default): left out of an insert
#: whose rows all leave them empty, so a burst of new runs binds and stores fewer values
_USUALLY_NULL = ("started_at", "finished_at", "result", "error", "parent_id", "inputs")


def _filled_columns(shape: tuple[str, ...], rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """``shape`` without the columns of ``_USUALLY_NULL`` that are None in every row."""
    n = len(rows)
    empty = [
        col
        for col in _USUALLY_NULL
        if col in shape and list(map(itemgetter(col), rows)).count(None) == n
    ]
    return tuple(col for col in shape if col not in empty) if empty else shape


def _op_insert_run(ctx: WriteContext, _key: Any, args: list[dict[str, Any]]) -> None:
    """Insert a batch of runs, a few multi-row statements per run of rows of one shape
    (a burst shares one shape), without the columns every row of it leaves empty.

    A failing row raises: the writer then replays the batch one write at a
    time, so only that row's caller gets the error.
    """
    for shape, rows in _runs_of_shape(args, tuple):
        cols = _filled_columns(shape, rows)
        params = list(_flatten(map(itemgetter(*cols), rows)))
        try:
            execute_rows(ctx.conn, partial(_insert_rows_sql, cols), params, len(cols))
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"run {rows[0]['id']!r} cannot be stored ({exc}); run ids must be unique"
            ) from exc


_FIRE_CONFLICT = (
    " ON CONFLICT (task, scheduled_at) WHERE trigger IN ('schedule', 'catchup') DO NOTHING"
)


def _fields_shape(arg: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(arg[1])


def _op_update_run(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[Any] | None:
    """Update a batch of runs; a missing run fails only its own write (RunNotFound).

    Neighbouring updates of one shape go in a few multi-row statements (see
    ``multirow``), or one ``executemany`` when a run appears twice among them
    (an UPDATE ... FROM would apply an arbitrary one of the two). When the
    row count says some run was missing, that group is redone row by row to
    find which (an update is idempotent, so repeating the found ones changes
    nothing).
    """
    out: list[Any] | None = None
    start = 0
    conn = ctx.conn
    for shape, group in _runs_of_shape(args, _fields_shape):
        sql = _update_sql(shape)
        params = [(*fields.values(), run_id) for run_id, fields in group]
        if UPDATE_FROM and len(group) > 1 and len({run_id for run_id, _ in group}) == len(group):
            flat = [value for p in params for value in p]
            changed = execute_rows(conn, partial(_update_rows_sql, shape), flat, len(shape) + 1)
        else:
            changed = conn.executemany(sql, params).rowcount
        if changed != len(params):
            if out is None:
                out = [None] * len(args)
            for i, p in enumerate(params, start):
                if not ctx.conn.execute(sql, p).rowcount:
                    out[i] = RunNotFound(f"no run with id {args[i][0]!r} is stored")
        start += len(params)
    return out


def _op_finish_run(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[Any] | None:
    """A batch of finished runs: each outcome, and its trace when it has one, in the same transaction.

    A run that is not stored gets RunNotFound and no trace (a trace never
    outlives its run).
    """
    out = _op_update_run(ctx, _key, [(run_id, fields) for run_id, fields, _t, _now in args])
    traces = [
        (run_id, text, now)
        for i, (run_id, _f, text, now) in enumerate(args)
        if text is not None and (out is None or out[i] is None)
    ]
    if traces:
        ctx.conn.executemany(_TRACE_SQL, traces)
    return out


def _op_claim_fires(
    ctx: WriteContext, _key: Any, args: list[list[dict[str, Any]]]
) -> list[list[bool]]:
    """Claim every fire of a wave (one write: a list of rows); per row, whether it was new."""
    execute = ctx.conn.execute
    out = []
    for rows in args:
        claimed = []
        for shape, group in _runs_of_shape(rows, tuple):
            sql = _insert_sql(shape, _FIRE_CONFLICT)
            claimed.extend([execute(sql, tuple(row.values())).rowcount == 1 for row in group])
        out.append(claimed)
    return out


def _op_claim_run(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[bool]:
    sql = (
        "UPDATE cronstack_runs SET status = 'running', engine_id = ?, started_at = ?, "
        "updated_at = ? WHERE id = ? AND status = 'queued'"
    )
    return [ctx.conn.execute(sql, a).rowcount == 1 for a in args]


_CANCEL_QUEUED_SQL = (
    "UPDATE cronstack_runs SET status = 'cancelled', started_at = NULL, finished_at = ?, error = ?, "
    "updated_at = ? WHERE id = ? AND status = 'queued'"
)


def _op_cancel_queued(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[bool]:
    return [ctx.conn.execute(_CANCEL_QUEUED_SQL, a).rowcount == 1 for a in args]


def skip_error(running: int) -> dict[str, Any]:
    """The error of a fire ``claim_fires_checked`` stored skipped: ``running`` runs of its task were running."""
    return {
        "message": f"skipped: the previous run was still running ({running} running in the database, "
        "on any engine)",
        "type": "Skipped",
        "step": None,
    }


def _op_claim_fires_checked(
    ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]
) -> list[list[str]]:
    """``claim_fires_checked``: per wave, per row, paused / taken / skipped / claimed (one transaction)."""
    execute = ctx.conn.execute
    out = []
    for rows, limits, now in args:
        counts: dict[str, int] = {}
        result = []
        for row, limit in zip(rows, limits, strict=True):
            task = row["task"]
            state = execute("SELECT paused FROM cronstack_task_state WHERE task = ?", (task,)).fetchone()
            if state is not None and state[0]:
                result.append("paused")
                continue
            outcome = "claimed"
            if limit is not None:
                if task not in counts:
                    counts[task] = execute(
                        "SELECT count(*) FROM cronstack_runs WHERE task = ? AND status = 'running'", (task,)
                    ).fetchone()[0]
                if counts[task] >= limit:
                    error = codec.encode_lenient(skip_error(counts[task]))
                    row = dict(row, status="skipped", started_at=None, finished_at=now, error=error)
                    outcome = "skipped"
            cols = tuple(row)
            if execute(_insert_sql(cols, _FIRE_CONFLICT), tuple(row.values())).rowcount != 1:
                result.append("taken")
                continue
            if outcome == "claimed" and row["status"] == "running" and task in counts:
                counts[task] += 1
            result.append(outcome)
        out.append(result)
    return out


def _op_recover(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[list[Any]]:
    out = []
    for engine_id, now in args:
        where = "status = 'running' AND (engine_id IS NULL OR engine_id != ?)"
        rows = ctx.conn.execute(f"{_SELECT} WHERE {where} ORDER BY rowid", (engine_id,)).fetchall()
        ctx.conn.execute(
            f"UPDATE cronstack_runs SET status = 'crashed', finished_at = ?, updated_at = ?, "
            f"error = ? WHERE {where}",
            (now, now, codec.encode(_CRASH_ERROR), engine_id),
        )
        crashed = []
        for row in rows:
            run = _run(row)
            run.update(status="crashed", finished_at=now, updated_at=now, error=dict(_CRASH_ERROR))
            crashed.append(run)
        out.append(crashed)
    return out


def _op_add_trace(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> None:
    ctx.conn.executemany(_TRACE_SQL, args)


def _op_set_state(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> None:
    for task, last_fire, paused, extra, now in args:
        row = ctx.conn.execute(
            "SELECT last_fire, paused, extra FROM cronstack_task_state WHERE task = ?", (task,)
        ).fetchone()
        old = row if row is not None else (None, 0, "{}")
        merged = codec.decode(old[2])
        merged.update(extra)
        ctx.conn.execute(
            "INSERT OR REPLACE INTO cronstack_task_state (task, last_fire, paused, extra, "
            "updated_at) VALUES (?, ?, ?, ?, ?)",
            (
                task,
                old[0] if last_fire is _UNSET else last_fire,
                old[1] if paused is _UNSET else int(bool(paused)),
                codec.encode_lenient(merged),
                now,
            ),
        )


def _op_prune(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[int]:
    out = []
    marks = ", ".join(f"'{s}'" for s in _FINISHED)
    for task, before in args:
        where = f"created_at < ? AND status IN ({marks})"
        params: tuple[Any, ...] = (before,)
        if task is not None:
            where += " AND task = ?"
            params += (task,)
        ctx.conn.execute(
            f"DELETE FROM cronstack_traces WHERE run_id IN (SELECT id FROM cronstack_runs WHERE {where})",
            params,
        )
        out.append(ctx.conn.execute(f"DELETE FROM cronstack_runs WHERE {where}", params).rowcount)
    return out


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


# -- event-loop half ------------------------------------------------------------


class StateMixin:
    """The engine's own bookkeeping; every method documented in docs/store.md."""

    _writer: GroupWriter
    _clock: Callable[[], float]
    _fetchall: Callable[[str, tuple[Any, ...] | list[Any]], Awaitable[list[tuple[Any, ...]]]]

    async def _state_read(self, sql: str, params: Any, what: str) -> list[tuple[Any, ...]]:
        try:
            return await self._fetchall(sql, params)
        except sqlite3.Error as exc:
            raise translate(exc, what) from exc

    def _new_run(self, row: dict[str, Any], what: str) -> dict[str, Any]:
        if not isinstance(row.get("id"), str) or not isinstance(row.get("task"), str):
            raise StoreError(f"{what}: a run needs a text 'id' and a text 'task', got {row!r}")
        now = self._clock()
        full = {**_RUN_DEFAULTS, "created_at": now, "updated_at": now, **row}
        if full["not_before"] is None:
            full["not_before"] = full["scheduled_at"] or full["created_at"]
        return _check_fields(full, what)

    # insert_run, update_run and finish_run hand back the write's own future (awaitable like
    # the interface's coroutines) rather than awaiting it in a coroutine of their own: every
    # run makes two of these calls, and a coroutine level costs about as much as the checks.

    def insert_run(self, row: dict[str, Any]) -> Awaitable[None]:
        return self._writer.submit(_op_insert_run, _RUNS, self._new_run(row, "insert_run"))

    async def claim_fire(self, task: str, scheduled_at: float, run_row: dict[str, Any]) -> bool:
        row = dict(run_row, task=task, scheduled_at=scheduled_at)
        row.setdefault("trigger", "schedule")
        if row["trigger"] not in ("schedule", "catchup"):
            raise StoreError(
                f"claim_fire: trigger must be 'schedule' or 'catchup', got {row['trigger']!r}"
            )
        claimed = await self._writer.submit(
            _op_claim_fires, None, [self._new_run(row, "claim_fire")]
        )
        return claimed[0]  # a wave of one

    async def claim_fires(self, rows: list[dict[str, Any]]) -> list[bool]:
        checked = []
        for run_row in rows:
            row = dict(run_row)
            row.setdefault("trigger", "schedule")
            if row["trigger"] not in ("schedule", "catchup") or "scheduled_at" not in row:
                raise StoreError(
                    "claim_fires: every row needs a scheduled_at and the trigger "
                    f"'schedule' or 'catchup', got {run_row!r}"
                )
            checked.append(self._new_run(row, "claim_fires"))
        if not checked:
            return []
        return await self._writer.submit(_op_claim_fires, None, checked)

    def _updated(self, run_id: str, fields: dict[str, Any], what: str) -> dict[str, Any]:
        if "id" in fields:
            raise StoreError(f"{what}: a run's id cannot change")
        fields = _check_fields(dict(fields), f"{what}({run_id!r})")
        if "updated_at" not in fields:
            fields["updated_at"] = self._clock()
        return fields

    def update_run(self, run_id: str, fields: dict[str, Any]) -> Awaitable[None]:
        return self._writer.submit(
            _op_update_run, _RUNS, (run_id, self._updated(run_id, fields, "update_run"))
        )

    def finish_run(
        self, run_id: str, fields: dict[str, Any], trace: str | list[dict[str, Any]] | None = None
    ) -> Awaitable[None]:
        fields = self._updated(run_id, fields, "finish_run")
        text = trace if type(trace) is str else codec.encode_lenient(list(trace)) if trace else None
        return self._writer.submit(
            _op_finish_run, _RUNS, (run_id, fields, text, fields["updated_at"])
        )

    async def claim_run(self, run_id: str, engine_id: str, started_at: float) -> bool:
        return await self._writer.submit(
            _op_claim_run, None, (engine_id, started_at, self._clock(), run_id)
        )

    async def cancel_queued(self, run_id: str, finished_at: float, error: dict[str, Any]) -> bool:
        return await self._writer.submit(
            _op_cancel_queued, None,
            (finished_at, codec.encode_lenient(error), self._clock(), run_id),
        )

    def _fire_rows(self, rows: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        """``rows`` of fires checked as ``claim_fires`` checks them (full rows, JSON encoded)."""
        checked = []
        for run_row in rows:
            row = dict(run_row)
            row.setdefault("trigger", "schedule")
            if row["trigger"] not in ("schedule", "catchup") or "scheduled_at" not in row:
                raise StoreError(
                    f"{what}: every row needs a scheduled_at and the trigger "
                    f"'schedule' or 'catchup', got {run_row!r}"
                )
            checked.append(self._new_run(row, what))
        return checked

    async def claim_fires_checked(
        self, rows: list[dict[str, Any]], limits: list[int | None]
    ) -> list[str]:
        checked = self._fire_rows(rows, "claim_fires_checked")
        if len(limits) != len(checked):
            raise StoreError("claim_fires_checked: one limit (or None) per row")
        if not checked:
            return []
        return await self._writer.submit(
            _op_claim_fires_checked, None, (checked, list(limits), self._clock())
        )

    async def recover_running(self, engine_id: str) -> list[dict[str, Any]]:
        return await self._writer.submit(_op_recover, None, (engine_id, self._clock()))

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = await self._state_read(f"{_SELECT} WHERE id = ?", (run_id,), "reading a run")
        return _run(rows[0]) if rows else None

    async def list_runs(
        self,
        task: str | None = None,
        *,
        status: str | Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        by: str = "created_at",
    ) -> list[dict[str, Any]]:
        where, params = self._run_where(task, status)
        order = "DESC" if newest_first else "ASC"
        key = _RUN_ORDER.get(by)
        if key is None:
            raise StoreError(f"runs can be listed by {' or '.join(map(repr, _RUN_ORDER))}, not {by!r}")
        rows = await self._state_read(
            f"{_SELECT} WHERE {where} ORDER BY {key} {order}, rowid {order} LIMIT ? OFFSET ?",
            (*params, limit, offset),
            "listing runs",
        )
        return [_run(r) for r in rows]

    async def count_runs(
        self, task: str | None = None, status: str | Iterable[str] | None = None
    ) -> int:
        where, params = self._run_where(task, status)
        rows = await self._state_read(
            f"SELECT count(*) FROM cronstack_runs WHERE {where}", params, "counting runs"
        )
        return rows[0][0]

    @staticmethod
    def _run_where(task: str | None, status: str | Iterable[str] | None) -> tuple[str, list[Any]]:
        parts, params = ["1"], []
        if task is not None:
            parts.append("task = ?")
            params.append(task)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            parts.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        return " AND ".join(parts), params

    async def due_runs(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._state_read(
            f"{_SELECT} WHERE status = 'queued' AND not_before <= ? "
            "ORDER BY not_before, rowid LIMIT ?",
            (now, limit),
            "reading due runs",
        )
        return [_run(r) for r in rows]

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        rows = await self._state_read(
            f"{_SELECT} WHERE rowid IN (SELECT (SELECT rowid FROM cronstack_runs r "
            "WHERE r.task = t.task ORDER BY created_at DESC, rowid DESC LIMIT 1) "
            "FROM (SELECT DISTINCT task FROM cronstack_runs) t)",
            (),
            "reading the last runs",
        )
        return {r[1]: _run(r) for r in rows}

    async def add_trace(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        if entries:
            text = codec.encode_lenient(list(entries))
            await self._writer.submit(_op_add_trace, None, (run_id, text, self._clock()))

    async def get_trace(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._state_read(
            "SELECT entries FROM cronstack_traces WHERE run_id = ? ORDER BY seq",
            (run_id,),
            "reading a trace",
        )
        return [e for r in rows for e in codec.decode(r[0])]

    async def get_task_state(self, task: str) -> dict[str, Any] | None:
        rows = await self._state_read(
            "SELECT task, last_fire, paused, extra, updated_at FROM cronstack_task_state "
            "WHERE task = ?",
            (task,),
            "reading task state",
        )
        return _state(rows[0]) if rows else None

    async def all_task_states(self) -> dict[str, dict[str, Any]]:
        rows = await self._state_read(
            "SELECT task, last_fire, paused, extra, updated_at FROM cronstack_task_state",
            (),
            "reading task states",
        )
        return {r[0]: _state(r) for r in rows}

    async def set_task_state(self, task: str, **fields: Any) -> None:
        last_fire = fields.pop("last_fire", _UNSET)
        paused = fields.pop("paused", _UNSET)
        for reserved in ("task", "updated_at"):
            if reserved in fields:
                raise StoreError(f"set_task_state: {reserved!r} is set by the store")
        await self._writer.submit(
            _op_set_state, None, (task, last_fire, paused, fields, self._clock())
        )

    async def prune_history(self, task: str | None, before: float) -> int:
        return await self._writer.submit(_op_prune, None, (task, before))


def _state(row: tuple[Any, ...]) -> dict[str, Any]:
    state = codec.decode(row[3])
    state.update(task=row[0], last_fire=row[1], paused=bool(row[2]), updated_at=row[4])
    return state
