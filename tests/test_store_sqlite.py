"""What only the SQLite backend has: URLs and paths, the file lock, schema versions, indexes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import engine._store
from engine._store import (
    RecordError,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    UnsupportedDatabase,
    open_store,
)
from engine._store.filters import compile_filter
from engine._store.schema import CURRENT_VERSION, ENGINE_TABLES, MIGRATIONS, migrate
from engine._store.sqlite import sqlite_path

pytestmark = pytest.mark.anyio
ROOT = Path(engine._store.__file__).parents[2]


@pytest.fixture
def anyio_backend():
    return "asyncio"


# -- URLs and paths ---------------------------------------------------------------


def test_url_forms(tmp_path):
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert sqlite_path("sqlite:///x.db", base_dir=tmp_path) == str(tmp_path / "x.db")
    assert sqlite_path("sqlite:///sub/../x.db", base_dir=tmp_path) == str(tmp_path / "x.db")


@pytest.mark.parametrize("url", ["sqlite://x.db", "sqlite:///", "sqlite:///dir/", "mysql://h/db",
                                 "sqlite:///x.db?mode=ro", "sqlite:///x.db#f", "file:x.db"])
async def test_bad_urls_are_refused(url):
    with pytest.raises(StoreError):
        await open_store(url)


async def test_an_unknown_scheme_is_refused_clearly_without_its_password():
    with pytest.raises(UnsupportedDatabase) as info:
        await open_store("mysql://u:s3cret@localhost/db")
    assert str(info.value).startswith("unknown database URL scheme 'mysql:' in 'mysql://u:***@localhost/db'; use ")


async def test_relative_path_may_not_leave_base_dir(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(StoreError, match="leaves the project directory"):
        await open_store("sqlite:///../../etc/passwd", base_dir=project)
    with pytest.raises(StoreError, match="leaves the project directory"):
        await open_store("sqlite:///../outside.db", base_dir=project)
    assert not (tmp_path / "outside.db").exists()
    async with open_store("sqlite:///data.db", base_dir=project) as store:
        await store.add("t", {"a": 1})
    assert (project / "data.db").exists()


async def test_missing_directory_is_not_created(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        await open_store(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert not (tmp_path / "no").exists()


async def test_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        await open_store(f"sqlite:///{tmp_path}")


async def test_memory_database_works():
    async with open_store("sqlite:///:memory:") as store:
        rec = await store.add("t", {"a": 1})
        assert await store.get("t", id=rec["id"]) == rec
        await store.insert_run({"id": "r", "task": "x"})
        assert (await store.get_run("r"))["status"] == "queued"


# -- refusing what is not ours -------------------------------------------------------


@pytest.mark.parametrize("content", [b"hello, I am a text file\n" * 10,
                                     b"SQLite format 3\x00" + b"\xff" * 4096])
async def test_non_sqlite_or_corrupt_file_is_refused_and_kept(tmp_path, content):
    path = tmp_path / "precious.db"
    path.write_bytes(content)
    with pytest.raises(StoreCorrupt) as err:
        await open_store(f"sqlite:///{path}")
    assert str(path) in err.value.message
    assert path.read_bytes() == content
    assert not (tmp_path / "precious.db-wal").exists() or content.startswith(b"SQLite")


async def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="upgrade cronstack"):
        await open_store(f"sqlite:///{path}")
    assert path.read_bytes() == before
    async with open_store(f"sqlite:///{tmp_path}/other.db"):  # the lock was released
        pass
    with pytest.raises(SchemaTooNew):  # and the lock on new.db too: same error, not StoreLocked
        await open_store(f"sqlite:///{path}")


async def test_existing_database_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id NOT NULL UNIQUE, created_at REAL NOT NULL, "
                 "updated_at REAL NOT NULL, data TEXT NOT NULL)")
    conn.execute("""INSERT INTO notes VALUES (7, 1.0, 1.0, '{"text": "kept"}')""")
    conn.commit()
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:
        assert (await store.get("notes", id=7))["text"] == "kept"
        assert (await store.add("notes", {"text": "new"}))["id"] == 8
        assert await store.count_runs() == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(ENGINE_TABLES) <= tables
    conn.close()


async def test_a_version_1_database_gets_the_executed_at_index(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, "v1.db", MIGRATIONS[:1])
    conn.execute("INSERT INTO cronstack_runs (id, task, kind, trigger, status, attempt, created_at, updated_at) "
                 "VALUES ('old', 't', 'task', 'manual', 'completed', 1, 5.0, 5.0)")
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:
        assert [r["id"] for r in await store.list_runs("t", by="executed_at")] == ["old"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION >= 2
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM cronstack_runs WHERE task = 't' "
        "ORDER BY coalesce(started_at, scheduled_at, created_at) DESC, rowid DESC LIMIT 10"))
    assert "cronstack_runs_executed" in plan and "TEMP B-TREE FOR ORDER BY" not in plan.upper(), plan
    conn.close()


def test_migrations_run_only_the_missing_steps(tmp_path):
    steps = (("CREATE TABLE a (x)",), ("CREATE TABLE b (x)", "INSERT INTO a VALUES (1)"))
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate(conn, "m.db", steps[:1]) == 0
    conn.execute("INSERT INTO a VALUES (0)")
    assert migrate(conn, "m.db", steps) == 1  # version 1 -> 2: only the second step
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert [r[0] for r in conn.execute("SELECT x FROM a ORDER BY x")] == [0, 1]
    assert migrate(conn, "m.db", steps) == 2  # nothing left to do
    with pytest.raises(SchemaTooNew):
        migrate(conn, "m.db", steps[:1])


def test_failed_migration_step_rolls_back(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, "m.db", (("CREATE TABLE a (x)", "NOT SQL"),))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


async def test_foreign_table_is_reported_as_record_error(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE legacy (name TEXT)")
    conn.close()
    async with open_store(f"sqlite:///{path}") as store:
        with pytest.raises(RecordError, match="not created by cronstack"):
            await store.query("legacy")
        with pytest.raises(RecordError, match="not created by cronstack"):
            await store.add("legacy", {"name": "x"})
        assert (await store.add("other", {"name": "x"}))["id"] == 1  # the store still works


async def test_synchronous_setting(tmp_path):
    with pytest.raises(StoreError, match="synchronous"):
        await open_store(f"sqlite:///{tmp_path}/s.db", synchronous="OFF")
    for asked, pragma in (("NORMAL", 1), ("full", 2)):
        async with open_store(f"sqlite:///{tmp_path}/{asked}.db", synchronous=asked) as store:
            conn = store._conn
            got = await store._writer.call(lambda c=conn: c.execute("PRAGMA synchronous").fetchone())
            assert got[0] == pragma
            mode = await store._writer.call(lambda c=conn: c.execute("PRAGMA journal_mode").fetchone())
            assert mode[0] == "wal"


# -- declared indexes -------------------------------------------------------------


def plan(path: Path, flt: dict) -> str:
    where, params = compile_filter(flt)
    conn = sqlite3.connect(path)
    rows = conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM items WHERE {where}", params).fetchall()
    conn.close()
    return " | ".join(r[-1] for r in rows)


async def test_declared_index_is_used(tmp_path):
    path = tmp_path / "ix.db"
    async with open_store(f"sqlite:///{path}", indexes={"items": ["status", "meta.kind", "created_at"]}) as store:
        for i in range(50):
            await store.add("items", {"status": f"s{i % 5}", "meta": {"kind": i}, "plain": i})
    assert "USING INDEX cx_items_status" in plan(path, {"status": "s1"})
    assert "USING INDEX cx_items_status" in plan(path, {"status": {"$in": ["s1", "s2"]}})
    assert "USING INDEX cx_items_meta$kind" in plan(path, {"meta.kind": {"$gte": 10}})
    assert "USING INDEX cx_items_created_at" in plan(path, {"created_at": {"$lt": 5}})
    assert "USING INDEX" in plan(path, {"id": 3})
    assert plan(path, {"plain": 3}).startswith("SCAN")


async def test_index_declared_later_is_built_at_open(tmp_path):
    path = tmp_path / "later.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.add("items", {"status": "a"})
    assert plan(path, {"status": "a"}).startswith("SCAN")
    async with open_store(f"sqlite:///{path}", indexes={"items": ["status"]}) as store:
        assert await store.count("items", filter={"status": "a"}) == 1
    assert "USING INDEX cx_items_status" in plan(path, {"status": "a"})


async def test_bad_index_declarations_are_refused(tmp_path):
    from engine._store import InvalidName

    with pytest.raises(InvalidName):
        await open_store(f"sqlite:///{tmp_path}/x.db", indexes={"items": ["bad field"]})
    with pytest.raises(InvalidName):
        await open_store(f"sqlite:///{tmp_path}/x.db", indexes={"bad table": ["f"]})


# -- one engine per file ------------------------------------------------------------

SECOND_OPEN = """
import asyncio, sys
from engine._store import open_store, StoreLocked
async def main():
    try:
        async with open_store(sys.argv[1]):
            print("opened")
    except StoreLocked as exc:
        print("locked:", exc)
asyncio.run(main())
"""

HOLD_OPEN = """
import asyncio, sys, time
from engine._store import open_store
async def main():
    async with open_store(sys.argv[1]):
        print("ready", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


def run_script(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
async def test_second_engine_gets_store_locked(tmp_path):
    url = f"sqlite:///{tmp_path}/one.db"
    async with open_store(url):
        out = run_script(SECOND_OPEN, url)
        assert out.startswith("locked:")
        assert f"pid {os.getpid()}" in out and "one.db" in out and "stop it" in out
        with pytest.raises(StoreLocked):  # in the same process too
            await open_store(url)
    assert run_script(SECOND_OPEN, url).startswith("opened")


def start_owner(url: str) -> subprocess.Popen:
    """A process holding the store open, once it says so."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    owner = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, url], env=env,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "ready"
    return owner


@pytest.mark.slow
async def test_sigkilled_owner_leaves_no_stale_lock(tmp_path):
    url = f"sqlite:///{tmp_path}/killed.db"
    owner = start_owner(url)
    try:
        with pytest.raises(StoreLocked, match=f"pid {owner.pid}"):
            await open_store(url)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        owner.stdout.close()
    async with open_store(url) as store:
        await store.add("t", {"after": "kill"})
