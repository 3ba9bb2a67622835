"""Declared indexes get names that never collide, and old names are upgraded at open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine._store import StoreError, open_store, schema
from engine._store.filters import compile_filter
from engine._store.schema import index_name

pytestmark = pytest.mark.anyio

# Under the old cx_{table}_{field} names these pairs collided: t.x_y and t_x.y are both
# cx_t_x_y, and t.A / t.a differ only in case, which SQLite index names ignore.
COLLIDING = {"t": ["x_y", "A", "a"], "t_x": ["y"]}
PAIRS = [("t", "x_y"), ("t", "A"), ("t", "a"), ("t_x", "y")]


def plan(path: Path, table: str, flt: dict) -> str:
    where, params = compile_filter(flt)
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f'EXPLAIN QUERY PLAN SELECT * FROM "{table}" WHERE {where}', params).fetchall()
    finally:
        conn.close()
    return " | ".join(r[-1] for r in rows)


def cx_indexes(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'cx%'"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def assert_each_uses_its_index(path: Path) -> None:
    for table, field in PAIRS:
        got = plan(path, table, {field: 1})
        assert f"USING INDEX {index_name(table, field)} " in got, (table, field, got)


def test_names_are_distinct_ignoring_case():
    names = [index_name(t, f).lower() for t, f in PAIRS]
    assert len(set(names)) == len(names)
    assert index_name("items", "meta.kind").startswith("cx_items_meta$kind_")


async def test_colliding_declarations_each_get_an_index_on_first_write(tmp_path):
    path = tmp_path / "ix.db"
    async with open_store(f"sqlite:///{path}", indexes=COLLIDING) as store:
        await store.add("t", {"x_y": 1, "A": 1, "a": 1})
        await store.add("t_x", {"y": 1})
    assert len(cx_indexes(path)) == 4
    assert_each_uses_its_index(path)


async def test_colliding_declarations_each_get_an_index_at_open(tmp_path):
    path = tmp_path / "ix.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.add("t", {"x_y": 1, "A": 1, "a": 1})
        await store.add("t_x", {"y": 1})
    async with open_store(f"sqlite:///{path}", indexes=COLLIDING):
        pass
    assert len(cx_indexes(path)) == 4
    assert_each_uses_its_index(path)


async def test_table_declared_twice_in_different_case_keeps_both_lists(tmp_path):
    path = tmp_path / "ix.db"
    async with open_store(f"sqlite:///{path}", indexes={"Items": ["a"], "items": ["b"]}) as store:
        await store.add("items", {"a": 1, "b": 1})
    assert f"USING INDEX {index_name('items', 'a')} " in plan(path, "items", {"a": 1})
    assert f"USING INDEX {index_name('items', 'b')} " in plan(path, "items", {"b": 1})


async def test_declarations_sharing_a_name_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "index_name", lambda table, field: "cx_same")
    with pytest.raises(StoreError, match="t.a and t.b would get the same index name"):
        store = await open_store(f"sqlite:///{tmp_path}/x.db", indexes={"t": ["a", "b"]})
        await store.close()
    assert not (tmp_path / "x.db").exists()


def old_ddl(table: str, field: str) -> str:
    """What index_ddl wrote before the names carried a hash."""
    expr = field if field in ("id", "created_at", "updated_at") else f"json_extract(data, '$.{field}')"
    return f'CREATE INDEX IF NOT EXISTS "cx_{table}_{field.replace(".", "$")}" ON "{table}"({expr})'


async def make_old_database(path: Path) -> None:
    """A database as the old cronstack left it with COLLIDING (and more) declared."""
    async with open_store(f"sqlite:///{path}") as store:
        await store.add("t", {"x_y": 1, "A": 1, "a": 1, "m": {"k": 1}})
        await store.add("t_x", {"y": 1})
    conn = sqlite3.connect(path)
    for table, field in [*PAIRS, ("t", "m.k"), ("t", "created_at")]:
        conn.execute(old_ddl(table, field))  # t_x.y and t.a are silently skipped
    # someone's own index that merely looks like ours: left alone
    conn.execute('CREATE INDEX "cx_t_mine" ON "t"(updated_at, created_at)')
    conn.commit()
    conn.close()
    assert set(cx_indexes(path)) == {"cx_t_x_y", "cx_t_A", "cx_t_m$k", "cx_t_created_at", "cx_t_mine"}


async def test_old_index_names_are_rebuilt_under_new_names(tmp_path):
    path = tmp_path / "old.db"
    await make_old_database(path)
    async with open_store(f"sqlite:///{path}", indexes=COLLIDING) as store:
        assert await store.count("t_x", filter={"y": 1}) == 1
    after = cx_indexes(path)
    # every old cronstack index is gone: no useless duplicate stays behind
    assert not {"cx_t_x_y", "cx_t_A", "cx_t_m$k", "cx_t_created_at"} & set(after)
    assert after["cx_t_mine"] == 'CREATE INDEX "cx_t_mine" ON "t"(updated_at, created_at)'
    # what was declared is indexed, both sides of each old collision included
    assert_each_uses_its_index(path)
    # what the old file had but this open did not declare is kept, under its new name
    assert f"USING INDEX {index_name('t', 'm.k')} " in plan(path, "t", {"m.k": 1})
    assert f"USING INDEX {index_name('t', 'created_at')} " in plan(path, "t", {"created_at": 1})
    assert len(after) == 7
    # a second open changes nothing
    async with open_store(f"sqlite:///{path}", indexes=COLLIDING):
        pass
    assert cx_indexes(path) == after


async def test_old_names_are_upgraded_without_declarations(tmp_path):
    """An opener that declares nothing (a tool, the CLI) does not lose index use either."""
    path = tmp_path / "old.db"
    await make_old_database(path)
    async with open_store(f"sqlite:///{path}"):
        pass
    after = cx_indexes(path)
    assert set(after) == {
        index_name("t", "x_y"), index_name("t", "A"), index_name("t", "m.k"),
        index_name("t", "created_at"), "cx_t_mine",
    }
    assert f"USING INDEX {index_name('t', 'x_y')} " in plan(path, "t", {"x_y": 1})
