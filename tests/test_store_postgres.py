"""PostgreSQL-only store behaviour: clear errors, schema versions, expression indexes, engines sharing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from engine._store import SchemaTooNew, StoreCorrupt, StoreError, open_store
from engine._store.postgres_schema import CURRENT_VERSION

pytestmark = pytest.mark.anyio


async def test_unreachable_server_is_a_clear_store_error(pg_server):
    url = pg_server.url().replace(f":{pg_server.port}/", ":1/")
    with pytest.raises(StoreError, match="unreachable") as err:
        await open_store(url)
    assert not isinstance(err.value, asyncpg.PostgresError)


async def test_unknown_user_and_database_are_clear_store_errors(pg_server):
    with pytest.raises(StoreError, match="refused the login"):
        await open_store(pg_server.url(user="nobody"))
    with pytest.raises(StoreError, match="create the database first"):
        await open_store(pg_server.url("no_such_db"))


async def test_a_database_that_is_not_cronstacks_is_refused_untouched(pg_server, pg_url):
    name = pg_url.rsplit("/", 1)[1]
    pg_server.psql("CREATE TABLE cronstack_runs (x int)", database=name)
    with pytest.raises(StoreCorrupt, match="not a cronstack database"):
        await open_store(pg_url)
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'cronstack_schema'", database=name) == "0\n"


async def test_a_newer_schema_is_refused(pg_server, pg_url):
    async with open_store(pg_url):
        pass
    name = pg_url.rsplit("/", 1)[1]
    pg_server.psql(f"UPDATE cronstack_schema SET version = {CURRENT_VERSION + 1}", database=name)
    with pytest.raises(SchemaTooNew):
        await open_store(pg_url)


async def test_engines_opening_a_new_database_together_migrate_once(pg_url):
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(4)))
    for s in stores:
        await s.close()
    async with open_store(pg_url) as s:
        assert await s.count_runs() == 0


async def test_declared_indexes_are_expression_indexes_the_filters_use(pg_url):
    async with open_store(pg_url, indexes={"items": ["status", "addr.city", "n", "created_at"]}) as store:
        for i in range(50):
            await store.add("items", {"status": f"s{i}", "n": i, "addr": {"city": f"c{i % 5}"}})
        conn = await asyncpg.connect(pg_url)
        try:
            defs = [r[0] for r in await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'items'")]
            assert any("(data #> '{addr,city}'::text[])" in d for d in defs), defs
            await conn.execute("SET enable_seqscan = off")
            from engine._store.postgres_filters import compile_pg_filter

            for flt in ({"status": "s3"}, {"addr.city": {"$in": ["c1", "c2"]}}, {"n": {"$gt": 40}}, {"created_at": {"$lt": 0}}):
            # (text ranges compare bytes, COLLATE "C": not through the JSONB index; see docs/store.md)
                where, params = compile_pg_filter(flt)
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN SELECT * FROM items WHERE {where}", *params))
                assert "Index" in plan and "cx_items_" in plan, (flt, plan)
        finally:
            await conn.close()
        assert [r["status"] for r in await store.query("items", filter={"addr.city": "c1"}, limit=2)] == ["s1", "s6"]


async def test_two_stores_claim_each_fire_and_each_queued_run_once(pg_url):
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        rows = [{"id": f"{who}{t}", "task": "t", "scheduled_at": float(t)} for who in "ab" for t in range(100)]
        got_a, got_b = await asyncio.gather(a.claim_fires(rows[:100]), b.claim_fires(rows[100:]))
        assert all(x != y for x, y in zip(got_a, got_b))  # each fire claimed by exactly one
        assert await a.count_runs("t") == 100
        for i in range(50):
            await a.insert_run({"id": f"q{i}", "task": "q"})
        claims = await asyncio.gather(*(s.claim_run(f"q{i}", s is a and "ea" or "eb", 1.0)
                                        for i in range(50) for s in (a, b)))
        assert sum(claims) == 50


async def test_upsert_from_two_stores_makes_one_record(pg_url):
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        await a.add("sync", {"seed": 1})
        await asyncio.gather(*(s.upsert("sync", {"ext": "E1", "n": i}, "ext") for i in range(10) for s in (a, b)))
        assert await a.count("sync", filter={"ext": "E1"}) == 1
        ids = [(await s.add("sync", {}))["id"] for s in (a, b, a, b)]
        assert len(set(ids)) == 4


async def test_nul_and_unstorable_values(pg_url):
    async with open_store(pg_url) as store:
        rec = await store.add("t", {"name": "a\x00b"})
        assert (await store.get("t", id=rec["id"]))["name"] == "a\x00b"
        assert await store.count("t", filter={"name": "a\x00b"}) == 0  # as on SQLite: filters cannot match NUL
        assert await store.query("t", filter={"name": {"$like": "a\\"}}) == []  # trailing escape: no match


async def test_a_lost_write_connection_is_a_store_error_then_reconnects(pg_url):
    async with open_store(pg_url) as store:
        await store.add("t", {"a": 1})
        await store._writer._conn.close()
        rec = await store.add("t", {"a": 2})  # reconnected
        assert rec["id"] == 2 and await store.count("t") == 2
