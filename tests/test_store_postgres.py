"""PostgreSQL-only store behaviour: clear errors, schema versions, expression indexes, engines sharing."""

from __future__ import annotations

import asyncio
import threading
import time

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


async def test_concurrent_adds_share_one_insert_and_keep_their_order(pg_url):
    async with open_store(pg_url) as store:
        await store.add("t", {"i": -1})
        got = await asyncio.gather(*(store.add("t", {"i": i}) for i in range(300)))
        assert [r["id"] for r in got] == list(range(2, 302))
        assert store.write_stats["batches"] <= 3  # one statement per batch, not a savepoint per add
        rows = await store.query("t", filter={"i": {"$gte": 0}})
        assert [(r["id"], r["i"]) for r in rows] == [(i + 2, i) for i in range(300)]  # seq follows the ids


async def test_assigned_ids_skip_ids_written_outside_cronstack(pg_url):
    async with open_store(pg_url) as store:
        await store.add("t", {"i": 0})
        conn = await asyncpg.connect(pg_url)
        try:  # ids the sequence will hand out, taken by rows cronstack did not write
            await conn.execute("""INSERT INTO t (id, created_at, updated_at, doc) VALUES ('2', 0, 0, '{}'),
                                  ('11', 0, 0, '{}')""")
        finally:
            await conn.close()
        # alone in its batch: the next id (2) is taken and skipped (it used to fail every later add)
        first = (await store.add("t", {"i": 1}))["id"]
        assert first > 2
        got = await asyncio.gather(*(store.add("t", {"i": i}) for i in range(2, 12)))
        ids = [g["id"] for g in got]
        assert ids == sorted(ids) and len(set(ids)) == 10 and min(ids) > first and 11 not in ids
        # a shared INSERT meeting a taken id rolls back and its adds run one by one, each skipping it
        conn = await asyncpg.connect(pg_url)
        try:
            nxt = max(ids) + 2
            await conn.execute(f"""INSERT INTO t (id, created_at, updated_at, doc) VALUES ('{nxt}', 0, 0, '{{}}')""")
        finally:
            await conn.close()
        got = await asyncio.gather(*(store.add("t", {"i": i}) for i in range(12, 22)))
        more = [g["id"] for g in got]
        assert more == sorted(more) and nxt not in more and len(set(more)) == 10 and min(more) > max(ids)
        rows = await store.query("t", filter={"i": {"$gte": 12}})
        assert [r["i"] for r in rows] == list(range(12, 22))  # seq follows the submission order
        assert await store.count("t") == 25


async def test_two_engines_adding_to_two_tables_in_opposite_orders_never_fail(pg_url):
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        for s in (a, b):
            await s.add("t1", {"x": 0})
            await s.add("t2", {"x": 0})

        async def burst(store, order, i):
            await asyncio.gather(*(store.add(t, {"i": i}) for t in order))

        for _ in range(5):
            await asyncio.gather(*(burst(a, ["t1", "t2"], i) for i in range(20)),
                                 *(burst(b, ["t2", "t1"], i) for i in range(20)))
        for t in ("t1", "t2"):
            rows = await a.query(t)
            assert len(rows) == 202 and len({r["id"] for r in rows}) == 202


async def test_a_given_integer_id_raises_the_sequence_and_text_ids_stay_apart(pg_url):
    async with open_store(pg_url) as a, open_store(pg_url) as b:
        await a.add("t", {"id": "5"})
        assert (await b.add("t", {}))["id"] == 1
        await a.add("t", {"id": 40})
        await b.add("t", {"id": 7})  # below: never lowers it
        assert (await b.add("t", {}))["id"] == 41
        assert (await a.add("t", {"id": 5}))["id"] == 5  # 5 is not "5"
        await a.delete("t", 41)
        assert (await a.add("t", {}))["id"] == 42  # never reused


async def test_a_new_table_made_by_a_shared_insert_that_fails_is_made_again(pg_url):
    from engine._store.errors import InvalidRecord

    async with open_store(pg_url) as store:
        bad = {"n": 1, "text": "\ud800"}  # a lone surrogate: refused before any SQL
        got = await asyncio.gather(store.add("fresh", {"n": 0}), store.add("fresh", {"n": 2}),
                                   store.add("other", bad), return_exceptions=True)
        assert isinstance(got[2], InvalidRecord) and [g["id"] for g in got[:2]] == [1, 2]
        assert await store.count("fresh") == 2


async def test_reads_use_custom_plans_and_skip_the_pool_reset(pg_url):
    async with open_store(pg_url, indexes={"items": ["status"]}) as store:
        assert (await store._fetch("SHOW plan_cache_mode"))[0][0] == "force_custom_plan"
        await asyncio.gather(*(store.add("items", {"status": f"s{i % 20}", "n": i}) for i in range(2000)))
        # a generic plan of "... = $1 ORDER BY seq LIMIT $2" walks the whole primary key; run the
        # query past the five runs after which PostgreSQL would switch, and check the plan it runs
        for _ in range(8):
            assert len(await store.query("items", filter={"status": "s3"}, limit=5)) == 5
        async with store._pool.acquire() as conn:
            await conn.execute("PREPARE q(jsonb, bigint) AS SELECT seq FROM items "
                               "WHERE (data #> '{status}') = $1 ORDER BY seq LIMIT $2")
            for _ in range(8):
                plan = "\n".join(r[0] for r in await conn.fetch("""EXPLAIN EXECUTE q('"s3"', 5)"""))
            await conn.execute("DEALLOCATE q")
        assert "$1" not in plan, plan


async def test_a_query_past_one_text_reads_row_by_row(pg_url, monkeypatch):
    async with open_store(pg_url) as store:
        for i in range(5):
            await store.add("t", {"i": i, "f": i + 0.5})
        fetch = store._fetch

        async def too_big(sql, *params):
            if "string_agg" in sql:
                raise asyncpg.ProgramLimitExceededError("out of memory")
            return await fetch(sql, *params)

        monkeypatch.setattr(store, "_fetch", too_big)
        rows = await store.query("t", sort="i desc", limit=3)
        assert [(r["id"], r["i"], r["f"]) for r in rows] == [(5, 4, 4.5), (4, 3, 3.5), (3, 2, 2.5)]
        assert list(rows[0]) == ["id", "created_at", "updated_at", "i", "f"]


def _drop_at_commit(pg_server, db: str) -> threading.Thread:
    """Make COMMITs wait for a synchronous standby that never comes, terminate the first session seen
    waiting there (committed locally, its reply never sent: a failover's case), then undo the setting."""
    pg_server.psql("ALTER SYSTEM SET synchronous_standby_names = 'nosuchstandby'")
    pg_server.psql("SELECT pg_reload_conf()")
    time.sleep(0.5)  # every backend reads the new setting before its next command

    def kill() -> None:
        try:
            for _ in range(200):
                pids = pg_server.psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' "
                                      "AND wait_event = 'SyncRep'").split()
                if pids:
                    pg_server.psql(f"SELECT pg_terminate_backend({pids[0]})")
                    return
                time.sleep(0.05)
        finally:
            pg_server.psql("ALTER SYSTEM RESET synchronous_standby_names")
            pg_server.psql("SELECT pg_reload_conf()")

    th = threading.Thread(target=kill)
    th.start()
    return th


async def test_a_connection_lost_at_commit_is_an_unknown_outcome_and_a_claim_recognises_itself(pg_server, pg_url):
    from engine._store.errors import WriteFailed, WriteOutcomeUnknown

    db = pg_url.rsplit("/", 1)[1]
    pg_server.psql(f'ALTER DATABASE "{db}" SET synchronous_commit = on')  # the test server has it off
    async with open_store(pg_url) as store:
        await store.add("notes", {"n": 0})
        th = _drop_at_commit(pg_server, db)
        try:
            with pytest.raises(WriteOutcomeUnknown, match="may or may not be stored") as err:
                await store.add("notes", {"n": 1})
        finally:
            await asyncio.to_thread(th.join)
        assert not isinstance(err.value, WriteFailed)  # not "failed, try again"
        assert await store.count("notes", filter={"n": 1}) == 1  # it was stored
        # a claim whose commit is lost: the store claims again and recognises its own row
        row = {"id": "run-1", "task": "job", "trigger": "schedule", "status": "running", "engine_id": "E1",
               "started_at": 1000.0}
        th = _drop_at_commit(pg_server, db)
        try:
            assert await store.claim_fire("job", 1000.0, row) is True
        finally:
            await asyncio.to_thread(th.join)
        assert await store.claim_fire("job", 1000.0, row) is True  # the same claim again: still ours
        assert await store.claim_fire("job", 1000.0, dict(row, id="run-2")) is False  # another's
        assert await store.claim_fires([dict(row, scheduled_at=1000.0)]) == [True]
        fire = dict(row, id="run-3", scheduled_at=2000.0)
        th = _drop_at_commit(pg_server, db)
        try:
            assert await store.claim_fires_checked([fire], [1]) == ["skipped"]  # run-1 is running
        finally:
            await asyncio.to_thread(th.join)
        assert await store.claim_fires_checked([fire], [1]) == ["skipped"]
        assert await store.claim_fires_checked([dict(fire, id="run-4")], [1]) == ["taken"]
        assert [(r["id"], r["status"]) for r in await store.list_runs("job", newest_first=False)] == [
            ("run-1", "running"), ("run-3", "skipped")]


async def test_engines_opening_together_create_declared_indexes_once(pg_url):
    async with open_store(pg_url) as store:
        await store.add("orders", {"status": "x"})
    idx = {"orders": [f"f{i}" for i in range(20)]}
    for _ in range(3):
        got = await asyncio.gather(*(open_store(pg_url, indexes=idx) for _ in range(6)), return_exceptions=True)
        for s in got:
            if not isinstance(s, BaseException):
                await s.close()
        assert [s for s in got if isinstance(s, BaseException)] == []


@pytest.mark.parametrize("flt", [{"created_at": {"$gt": 10**400}}, {"created_at": 10**400},
                                 {"updated_at": {"$in": [10**400, -(10**400)]}}, {"created_at": {"$lt": -(10**400)}}])
async def test_a_huge_integer_against_a_time_column_matches_nothing(pg_url, flt):
    async with open_store(pg_url) as store:
        await store.add("t", {"a": 1})
        assert await store.query("t", filter=flt) == []
        assert await store.count("t", filter={"created_at": {"$lt": 10**400}}) == 1  # as SQLite: +inf


async def test_fields_named_null_match_and_use_their_index(pg_url):
    async with open_store(pg_url, indexes={"t": ["NULL", "a.null"]}) as store:
        await store.add("t", {"NULL": 5, "null": 1, "a": {"null": "x"}})
        await store.add("t", {"NULL": 6})
        assert [r["id"] for r in await store.query("t", filter={"NULL": 5})] == [1]
        assert [r["id"] for r in await store.query("t", filter={"null": {"$exists": True}})] == [1]
        assert [r["id"] for r in await store.query("t", filter={"NULL": {"$gt": 0}})] == [1, 2]
        assert [r["id"] for r in await store.query("t", filter={"a.null": "x"})] == [1]
        assert [r["id"] for r in await store.query("t", sort="NULL desc")] == [2, 1]
        for _ in range(3):
            await store.upsert("keys", {"Null": "k1"}, "Null")
        assert await store.count("keys") == 1
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("SET enable_seqscan = off")
            from engine._store.postgres_filters import compile_pg_filter

            where, params = compile_pg_filter({"NULL": 5})
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN SELECT * FROM t WHERE {where}", *params))
            assert "cx_t_null" in plan.lower(), plan
        finally:
            await conn.close()


async def test_a_typed_backslash_u0000_is_data_and_only_a_real_nul_is_replaced(pg_url):
    async with open_store(pg_url) as store:
        recs = [{"s": "\\u0000"}, {"s": "x\\u0000y"}, {"s": "a\\\\u0000"}, {"s": "a\x00b"}, {"s": "\\\x00"}]
        for r in recs:
            await store.add("t", r)
        assert [(await store.get("t", id=i + 1))["s"] for i in range(5)] == [r["s"] for r in recs]
        assert [r["id"] for r in await store.query("t", filter={"s": "\\u0000"})] == [1]
        assert [r["id"] for r in await store.query("t", filter={"s": {"$like": "%\\\\u0000%"}})] == [1, 2, 3]
        assert [r["id"] for r in await store.query("t", filter={"s": "\\\ufffd"})] == [5]  # a NUL after a backslash


async def test_a_version_1_database_is_migrated(pg_url):
    from engine._store.postgres_schema import MIGRATIONS, migrate

    conn = await asyncpg.connect(pg_url)
    try:  # a database as version 1 left it: counter, data replacing every \u0000, an index on '{NULL}'
        await migrate(conn, "test", MIGRATIONS[:1])
        await conn.execute("""CREATE TABLE t (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id jsonb NOT NULL UNIQUE, created_at double precision NOT NULL, updated_at double precision NOT NULL,
            doc json NOT NULL, data jsonb GENERATED ALWAYS AS (replace(doc::text, '\\u0000', '\\ufffd')::jsonb) STORED)""")
        await conn.execute("""CREATE INDEX "cx_t_null_old" ON t ((data #> '{NULL}'))""")
        await conn.execute("""INSERT INTO t (id, created_at, updated_at, doc) VALUES
            ('1', 0, 0, '{"s": "\\\\u0000", "NULL": 1}'), ('"k"', 0, 0, '{"s": "b"}')""")
        await conn.execute("INSERT INTO cronstack_counters VALUES ('t', 7)")
    finally:
        await conn.close()
    async with open_store(pg_url, indexes={"t": ["NULL"]}) as store:
        assert [r["id"] for r in await store.query("t", filter={"s": "\\u0000"})] == [1]
        assert [r["id"] for r in await store.query("t", filter={"NULL": 1})] == [1]
        assert (await store.add("t", {}))["id"] == 8  # after the counter: never reused
        assert (await store.get("t", id=1))["s"] == "\\u0000"
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT version FROM cronstack_schema") == CURRENT_VERSION == 2
        names = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 't'")}
        assert "cx_t_null_old" not in names and any(n.startswith("cx_t_NULL") for n in names), names
    finally:
        await conn.close()


async def test_a_table_named_like_a_catalog_relation_is_a_record_table(pg_url):
    async with open_store(pg_url, indexes={"pg_user": ["name"]}) as store:
        for name in ("pg_user", "pg_tables", "pg_settings"):
            await store.add(name, {"name": "ann"})
            assert await store.count(name, filter={"name": "ann"}) == 1
            assert (await store.upsert(name, {"name": "ann", "v": 2}, "name"))["v"] == 2
            assert [r["v"] for r in await store.query(name)] == [2]
    async with open_store(pg_url, indexes={"pg_user": ["name"]}) as store:
        assert await store.count("pg_user") == 1
