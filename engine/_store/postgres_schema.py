"""PostgreSQL DDL: the engine's tables, record tables, declared indexes, and schema versions.

The version lives in ``cronstack_schema`` (one row). ``MIGRATIONS[i]`` takes a
database from version ``i`` to ``i + 1``, each in one transaction with its
version bump, under an advisory lock so that engines starting together on a
new database do not race. A version above ``CURRENT_VERSION`` is refused
(``SchemaTooNew``); cronstack tables without a version row, or a version row
that is not a number, mean the database is not cronstack's (``StoreCorrupt``),
and nothing is written. Other tables in the database are left alone.

A record table holds ``id`` (JSONB: a number or a text, so ``5`` is not
``"5"``), ``created_at``/``updated_at`` (double precision), ``doc`` (the free
fields as the JSON text written, so a record reads back exactly, key order
included) and ``data``, the same document as JSONB generated from ``doc`` (``DATA_SQL``),
which filters and declared indexes read. ``seq`` keeps insertion order.
Assigned ids come from the table's sequence (``sequence_name``); record
tables are always named with their schema (``qualified``). Version 2 rewrote
``data`` and replaced ``cronstack_counters`` by the sequences (``_v2``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine._store.errors import SchemaTooNew, StoreCorrupt
from engine._store.filters import COLUMNS
from engine._store.postgres_filters import value_sql
from engine._store.schema import index_name

__all__ = ("CURRENT_VERSION", "MIGRATIONS", "LOCK_NAMESPACE", "UPSERT_NAMESPACE", "ID_NAMESPACE", "DATA_SQL",
           "migrate", "record_table_ddl", "sequence_ddl", "sequence_name", "qualified", "quote_ident",
           "index_ddl", "pg_index_name", "table_lock_key")

#: the first key of cronstack's two-key advisory locks ("cron" in ASCII)
LOCK_NAMESPACE = 0x63726F6E
#: second keys: 0 = migrations; -1 = claim_fires_checked (transaction-level); engines' liveness locks
#: use their lock_key (>= 1). Upserts and id raises have namespaces of their own (below); DDL on a
#: record table takes the one-key lock ``table_lock_key(table)`` (a separate key space)
_MIGRATION_KEY = 0
#: first key of an upsert's transaction-level lock on its table (second: ``table_lock_key >> 32``)
UPSERT_NAMESPACE = 0x63727570  # "crup"
#: first key of the short session-level lock around raising a table's id sequence to a given id
ID_NAMESPACE = 0x63726964  # "crid"
#: the largest id a sequence hands out (``records.MAX_INT_ID``)
_MAX_ID = 2**63 - 1
#: ``data``: the document as JSONB. JSONB cannot hold NUL, so a ``\u0000`` escape (a NUL in a text)
#: becomes ``\ufffd``; only a real escape: one preceded by an even number of backslashes (``\\u0000``
#: is a backslash the user typed, then ``u0000``). The regular expression runs only on documents
#: holding the six characters at all.
DATA_SQL = ("CASE WHEN strpos(doc::text, '\\u0000') = 0 THEN doc::text::jsonb "
            "ELSE regexp_replace(doc::text, '(?<!\\\\)((?:\\\\\\\\)*)\\\\u0000', '\\1\\\\ufffd', 'g')::jsonb END")

_V1 = (
    "CREATE TABLE cronstack_schema (version integer NOT NULL)",
    """CREATE TABLE cronstack_runs (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        id text PRIMARY KEY,
        task text NOT NULL,
        kind text NOT NULL DEFAULT 'task',
        trigger text NOT NULL,
        scheduled_at double precision,
        not_before double precision,
        started_at double precision,
        finished_at double precision,
        attempt integer NOT NULL DEFAULT 1,
        status text NOT NULL,
        result text,
        error text,
        parent_id text,
        inputs text,
        engine_id text,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    )""",
    # one row per scheduled fire: what makes claim_fire exactly-once among engines
    """CREATE UNIQUE INDEX cronstack_runs_fire ON cronstack_runs(task, scheduled_at)
        WHERE trigger IN ('schedule', 'catchup')""",
    "CREATE INDEX cronstack_runs_due ON cronstack_runs(status, not_before)",
    "CREATE INDEX cronstack_runs_task ON cronstack_runs(task, created_at)",
    "CREATE INDEX cronstack_runs_parent ON cronstack_runs(parent_id)",
    "CREATE INDEX cronstack_runs_engine ON cronstack_runs(engine_id) WHERE status = 'running'",
    """CREATE INDEX cronstack_runs_executed
        ON cronstack_runs(task, coalesce(started_at, scheduled_at, created_at))""",
    """CREATE TABLE cronstack_traces (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id text NOT NULL,
        entries text NOT NULL,
        created_at double precision NOT NULL
    )""",
    "CREATE INDEX cronstack_traces_run ON cronstack_traces(run_id)",
    "CREATE TABLE cronstack_counters (tbl text PRIMARY KEY, last_id bigint NOT NULL)",
    """CREATE TABLE cronstack_task_state (
        task text PRIMARY KEY,
        last_fire double precision,
        paused boolean NOT NULL DEFAULT false,
        extra text NOT NULL DEFAULT '{}',
        updated_at double precision NOT NULL
    )""",
    # engines that share the database; each holds an advisory lock on its lock_key while alive
    """CREATE TABLE cronstack_engines (
        engine_id text PRIMARY KEY,
        lock_key integer GENERATED ALWAYS AS IDENTITY UNIQUE,
        started_at double precision NOT NULL
    )""",
)



async def _v2(conn) -> None:
    """Version 2, for every record table (those with a ``cronstack_counters`` row): ``data`` made
    again with ``DATA_SQL`` (version 1 replaced every ``\\u0000``, also a typed backslash's: the
    rows are rewritten), which drops the declared indexes on it (built with path literals where an
    element ``null`` was SQL NULL): each engine's open builds its declared ones again; and the
    table's id sequence, started after its counter (ids are never reused)."""
    schema = await conn.fetchval("SELECT current_schema()")
    for tbl, last_id in await conn.fetch("SELECT tbl, last_id FROM cronstack_counters ORDER BY tbl"):
        table = qualified(schema, tbl)
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            continue
        await conn.execute(f"ALTER TABLE {table} DROP COLUMN data")
        await conn.execute(f"ALTER TABLE {table} ADD COLUMN data jsonb GENERATED ALWAYS AS ({DATA_SQL}) STORED")
        await conn.execute(sequence_ddl(schema, tbl))
        if last_id >= 1:
            await conn.execute("SELECT setval($1::text::regclass, $2)", sequence_name(schema, tbl), last_id)


MIGRATIONS: tuple[tuple[Any, ...], ...] = (_V1, (_v2,))
CURRENT_VERSION = len(MIGRATIONS)


async def _tables(conn) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    return {r[0] for r in rows}


async def _version(conn, where: str, target: int) -> int:
    tables = await _tables(conn)
    if "cronstack_schema" not in tables:
        ours = sorted(t for t in tables if t.startswith("cronstack_"))
        if ours:
            raise StoreCorrupt(
                f"{where} has tables named like cronstack's ({', '.join(ours)}) but no cronstack_schema "
                "version: it is not a cronstack database; use another database (or schema)"
            )
        return 0
    rows = await conn.fetch("SELECT version FROM cronstack_schema")
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreCorrupt(
            f"{where}: cronstack_schema holds {len(rows)} rows instead of one version: "
            "it is not a cronstack database, or it was damaged; use another database"
        )
    found = rows[0][0]
    if found > target:
        raise SchemaTooNew(
            f"{where} has schema version {found}, newer than this cronstack supports "
            f"({target}); upgrade cronstack or use another database",
            version=found,
            supported=target,
        )
    return found


async def migrate(conn, where: str, migrations=MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)``; the version it had (checked before any write)."""
    target = len(migrations)
    found = await _version(conn, where, target)
    if found == target:
        return found
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NAMESPACE, _MIGRATION_KEY)
        version = await _version(conn, where, target)  # another engine may have migrated meanwhile
        for step in range(version, target):
            for statement in migrations[step]:
                if callable(statement):
                    await statement(conn)
                else:
                    await conn.execute(statement)
            if step == 0:
                await conn.execute("INSERT INTO cronstack_schema (version) VALUES (1)")
            else:
                await conn.execute("UPDATE cronstack_schema SET version = $1", step + 1)
    return found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``: a record table named like a catalog relation (``pg_user``...) is never
    read as ``pg_catalog``'s, which the search path puts first."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def sequence_name(schema: str, table: str) -> str:
    """The qualified name of record table ``table``'s id sequence (``cronstack_`` names are not
    table names users may take; shortened to 63 bytes keeping a hash, as index names)."""
    name = f"cronstack_ids_{table}"
    if len(name) > 63:
        name = f"cronstack_ids_{table[:30]}_{hashlib.sha256(table.encode()).hexdigest()[:16]}"
    return qualified(schema, name)


def sequence_ddl(schema: str, table: str) -> str:
    return f"CREATE SEQUENCE IF NOT EXISTS {sequence_name(schema, table)} MINVALUE 1 MAXVALUE {_MAX_ID}"


def record_table_ddl(schema: str, table: str) -> str:
    """DDL of record table ``table`` (a checked, lower-case name)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, table)} ("
        "seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "id jsonb NOT NULL UNIQUE, "
        "created_at double precision NOT NULL, updated_at double precision NOT NULL, "
        "doc json NOT NULL, "
        # JSONB cannot hold NUL: filters see U+FFFD there (the stored doc keeps the NUL)
        f"data jsonb GENERATED ALWAYS AS ({DATA_SQL}) STORED)"
    )


def pg_index_name(table: str, field: str) -> str:
    """``schema.index_name``, shortened to PostgreSQL's 63 bytes (keeping a hash of the pair)."""
    name = index_name(table, field)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(f"{table}\x00{field}".encode()).hexdigest()[:16]
    return f"cx_{table[:40]}_{digest}"


def index_ddl(schema: str, table: str, field: str) -> str:
    """An expression index on exactly the JSONB expression filters use (columns: a plain index)."""
    expr = field if field in COLUMNS else value_sql(field)
    return f"CREATE INDEX IF NOT EXISTS {quote_ident(pg_index_name(table, field))} ON {qualified(schema, table)} ({expr})"


def table_lock_key(table: str) -> int:
    """A signed 64-bit advisory lock key for DDL and upserts on ``table``."""
    return int.from_bytes(hashlib.sha256(b"cronstack-table\x00" + table.encode()).digest()[:8], "big", signed=True)
