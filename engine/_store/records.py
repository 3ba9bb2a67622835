"""Records: the table storage behind the record steps (``runtime.Records``).

The event-loop half validates names, encodes documents, assigns ids and
queues writes; the ``_op_*`` functions are the writer-thread half (see
``writer.py``). Assigned ids come from a per-table counter kept here, loaded
once from the table's largest integer id: one engine owns the file, so no
other process can take the same id, and ids are never reused (a failed write
leaves a gap, as AUTOINCREMENT does).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from engine._store import codec
from engine._store.errors import (
    DuplicateRecord,
    InvalidRecord,
    RecordError,
    RecordNotFound,
    translate,
)
from engine._store.filters import (
    TABLE_KEYS,
    check_count,
    check_field,
    check_table,
    compile_filter,
    compile_sort,
    equals,
)
from engine._store.multirow import execute_rows, values_list
from engine._store.writer import GroupWriter, WriteContext

__all__ = ("RecordsMixin",)

_fast_encode = msgspec.json.Encoder().encode
_SELECT = "SELECT id, created_at, updated_at, data FROM"
_MAX_ID_TEXT = 255


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    rec = {"id": row[0], "created_at": row[1], "updated_at": row[2]}
    rec.update(codec.decode(row[3]))
    return rec


#: the largest whole-number id (SQLite's 64-bit integer)
MAX_INT_ID = 2**63 - 1


def _no_id_left(table: str) -> str:
    return (f"table {table!r}: no id is left to assign after {MAX_INT_ID} (a record has the largest "
            "64-bit id); give this record its own id")


def _check_id(value: Any, table: str) -> int | str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRecord(
            f"table {table!r}: a record id must be a whole number or a text, got {value!r}"
        )
    if isinstance(value, str):
        if not 0 < len(value) <= _MAX_ID_TEXT:
            raise InvalidRecord(
                f"table {table!r}: a text id must have 1 to {_MAX_ID_TEXT} characters"
            )
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRecord(
                    f"table {table!r}: the id {value!r} holds a lone surrogate, which cannot be stored"
                ) from None
    if isinstance(value, int) and not -(2**63) <= value <= MAX_INT_ID:
        raise InvalidRecord(f"table {table!r}: id {value} does not fit in 64 bits")
    return value


def _check_time(value: Any, field: str, table: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(
            f"table {table!r}: {field} must be Unix seconds (a number), got {value!r}"
        )
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidRecord(f"table {table!r}: {field} must be a finite number of Unix seconds, got {value!r}")
    return seconds


def _encode(doc: dict[str, Any], table: str) -> bytes:
    """The JSON of ``doc`` as msgspec's UTF-8 bytes (as rows hand it to ``_op_add``)."""
    try:
        text = _fast_encode(doc)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidRecord(f"table {table!r}: the data cannot be stored as JSON ({exc})") from exc
    if b"null" in text:
        where = _non_finite(doc, "data")
        if where is not None:
            raise InvalidRecord(
                f"table {table!r}: {where} is NaN or infinite, which JSON cannot hold "
                "(it would be stored as null); store null or a number instead"
            )
    return text


def _non_finite(value: Any, path: str) -> str | None:
    """The path of a NaN or infinite float inside ``value``, or None.

    msgspec writes such floats as ``null``, so only a document whose JSON
    contains ``null`` needs the walk.
    """
    stack = [(value, path)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return at
        elif isinstance(v, dict):
            stack.extend((x, f"{at}.{k}") for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
    return None


def _at_path(data: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``data`` (None when absent), as filters read it:
    ``"crm.id"`` is the ``id`` of the object under ``crm``, like ``$.crm.id``."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _split(data: Any, table: str) -> tuple[dict[str, Any], Any, Any, Any]:
    """(free fields, id, created_at, updated_at) of record data."""
    if not isinstance(data, Mapping):
        raise InvalidRecord(f"table {table!r}: record data must be an object, got {data!r}")
    fields = dict(data)
    rid = fields.pop("id", None)
    created = fields.pop("created_at", None)
    updated = fields.pop("updated_at", None)
    return fields, rid, created, updated


# -- writer-thread half ---------------------------------------------------------


#: values per inserted row: id, created_at, updated_at, data
ROW_WIDTH = 4


def _insert_sql(table: str, n: int) -> str:
    # data arrives as str (see _with_texts); CAST keeps it TEXT should bytes be bound
    return f'INSERT INTO "{table}" (id, created_at, updated_at, data) VALUES ' + values_list(
        "(?, ?, ?, CAST(? AS TEXT))", n
    )


def _insert_rows(ctx: WriteContext, table: str, params: list[Any]) -> None:
    """Insert the rows of flat ``params`` with few statements (see ``multirow``;
    docs/store.md has the measurement)."""
    execute_rows(ctx.conn, lambda size: _cached_insert_sql(ctx, table, size), params, ROW_WIDTH)


def _cached_insert_sql(ctx: WriteContext, table: str, size: int) -> str:
    sql = ctx.sql.get((table, size))
    if sql is None:
        sql = ctx.sql[(table, size)] = _insert_sql(table, size)
    return sql


def _with_texts(params: list[Any]) -> list[Any]:
    """A copy of flat row ``params`` with each document's UTF-8 bytes made a str.

    sqlite3 binds int, float and str directly but looks for an adapter for
    bytes (two failing attribute lookups, each formatting an AttributeError:
    about 2,000 instructions per row under the GIL). Decoding here, in one
    C-level map per batch, is a fraction of that, and keeps the decode off
    the event loop. The caller's list is left as it is, for a row-by-row replay.
    """
    texts = params.copy()
    texts[3::ROW_WIDTH] = map(bytes.decode, params[3::ROW_WIDTH])
    return texts


def _op_add(ctx: WriteContext, table: str, params: list[Any]) -> None:
    """Insert rows given as one flat list of (id, created_at, updated_at, data) values,
    data as UTF-8 bytes."""
    ctx.ensure_table(table)
    try:
        _insert_rows(ctx, table, _with_texts(params))
    except sqlite3.IntegrityError as exc:
        if len(params) == ROW_WIDTH and "UNIQUE" in str(exc):
            raise DuplicateRecord(
                f"table {table!r} already has a record with id {params[0]!r}; "
                "use edit_record or add_or_edit_record to change it",
                id=params[0],
            ) from exc
        raise


def _keep_high_water(ctx: WriteContext, table: str) -> None:
    """Before a delete: the table's largest integer id (an index lookup) becomes its
    high-water mark, so ids of deleted records are never assigned again.

    Kept on delete rather than on every add: while no record is deleted the
    largest id present is the mark (the counter loads the larger of both).
    """
    ctx.conn.execute(
        "INSERT INTO cronstack_counters (tbl, last_id) "
        f'SELECT ?, id FROM "{table}" WHERE id < \'\' ORDER BY id DESC LIMIT 1 '
        "ON CONFLICT (tbl) DO UPDATE SET last_id = max(last_id, excluded.last_id)",
        (table,),
    )


_op_add.record = True  # type: ignore[attr-defined]
_op_add.what = "adding a record"  # type: ignore[attr-defined]


def _merge(
    ctx: WriteContext, table: str, row: tuple[Any, ...], fields: dict[str, Any],
    created: Any, updated: float,
) -> dict[str, Any]:
    """Shallow-merge ``fields`` into stored ``row`` (rowid, id, created_at, data)."""
    doc = codec.decode(row[3])
    doc.update(fields)
    created_at = row[2] if created is None else created
    ctx.conn.execute(
        f'UPDATE "{table}" SET data = ?, created_at = ?, updated_at = ? WHERE rowid = ?',
        (codec.encode(doc), created_at, updated, row[0]),
    )
    rec = {"id": row[1], "created_at": created_at, "updated_at": updated}
    rec.update(doc)
    return rec


def _op_edit(ctx: WriteContext, table: str, args: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    for rid, fields, created, updated, name in args:
        row = None
        if ctx.table_exists(table):
            row = ctx.conn.execute(
                f'SELECT rowid, id, created_at, data FROM "{table}" WHERE id = ?', (rid,)
            ).fetchone()
        if row is None:
            out.append(RecordNotFound(
                f"table {name!r} has no record with id {rid!r}; check the id "
                "(5 and '5' are different ids) or use add_or_edit_record",
                table=name, id=rid,
            ))
        else:
            out.append(_merge(ctx, table, row, fields, created, updated))
    return out


_op_edit.record = True  # type: ignore[attr-defined]
_op_edit.what = "editing a record"  # type: ignore[attr-defined]


def _op_delete(ctx: WriteContext, table: str, ids: list[Any]) -> list[bool]:
    if not ctx.table_exists(table):
        return [False] * len(ids)
    _keep_high_water(ctx, table)
    sql = f'DELETE FROM "{table}" WHERE id = ?'
    return [ctx.conn.execute(sql, (rid,)).rowcount > 0 for rid in ids]


_op_delete.record = True  # type: ignore[attr-defined]
_op_delete.what = "deleting a record"  # type: ignore[attr-defined]


def _op_upsert(ctx: WriteContext, table: str, args: list[tuple[Any, ...]]) -> list[Any]:
    out = []
    for where, params, fields, new_row, created, now in args:
        ctx.ensure_table(table)
        row = ctx.conn.execute(
            f'SELECT rowid, id, created_at, data FROM "{table}" WHERE {where} ORDER BY rowid LIMIT 1',
            params,
        ).fetchone()
        if row is not None:
            out.append(_merge(ctx, table, row, fields, created, now))
        else:
            if new_row[0] is None:  # no id was left to assign (see _row_for_insert)
                raise InvalidRecord(_no_id_left(table))
            _op_add(ctx, table, list(new_row))
            rec = {"id": new_row[0], "created_at": new_row[1], "updated_at": new_row[2]}
            rec.update(fields)
            out.append(rec)
    return out


_op_upsert.record = True  # type: ignore[attr-defined]
_op_upsert.what = "adding or editing a record"  # type: ignore[attr-defined]


def _op_delete_many(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[int]:
    out = []
    for table, where, params in args:
        if not ctx.table_exists(table):
            out.append(0)
        else:
            _keep_high_water(ctx, table)
            out.append(ctx.conn.execute(f'DELETE FROM "{table}" WHERE {where}', params).rowcount)
    return out


_op_delete_many.record = True  # type: ignore[attr-defined]
_op_delete_many.what = "deleting records"  # type: ignore[attr-defined]


def _op_edit_many(ctx: WriteContext, _key: Any, args: list[tuple[Any, ...]]) -> list[int]:
    out = []
    for table, where, params, fields, created, now in args:
        if not ctx.table_exists(table):
            out.append(0)
            continue
        rows = ctx.conn.execute(
            f'SELECT rowid, id, created_at, data FROM "{table}" WHERE {where}', params
        ).fetchall()
        for row in rows:
            _merge(ctx, table, row, fields, created, now)
        out.append(len(rows))
    return out


_op_edit_many.record = True  # type: ignore[attr-defined]
_op_edit_many.what = "editing records"  # type: ignore[attr-defined]


# -- event-loop half ------------------------------------------------------------


class RecordsMixin:
    """``runtime.Records`` over a group-committed SQLite database."""

    _writer: GroupWriter
    _clock: Callable[[], float]
    _fetchall: Callable[[str, tuple[Any, ...] | list[Any]], Awaitable[list[tuple[Any, ...]]]]
    _counters: dict[str, int]
    _counter_loads: dict[str, asyncio.Future[int]]

    async def _read(self, table: str, sql: str, params: Any, what: str) -> list[tuple[Any, ...]] | None:
        """Rows of a read, or None when ``table`` was never written."""
        try:
            return await self._fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            if str(exc).startswith("no such table"):
                return None
            raise translate(exc, f"{what} table {table!r}", record=True, reading=True) from exc
        except sqlite3.Error as exc:
            raise translate(exc, f"{what} table {table!r}", record=True, reading=True) from exc

    async def query(
        self,
        table: str,
        *,
        filter: Mapping[str, Any] | None = None,
        sort: str | list[Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[dict[str, Any]]:
        key = check_table(table)
        where, params = compile_filter(filter)
        order = compile_sort(sort)
        limit = check_count(limit, "limit")
        offset = check_count(offset, "offset")
        sql = f'{_SELECT} "{key}" WHERE {where} ORDER BY {order}'
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else limit, offset or 0]
        rows = await self._read(table, sql, params, "querying")
        return [] if rows is None else [_record(r) for r in rows]

    async def get(
        self, table: str, *, id: Any = None, filter: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        key = check_table(table)
        if id is not None:
            sql, params = f'{_SELECT} "{key}" WHERE id = ?', [_check_id(id, table)]
        elif filter is not None:
            where, params = compile_filter(filter)
            sql = f'{_SELECT} "{key}" WHERE {where} ORDER BY rowid LIMIT 1'
        else:
            raise RecordError(f"get_record on table {table!r} needs an id or a filter")
        rows = await self._read(table, sql, params, "reading")
        return _record(rows[0]) if rows else None

    async def count(self, table: str, *, filter: Mapping[str, Any] | None = None) -> int:
        key = check_table(table)
        where, params = compile_filter(filter)
        rows = await self._read(table, f'SELECT count(*) FROM "{key}" WHERE {where}', params, "counting")
        return rows[0][0] if rows else 0

    async def _load_counter(self, key: str, table: str) -> None:
        fut = self._counter_loads.get(key)
        if fut is None:
            sql = f'SELECT id FROM "{key}" WHERE id < \'\' ORDER BY id DESC LIMIT 1'

            async def load() -> int:
                rows = await self._read(table, sql, (), "reading the largest id of")
                present = rows[0][0] if rows and isinstance(rows[0][0], int) else 0
                try:
                    mark = await self._fetchall(
                        "SELECT last_id FROM cronstack_counters WHERE tbl = ?", (key,)
                    )
                except sqlite3.Error as exc:  # a RecordError: the next add tries again
                    raise translate(
                        exc, f"reading the id mark of table {table!r}", record=True, reading=True
                    ) from exc
                return max(present, mark[0][0] if mark else 0)

            fut = self._counter_loads[key] = asyncio.ensure_future(load())
        try:
            value = await asyncio.shield(fut)
        except RecordError:
            self._counter_loads.pop(key, None)
            raise
        self._counters.setdefault(key, value)

    async def _row_for_insert(
        self, key: str, table: str, rid: Any, created: Any, updated: Any, now: float, text: str,
        *, maybe: bool = False,
    ) -> tuple[Any, ...]:
        """The row to insert. ``maybe``: an upsert, which may merge instead; with no id left
        to assign its row gets id None, refused only if it is inserted (``_op_upsert``)."""
        if key not in self._counters:
            await self._load_counter(key, table)
        if rid is None:
            rid = self._counters[key] + 1
            if rid > MAX_INT_ID:
                if not maybe:
                    raise InvalidRecord(_no_id_left(table))
                rid = None
            else:
                self._counters[key] = rid
        else:
            rid = _check_id(rid, table)
            if isinstance(rid, int) and rid > self._counters[key]:
                self._counters[key] = rid
        created = now if created is None else _check_time(created, "created_at", table)
        updated = now if updated is None else _check_time(updated, "updated_at", table)
        return (rid, created, updated, text)

    def queue_add(
        self, table: str, data: Mapping[str, Any], keep: bool = True
    ) -> Awaitable[dict[str, Any] | None]:
        """Queue an add and return what to await for its record: ``add`` without a coroutine.

        On the hot path (a known table whose id counter is loaded, data
        without ``id``/``created_at``/``updated_at``) the row is queued now
        and the writer's future itself is returned, resolving to the record
        after COMMIT (or to the row's error). The ``add_record`` step awaits
        it directly, so an add costs the store no coroutine frame to create,
        resume and finish; at thousands of concurrent runs that is a sizeable
        share of the loop's time per row (see docs/store.md). Any other case
        returns the ``add`` coroutine. Checks, errors and ids are ``add``'s.

        With ``keep=False`` (a step that stores no result) the hot path's
        future resolves to None instead of the record: building a record
        nobody reads was about 8% of the loop's work per added row.
        """
        key = TABLE_KEYS.get(table) if type(table) is str else None  # names checked before
        if key is not None and type(data) is dict and "id" not in data and (
            "created_at" not in data
        ) and "updated_at" not in data:
            rid = self._counters.get(key)
            if rid is not None and rid < MAX_INT_ID:
                try:
                    text = _fast_encode(data)  # UTF-8 bytes; the writer thread makes them str
                except (TypeError, ValueError, msgspec.EncodeError):
                    return self._add(table, data)  # raises InvalidRecord with the reason
                if b"null" in text and _non_finite(data, "data") is not None:
                    return self._add(table, data)  # NaN or infinity: the same
                rid += 1
                self._counters[key] = rid
                now = self._clock()
                return self._writer.submit_row(
                    _op_add, key, (rid, now, now, text),
                    {"id": rid, "created_at": now, "updated_at": now, **data} if keep else None,
                )
        return self._add(table, data)

    async def add(self, table: str, data: Mapping[str, Any]) -> dict[str, Any]:
        return await self.queue_add(table, data)

    async def _add(self, table: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """``add`` off the hot path: names checked, the counter loaded, ids and times given."""
        key = TABLE_KEYS.get(table) if type(table) is str else None
        if key is None:
            key = check_table(table)
        fields, rid, created, updated = _split(data, table)
        text = _encode(fields, table)
        row = await self._row_for_insert(key, table, rid, created, updated, self._clock(), text)
        rec = {"id": row[0], "created_at": row[1], "updated_at": row[2]}
        rec.update(fields)
        return await self._writer.submit_row(_op_add, key, row, rec)

    def _patch(self, data: Any, table: str, rid: Any) -> tuple[dict[str, Any], Any, float]:
        fields, new_id, created, updated = _split(data, table)
        if new_id is not None and new_id != rid:
            raise InvalidRecord(
                f"table {table!r}: an edit cannot change a record's id ({rid!r} to {new_id!r})"
            )
        _encode(fields, table)
        if created is not None:
            created = _check_time(created, "created_at", table)
        now = self._clock() if updated is None else _check_time(updated, "updated_at", table)
        return fields, created, now

    async def edit(self, table: str, id: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        key = check_table(table)
        rid = _check_id(id, table)
        fields, created, now = self._patch(data, table, rid)
        return await self._writer.submit(_op_edit, key, (rid, fields, created, now, table))

    async def delete(self, table: str, id: Any) -> bool:
        key = check_table(table)
        return await self._writer.submit(_op_delete, key, _check_id(id, table))

    async def upsert(
        self, table: str, data: Mapping[str, Any], identifier: str
    ) -> dict[str, Any]:
        key = check_table(table)
        ident = check_field(identifier)
        value = _at_path(data, ident) if isinstance(data, Mapping) else None
        if value is None:
            raise InvalidRecord(
                f"add_or_edit_record on table {table!r}: the data has no value for the "
                f"identifier field {ident!r}; include it in data"
                + (" (a dotted identifier is a path into nested objects)" if "." in ident else "")
            )
        params: list[Any] = []
        if ident == "id":
            where = "id = ?"
            params.append(_check_id(value, table))
        else:
            where = equals(ident, value, params)
        fields, rid, created, updated = _split(data, table)
        text = _encode(fields, table)
        now = self._clock()
        row = await self._row_for_insert(key, table, rid, created, updated, now, text, maybe=True)
        merge_created = None if created is None else row[1]  # checked by _row_for_insert
        return await self._writer.submit(
            _op_upsert, key, (where, params, fields, row, merge_created, row[2])
        )

    async def delete_many(self, table: str, filter: Mapping[str, Any]) -> int:
        key = check_table(table)
        where, params = compile_filter(filter)
        return await self._writer.submit(_op_delete_many, None, (key, where, params))

    async def edit_many(
        self, table: str, filter: Mapping[str, Any], data: Mapping[str, Any]
    ) -> int:
        key = check_table(table)
        where, params = compile_filter(filter)
        fields, rid, created, updated = _split(data, table)
        if rid is not None:
            raise InvalidRecord(f"edit_records on table {table!r}: data cannot set an id")
        _encode(fields, table)
        if created is not None:
            created = _check_time(created, "created_at", table)
        now = self._clock() if updated is None else _check_time(updated, "updated_at", table)
        return await self._writer.submit(
            _op_edit_many, None, (key, where, params, fields, created, now)
        )
