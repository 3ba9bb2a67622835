"""Versioned DDL: the engine's own tables, record tables, and migrations.

The schema version lives in ``PRAGMA user_version``. ``MIGRATIONS[i]`` takes a
database from version ``i`` to ``i + 1``; a fresh (or foreign, version 0)
database runs them all, an older one the missing tail, each in one
transaction. A version above ``CURRENT_VERSION`` was written by a newer
cronstack and is refused rather than guessed at.

Record tables are created on first write: ``id`` has no declared type so an
integer stays an integer and a text stays a text (and ``5`` differs from
``"5"``); the free fields are one JSON document in ``data``.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3

from engine._store.errors import InvalidName, SchemaTooNew, StoreError
from engine._store.filters import COLUMNS, check_field, field_sql

__all__ = (
    "CURRENT_VERSION",
    "MIGRATIONS",
    "ENGINE_TABLES",
    "migrate",
    "check_version",
    "record_table_ddl",
    "index_ddl",
    "index_name",
    "check_index_names",
    "upgrade_index_names",
)

_V1 = (
    """CREATE TABLE IF NOT EXISTS cronstack_runs (
        id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'task',
        trigger TEXT NOT NULL,
        scheduled_at REAL,
        not_before REAL,
        started_at REAL,
        finished_at REAL,
        attempt INTEGER NOT NULL DEFAULT 1,
        status TEXT NOT NULL,
        result TEXT,
        error TEXT,
        parent_id TEXT,
        inputs TEXT,
        engine_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    # One row per scheduled fire: what makes claim_fire exactly-once.
    """CREATE UNIQUE INDEX IF NOT EXISTS cronstack_runs_fire
        ON cronstack_runs(task, scheduled_at) WHERE trigger IN ('schedule', 'catchup')""",
    "CREATE INDEX IF NOT EXISTS cronstack_runs_due ON cronstack_runs(status, not_before)",
    "CREATE INDEX IF NOT EXISTS cronstack_runs_task ON cronstack_runs(task, created_at)",
    "CREATE INDEX IF NOT EXISTS cronstack_runs_parent ON cronstack_runs(parent_id)",
    """CREATE TABLE IF NOT EXISTS cronstack_traces (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        entries TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS cronstack_traces_run ON cronstack_traces(run_id)",
    # The highest integer id each record table ever assigned or was given,
    # so that ids are not reused after the newest records are deleted.
    """CREATE TABLE IF NOT EXISTS cronstack_counters (
        tbl TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS cronstack_task_state (
        task TEXT PRIMARY KEY,
        last_fire REAL,
        paused INTEGER NOT NULL DEFAULT 0,
        extra TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    )""",
)

#: Version 2: runs listed by when they ran (the admin API's task history) read an
#: index instead of sorting every run of the task (100,000 runs: 107 ms → 0.13 ms).
_V2: tuple[str, ...] = (
    """CREATE INDEX IF NOT EXISTS cronstack_runs_executed
        ON cronstack_runs(task, coalesce(started_at, scheduled_at, created_at))""",
)

#: Steps from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2)
CURRENT_VERSION = len(MIGRATIONS)
ENGINE_TABLES = ("cronstack_runs", "cronstack_traces", "cronstack_task_state", "cronstack_counters")


def migrate(conn: sqlite3.Connection, where: str, migrations=MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)``; return the version it had.

    ``conn`` is in autocommit mode; each step commits with its version bump,
    so an interrupted migration resumes at the step that did not finish.
    """
    target = len(migrations)
    found = check_version(conn, where, target)
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
    return found


def check_version(conn: sqlite3.Connection, where: str, target: int = CURRENT_VERSION) -> int:
    """The database's schema version; ``SchemaTooNew`` (touching nothing) above ``target``."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > target:
        raise SchemaTooNew(
            f"{where} has schema version {found}, newer than this cronstack supports "
            f"({target}); upgrade cronstack or use another database",
            version=found,
            supported=target,
        )
    return found


def record_table_ddl(table: str) -> str:
    """DDL of record table ``table`` (a checked, lower-case name)."""
    return (
        f'CREATE TABLE IF NOT EXISTS "{table}" ('
        "id NOT NULL UNIQUE, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
        "data TEXT NOT NULL)"
    )


def index_name(table: str, field: str) -> str:
    """The name of the declared index on ``field`` of ``table``.

    Readable (``cx_{table}_{field}``, dots as ``$``) and then the first 8 hex
    digits of a SHA-256 of the exact pair: the readable part alone is
    ambiguous (table ``t`` field ``x_y`` and table ``t_x`` field ``y``) and
    SQLite index names ignore case (fields ``A`` and ``a``), so without the
    hash ``CREATE INDEX IF NOT EXISTS`` silently skipped the second index.
    ``check_index_names`` refuses the (2^-32) case where the hash does not
    tell two declarations apart.
    """
    digest = hashlib.sha256(f"{table}\x00{field}".encode()).hexdigest()[:8]
    return f"{_old_index_name(table, field)}_{digest}"


def _old_index_name(table: str, field: str) -> str:
    """The name cronstack gave indexes before ``index_name`` (ambiguous)."""
    return f"cx_{table}_{field.replace('.', '$')}"


def _index_expr(field: str) -> str:
    return field if field in COLUMNS else field_sql(field)[0]


def index_ddl(table: str, field: str) -> str:
    """DDL of the declared index on ``field`` (checked) of ``table``.

    A JSON field gets an expression index on the very ``json_extract`` text
    the filter compiler emits, so equality and range filters use it.
    """
    return f'CREATE INDEX IF NOT EXISTS "{index_name(table, field)}" ON "{table}"({_index_expr(field)})'


def check_index_names(indexes: dict[str, tuple[str, ...]]) -> None:
    """Refuse declarations whose index names SQLite would take for one (``StoreError``)."""
    seen: dict[str, tuple[str, str]] = {}
    for table, fields in indexes.items():
        for field in fields:
            if field == "id":
                continue
            other = seen.setdefault(index_name(table, field).lower(), (table, field))
            if other != (table, field):
                raise StoreError(
                    f"declared indexes on {other[0]}.{other[1]} and {table}.{field} would get "
                    "the same index name; rename one of the fields or drop one declaration"
                )


_OLD_INDEX_SQL = re.compile(r'CREATE INDEX "(cx_[^"]*)" ON "([^"]+)"\((.*)\)\Z', re.DOTALL)
_JSON_EXPR = re.compile(r"json_extract\(data, '\$\.([A-Za-z0-9_.]+)'\)\Z")


def upgrade_index_names(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Rebuild indexes cronstack created under old names under ``index_name``.

    Run inside the opening transaction. An index counts as cronstack's only
    when its stored SQL is exactly what the old ``index_ddl`` wrote for the
    (table, field) its expression names; any other index is left alone. The
    old index is dropped and the same index created under its new name, so
    the upgraded file keeps every index it had and no useless duplicate
    (the name of a declaration that used to collide with it is now free).
    Idempotent: a file without old names costs one ``sqlite_master`` read.
    Returns the (table, field) pairs rebuilt.
    """
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'cx\\_%' ESCAPE '\\'"
    ).fetchall()
    rebuilt = []
    for name, sql in rows:
        m = _OLD_INDEX_SQL.match(sql or "")
        if m is None or m.group(1) != name:
            continue
        table, expr = m.group(2), m.group(3)
        if expr in COLUMNS:
            field = expr
        else:
            j = _JSON_EXPR.match(expr)
            if j is None:
                continue
            field = j.group(1)
        try:
            check_field(field)
        except InvalidName:
            continue
        if name != _old_index_name(table, field) or sql != (
            f'CREATE INDEX "{name}" ON "{table}"({_index_expr(field)})'
        ):
            continue
        conn.execute(f'DROP INDEX "{name}"')
        conn.execute(index_ddl(table, field))
        rebuilt.append((table, field))
    return rebuilt
