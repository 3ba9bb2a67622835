"""Records on PostgreSQL: the record steps (``runtime.Records``) as SQL on the ordered writer.

Names, ids, timestamps and documents are checked exactly as the SQLite
backend checks them (the helpers of ``records.py``). Assigned ids come from
the table's sequence (``nextval``: no row lock, so engines adding together
neither wait for each other nor deadlock; gaps are possible, reuse is not), an
id already taken (a row written outside cronstack) is skipped, and a given
integer id raises the sequence (``setval``, never lowering it). ``upsert`` holds a transaction-level advisory lock on its table, so two
engines upserting one identifier at once make one record, not two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from engine._store import codec
from engine._store.errors import DuplicateRecord, InvalidRecord, RecordError, RecordNotFound
from engine._store.filters import check_count, check_field, check_table
from engine._store.postgres_errors import translate_pg
from engine._store.postgres_filters import PG, compile_pg_filter, compile_pg_sort
from engine._store.postgres_schema import (
    ID_NAMESPACE,
    UPSERT_NAMESPACE,
    index_ddl,
    qualified,
    record_table_ddl,
    sequence_ddl,
    sequence_name,
    table_lock_key,
)
from engine._store.postgres_writer import PgWriter
from engine._store.records import MAX_INT_ID, _at_path, _check_id, _check_time, _encode, _no_id_left, _split

__all__ = ("PgRecordsMixin",)

_SELECT = "SELECT id::text, created_at, updated_at, doc::text FROM"
#: a query's records as one row: the ids and documents as one JSON array text ``[id, doc, id, doc,
#: ...]`` (each as stored: JSONB id, the document's text as written) and the times as two float8
#: arrays (binary, exact). One row and one JSON decode instead of a row and two decodes per record.
#: Each aggregate orders by the row's number in the query's order (``ORDER BY o``): the order is
#: guaranteed, not left to the subquery's ORDER BY surviving the aggregation.
_AGGREGATE = ("SELECT '[' || string_agg(id::text || ',' || doc::text, ',' ORDER BY o) || ']', "
              "array_agg(created_at ORDER BY o), array_agg(updated_at ORDER BY o) "
              "FROM (SELECT id, created_at, updated_at, doc, row_number() OVER (ORDER BY {order}) AS o FROM")
#: adds with assigned ids, many in one statement: an id per row from the table's sequence (no row
#: lock: engines adding at once do not wait for each other, and cannot deadlock), taken in
#: submission order, then the rows inserted in that order (``ORDER BY n``: ``seq`` follows it). An id
#: already taken (a row written outside cronstack) inserts nothing: the count says so, and the adds
#: run again one by one, each skipping taken ids. Returns the ids in order and the rows inserted.
_ADD_MANY = (
    "WITH r AS MATERIALIZED (SELECT nextval({seq}) AS id, c, u, d, n "
    "FROM unnest($1::float8[], $2::float8[], $3::text[]) WITH ORDINALITY AS r(c, u, d, n)), "
    "i AS (INSERT INTO {table} (id, created_at, updated_at, doc) "
    "SELECT to_jsonb(r.id), r.c, r.u, r.d::json FROM r ORDER BY r.n ON CONFLICT (id) DO NOTHING RETURNING 1) "
    "SELECT array_agg(id ORDER BY n), (SELECT count(*) FROM i) FROM r")
#: one add with an assigned id; nothing when the id is taken
_ADD_ONE = ("INSERT INTO {table} (id, created_at, updated_at, doc) VALUES (to_jsonb(nextval({seq})), $1, $2, $3::json) "
            "ON CONFLICT (id) DO NOTHING RETURNING (id #>> '{{}}')::bigint")
#: raise the sequence to $3 when it is below (never lower it); under a short session lock so that
#: two raises do not undo each other. One round trip; values are integers formatted in.
_RAISE = ("SELECT pg_advisory_lock({ns}, {key}); "
          "SELECT setval({seq}, {rid}) FROM {seq_rel} "
          "WHERE (CASE WHEN is_called THEN last_value ELSE last_value - 1 END) < {rid}; "
          "SELECT pg_advisory_unlock({ns}, {key})")
#: what a result past 1 GB of JSON text raises on the aggregated path
_TOO_BIG = (asyncpg.ProgramLimitExceededError, asyncpg.OutOfMemoryError)


def _record(row: Any) -> dict[str, Any]:
    rec = {"id": codec.decode(row[0]), "created_at": row[1], "updated_at": row[2]}
    rec.update(codec.decode(row[3]))
    return rec


def _id_json(rid: Any) -> str:
    return codec.encode(rid)


class PgRecordsMixin:
    _writer: PgWriter
    _clock: Callable[[], float]
    _fetch: Callable[..., Awaitable[list[Any]]]
    _tables: set[str]
    indexes: dict[str, tuple[str, ...]]

    _schema: str

    def _q(self, key: str) -> str:
        """Record table ``key`` named with its schema (never a catalog relation of that name)."""
        return qualified(self._schema, key)

    # -- reads ---------------------------------------------------------------------

    async def _read(self, table: str, sql: str, params: list[Any], what: str) -> list[Any] | None:
        try:
            return await self._fetch(sql, *params)
        except asyncpg.UndefinedTableError:
            return None
        except Exception as exc:
            raise translate_pg(exc, f"{what} table {table!r}", record=True, reading=True) from exc

    async def query(self, table: str, *, filter: Mapping[str, Any] | None = None,
                    sort: str | list[Any] | None = None, limit: int | None = None,
                    offset: int | None = None) -> list[dict[str, Any]]:
        key = check_table(table)
        where, params = compile_pg_filter(filter)
        order = compile_pg_sort(sort)
        limit = check_count(limit, "limit")
        offset = check_count(offset, "offset")
        tail = f'{self._q(key)} WHERE {where} ORDER BY {order}'
        if limit is not None:
            params.append(limit)
            tail += f" LIMIT ${len(params)}"
        if offset:
            params.append(offset)
            tail += f" OFFSET ${len(params)}"
        try:
            rows = await self._read(table, f"{_AGGREGATE.format(order=order)} {tail}) r", params, "querying")
        except Exception as exc:
            if not isinstance(exc.__cause__, _TOO_BIG):
                raise
            # past PostgreSQL's 1 GB for one text (or the memory for it): the records row by row
            rows = await self._read(table, f"{_SELECT} {tail}", params, "querying")
            return [] if rows is None else [_record(r) for r in rows]
        if not rows or rows[0][0] is None:
            return []
        text, created, updated = rows[0]
        flat = codec.decode(text)
        out = []
        for i, (c, u) in enumerate(zip(created, updated, strict=True)):
            rec = {"id": flat[2 * i], "created_at": c, "updated_at": u}
            rec.update(flat[2 * i + 1])
            out.append(rec)
        return out

    async def get(self, table: str, *, id: Any = None, filter: Mapping[str, Any] | None = None
                  ) -> dict[str, Any] | None:
        key = check_table(table)
        if id is not None:
            sql, params = f'{_SELECT} {self._q(key)} WHERE id = $1::jsonb', [_id_json(_check_id(id, table))]
        elif filter is not None:
            where, params = compile_pg_filter(filter)
            sql = f'{_SELECT} {self._q(key)} WHERE {where} ORDER BY seq LIMIT 1'
        else:
            raise RecordError(f"get_record on table {table!r} needs an id or a filter")
        rows = await self._read(table, sql, params, "reading")
        return _record(rows[0]) if rows else None

    async def count(self, table: str, *, filter: Mapping[str, Any] | None = None) -> int:
        key = check_table(table)
        where, params = compile_pg_filter(filter)
        rows = await self._read(table, f'SELECT count(*) FROM {self._q(key)} WHERE {where}', params, "counting")
        return rows[0][0] if rows else 0

    # -- writer-side helpers (run inside the writer's transaction) ------------------

    async def _ensure_table(self, conn: Any, key: str) -> None:
        if key in self._tables:
            return
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                                     self._q(key), sequence_name(self._schema, key))
        if not exists:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", table_lock_key(key))
            await conn.execute(record_table_ddl(self._schema, key))
            await conn.execute(sequence_ddl(self._schema, key))
            for field in self.indexes.get(key, ()):
                if field != "id":
                    await conn.execute(index_ddl(self._schema, key, field))
        self._tables.add(key)

    async def _raise_ids(self, conn: Any, key: str, rid: int) -> None:
        """Assigned ids of ``key`` continue after integer id ``rid`` (a given id, or the largest
        taken): the sequence raised to it, never lowered."""
        if rid < 1:
            return
        seq = sequence_name(self._schema, key)
        await conn.execute(_RAISE.format(ns=ID_NAMESPACE, key=table_lock_key(key) >> 32, rid=int(rid),
                                         seq="'" + seq.replace("'", "''") + "'", seq_rel=seq))

    async def _table_exists(self, conn: Any, key: str) -> bool:
        return key in self._tables or await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self._q(key))

    async def _insert(self, conn: Any, key: str, table: str, rid: Any, created: float, updated: float,
                      text: str) -> Any:
        """Insert one row (``rid`` None: the next id); the id it got."""
        await self._ensure_table(conn, key)
        if rid is None:
            sql = _ADD_ONE.format(table=self._q(key), seq=self._seq_literal(key))
            while True:
                try:
                    got = await conn.fetchval(sql, created, updated, text)
                except asyncpg.SequenceGeneratorLimitExceededError:
                    raise InvalidRecord(_no_id_left(table)) from None
                if got is not None:
                    return got
                # the id is taken (a row written outside cronstack): go past the largest integer id
                top = await conn.fetchval(
                    f"SELECT max((id #>> '{{}}')::numeric) FROM {self._q(key)} WHERE jsonb_typeof(id) = 'number'")
                if top is not None and top >= MAX_INT_ID:
                    raise InvalidRecord(_no_id_left(table))
                if top is not None:
                    await self._raise_ids(conn, key, int(top))
        if isinstance(rid, int):
            await self._raise_ids(conn, key, rid)
        try:
            await conn.execute(
                f'INSERT INTO {self._q(key)} (id, created_at, updated_at, doc) VALUES ($1::jsonb, $2, $3, $4::json)',
                _id_json(rid), created, updated, text)
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateRecord(
                f"table {table!r} already has a record with id {rid!r}; "
                "use edit_record or add_or_edit_record to change it", id=rid) from exc
        return rid

    def _seq_literal(self, key: str) -> str:
        return "'" + sequence_name(self._schema, key).replace("'", "''") + "'"

    async def _add_auto(self, conn: Any, key: str, table: str, created: float, updated: float, text: str) -> Any:
        return await self._insert(conn, key, table, None, created, updated, text)

    async def _add_many(self, conn: Any, adds: list[tuple[Any, ...]]) -> list[int]:
        """Queued adds to one table with assigned ids (``_add_auto``'s arguments) as one statement
        (``_ADD_MANY``); their ids. Any failure (no ids left, an id taken) raises, and the writer runs
        them one by one (``_insert``: a taken id is skipped)."""
        key, table = adds[0][0], adds[0][1]
        await self._ensure_table(conn, key)
        try:
            ids, inserted = await conn.fetchrow(
                _ADD_MANY.format(table=self._q(key), seq=self._seq_literal(key)),
                [a[2] for a in adds], [a[3] for a in adds], [a[4] for a in adds])
        except asyncpg.SequenceGeneratorLimitExceededError:
            raise InvalidRecord(_no_id_left(table)) from None
        if inserted != len(adds):
            raise RecordError(f"table {table!r}: an assigned id is taken by a row written outside cronstack")
        return list(ids)

    async def _merge(self, conn: Any, key: str, row: Any, fields: dict[str, Any], created: Any,
                     updated: float) -> dict[str, Any]:
        """Shallow-merge ``fields`` into stored ``row`` (seq, id text, created_at, doc text)."""
        doc = codec.decode(row[3])
        doc.update(fields)
        created_at = row[2] if created is None else created
        await conn.execute(f'UPDATE {self._q(key)} SET doc = $1::json, created_at = $2, updated_at = $3 WHERE seq = $4',
                           codec.encode(doc), created_at, updated, row[0])
        rec = {"id": codec.decode(row[1]), "created_at": created_at, "updated_at": updated}
        rec.update(doc)
        return rec

    # -- writes --------------------------------------------------------------------

    async def add(self, table: str, data: Mapping[str, Any]) -> dict[str, Any]:
        key = check_table(table)
        fields, rid, created, updated = _split(data, table)
        text = _encode(fields, table).decode()
        if rid is not None:
            rid = _check_id(rid, table)
        now = self._clock()
        created = now if created is None else _check_time(created, "created_at", table)
        updated = now if updated is None else _check_time(updated, "updated_at", table)

        if rid is None:  # an assigned id: may share one INSERT with the adds queued beside it
            got = await self._writer.submit(self._add_auto, key, table, created, updated, text,
                                            what="adding a record", record=True, group=(("add", key), self._add_many))
        else:
            async def op(conn: Any) -> Any:
                return await self._insert(conn, key, table, rid, created, updated, text)

            got = await self._writer.submit(op, what="adding a record", record=True)
        rec = {"id": got, "created_at": created, "updated_at": updated}
        rec.update(fields)
        return rec

    def _patch(self, data: Any, table: str, rid: Any) -> tuple[dict[str, Any], Any, float]:
        fields, new_id, created, updated = _split(data, table)
        if new_id is not None and new_id != rid:
            raise InvalidRecord(f"table {table!r}: an edit cannot change a record's id ({rid!r} to {new_id!r})")
        _encode(fields, table)
        if created is not None:
            created = _check_time(created, "created_at", table)
        now = self._clock() if updated is None else _check_time(updated, "updated_at", table)
        return fields, created, now

    async def edit(self, table: str, id: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        key = check_table(table)
        rid = _check_id(id, table)
        fields, created, now = self._patch(data, table, rid)

        async def op(conn: Any) -> dict[str, Any]:
            row = None
            if await self._table_exists(conn, key):
                row = await conn.fetchrow(
                    f'SELECT seq, id::text, created_at, doc::text FROM {self._q(key)} WHERE id = $1::jsonb FOR UPDATE',
                    _id_json(rid))
            if row is None:
                raise RecordNotFound(
                    f"table {table!r} has no record with id {rid!r}; check the id "
                    "(5 and '5' are different ids) or use add_or_edit_record", table=table, id=rid)
            return await self._merge(conn, key, row, fields, created, now)

        return await self._writer.submit(op, what="editing a record", record=True)

    async def delete(self, table: str, id: Any) -> bool:
        key = check_table(table)
        rid = _id_json(_check_id(id, table))

        async def op(conn: Any) -> bool:
            if not await self._table_exists(conn, key):
                return False
            return await conn.execute(f'DELETE FROM {self._q(key)} WHERE id = $1::jsonb', rid) != "DELETE 0"

        return await self._writer.submit(op, what="deleting a record", record=True)

    async def upsert(self, table: str, data: Mapping[str, Any], identifier: str) -> dict[str, Any]:
        key = check_table(table)
        ident = check_field(identifier)
        value = _at_path(data, ident) if isinstance(data, Mapping) else None
        if value is None:
            raise InvalidRecord(
                f"add_or_edit_record on table {table!r}: the data has no value for the "
                f"identifier field {ident!r}; include it in data"
                + (" (a dotted identifier is a path into nested objects)" if "." in ident else ""))
        params: list[Any] = []
        if ident == "id":
            params.append(_id_json(_check_id(value, table)))
            where = "id = $1::jsonb"
        else:
            where = PG.equals(ident, value, params)
        fields, rid, created, updated = _split(data, table)
        text = _encode(fields, table).decode()
        if rid is not None:
            rid = _check_id(rid, table)
        now = self._clock()
        created_at = now if created is None else _check_time(created, "created_at", table)
        updated_at = now if updated is None else _check_time(updated, "updated_at", table)
        merge_created = None if created is None else created_at

        async def op(conn: Any) -> dict[str, Any]:
            await self._ensure_table(conn, key)
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", UPSERT_NAMESPACE, table_lock_key(key) >> 32)
            row = await conn.fetchrow(
                f'SELECT seq, id::text, created_at, doc::text FROM {self._q(key)} WHERE {where} ORDER BY seq LIMIT 1 '
                "FOR UPDATE", *params)
            if row is not None:
                return await self._merge(conn, key, row, fields, merge_created, updated_at)
            got = await self._insert(conn, key, table, rid, created_at, updated_at, text)
            rec = {"id": got, "created_at": created_at, "updated_at": updated_at}
            rec.update(fields)
            return rec

        return await self._writer.submit(op, what="adding or editing a record", record=True)

    async def delete_many(self, table: str, filter: Mapping[str, Any]) -> int:
        key = check_table(table)
        where, params = compile_pg_filter(filter)

        async def op(conn: Any) -> int:
            if not await self._table_exists(conn, key):
                return 0
            status = await conn.execute(f'DELETE FROM {self._q(key)} WHERE {where}', *params)
            return int(status.split()[-1])

        return await self._writer.submit(op, what="deleting records", record=True)

    async def edit_many(self, table: str, filter: Mapping[str, Any], data: Mapping[str, Any]) -> int:
        key = check_table(table)
        where, params = compile_pg_filter(filter)
        fields, rid, created, updated = _split(data, table)
        if rid is not None:
            raise InvalidRecord(f"edit_records on table {table!r}: data cannot set an id")
        _encode(fields, table)
        if created is not None:
            created = _check_time(created, "created_at", table)
        now = self._clock() if updated is None else _check_time(updated, "updated_at", table)

        async def op(conn: Any) -> int:
            if not await self._table_exists(conn, key):
                return 0
            rows = await conn.fetch(
                f'SELECT seq, id::text, created_at, doc::text FROM {self._q(key)} WHERE {where} ORDER BY seq FOR UPDATE',
                *params)
            for row in rows:
                await self._merge(conn, key, row, fields, created, now)
            return len(rows)

        return await self._writer.submit(op, what="editing records", record=True)
