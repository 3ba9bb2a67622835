"""Group commit: many writers share transactions, and a bad write fails only its own caller."""

from __future__ import annotations

import asyncio

import pytest

from engine._store import DuplicateRecord, InvalidRecord, RecordNotFound, StoreError, open_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/g.db") as s:
        yield s


async def test_one_bad_write_among_250_fails_alone(store):
    await store.add("t", {"id": "taken"})
    before = store.write_stats["batches"]

    async def good(i: int):
        return await store.add("t", {"i": i})

    async def bad():
        return await store.add("t", {"id": "taken", "i": -1})

    calls = [good(i) for i in range(125)] + [bad()] + [good(i) for i in range(125, 250)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], DuplicateRecord)
    assert results[125] is errors[0]
    ids = [r["id"] for r in results if isinstance(r, dict)]
    assert len(set(ids)) == 250
    assert await store.count("t") == 251
    assert sorted(r["i"] for r in await store.query("t", filter={"i": {"$gte": 0}})) == list(range(250))
    assert (await store.get("t", id="taken")).get("i") is None
    # the 250 writes did share transactions
    assert store.write_stats["batches"] - before < 250


async def test_mixed_failures_in_one_batch(store):
    await store.add("t", {"id": 1, "v": "orig"})
    ops = [
        store.add("t", {"v": "a"}),
        store.edit("t", 999, {"v": "x"}),  # missing: fails alone, without a rollback
        store.edit("t", 1, {"v": "edited"}),
        store.add("t", {"id": 1}),  # duplicate: forces the isolated replay
        store.upsert("u", {"k": "k1", "v": 1}, "k"),
        store.delete("t", 12345),
    ]
    results = await asyncio.gather(*ops, return_exceptions=True)
    assert isinstance(results[1], RecordNotFound)
    assert isinstance(results[3], DuplicateRecord)
    assert results[2]["v"] == "edited" and results[5] is False
    assert (await store.get("t", id=1))["v"] == "edited"
    assert await store.count("t") == 2 and await store.count("u") == 1


async def test_unencodable_write_never_reaches_the_batch(store):
    results = await asyncio.gather(
        store.add("t", {"ok": 1}), store.add("t", {"bad": object()}), store.add("t", {"ok": 2}),
        return_exceptions=True,
    )
    assert isinstance(results[1], InvalidRecord)
    assert await store.count("t") == 2


async def test_table_created_by_a_failed_write_is_not_remembered(store):
    # the batch creates table "fresh", then rolls back; the next write must create it again
    await store.add("other", {"id": "x"})
    results = await asyncio.gather(
        store.add("fresh", {"id": "y"}), store.add("other", {"id": "x"}), return_exceptions=True
    )
    assert isinstance(results[1], DuplicateRecord)
    assert await store.count("fresh") == 1
    assert (await store.add("fresh", {"v": 1}))["id"] == 1


@pytest.mark.parametrize("entry", ["add", "queue_add"])
async def test_cancelled_caller_still_commits(store, entry):
    """Through ``add`` (a coroutine) or ``queue_add`` (the writer's future itself, awaited by
    the step's task): a caller cancelled after queueing its row leaves the row committed."""
    await store.add("t", {"v": "first"})  # the table's id counter is loaded: add queues at once

    async def step():
        return await getattr(store, entry)("t", {"v": "survivor"})

    task = asyncio.ensure_future(step())
    await asyncio.sleep(0)  # queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await store.count("t") == 2:
            break
        await asyncio.sleep(0.01)
    assert (await store.query("t"))[1]["v"] == "survivor"


async def test_close_commits_pending_then_refuses(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    store = await open_store(url)
    await store.add("t", {"i": -1})  # load the id counter, so the adds below queue at once
    pending = [asyncio.ensure_future(store.add("t", {"i": i})) for i in range(100)]
    await asyncio.sleep(0)
    await store.close()
    assert all(p.done() and not p.exception() for p in pending)
    with pytest.raises(StoreError, match="closed"):
        await store.add("t", {"i": -1})
    async with open_store(url) as again:
        assert await again.count("t") == 101


async def test_engine_state_and_records_share_batches(store):
    async def run(i: int):
        await store.insert_run({"id": f"r{i}", "task": "t"})
        await store.add("t", {"run": f"r{i}"})
        await store.update_run(f"r{i}", {"status": "completed"})

    await asyncio.gather(*(run(i) for i in range(200)))
    assert await store.count_runs("t", "completed") == 200
    assert await store.count("t") == 200
    assert store.write_stats["writes"] == 600
    assert store.write_stats["batches"] < 600


async def test_reads_do_not_wait_behind_a_write_transaction(store):
    import threading

    await store.add("t", {"v": "committed"})
    released = threading.Event()
    conn = store._conn

    def long_write() -> bool:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("""INSERT INTO t (id, created_at, updated_at, data) VALUES (99, 0, 0, '{}')""")
        seen = released.wait(timeout=30)  # held open until the read below has finished
        conn.execute("COMMIT")
        return seen

    writing = asyncio.ensure_future(store._writer.call(long_write))
    await asyncio.sleep(0.05)
    assert not writing.done()
    rows = await store.query("t")  # served by the read connection while the write is open
    assert [r["v"] for r in rows] == ["committed"]  # the uncommitted row is not visible
    released.set()
    assert await writing is True
    assert await store.count("t") == 2


async def test_database_refusing_writes_fails_each_caller_and_recovers(store):
    from engine._store import RecordError, WriteFailed

    await store.add("t", {"v": 0})
    conn = store._conn
    await store._writer.call(lambda: conn.execute("PRAGMA query_only = 1"))
    results = await asyncio.gather(*(store.add("t", {"v": i}) for i in range(1, 21)),
                                   store.insert_run({"id": "r", "task": "x"}),
                                   return_exceptions=True)
    assert all(isinstance(r, WriteFailed) for r in results[:20])
    assert all(isinstance(r, RecordError) and "readonly" in r.message for r in results[:20])
    assert isinstance(results[20], StoreError)
    await store._writer.call(lambda: conn.execute("PRAGMA query_only = 0"))
    assert (await store.add("t", {"v": 99}))["v"] == 99
    assert [r["v"] for r in await store.query("t")] == [0, 99]


@pytest.mark.parametrize("n", [1, 3, 255, 256, 257, 700])
async def test_batched_adds_store_text_and_read_back_verbatim(store, n):
    # adds of one batch go to SQLite as multi-row INSERTs of 256, 128, ... 1 rows
    await store.add("t", {"warm": True})  # id counter loaded: the adds below queue at once
    docs = [{"i": i, "name": f"naïve ☃ {i}", "nul": "a\x00b", "nested": {"k": [i, None]}}
            for i in range(n)]
    before = store.write_stats["batches"]
    recs = await asyncio.gather(*(store.add("t", d) for d in docs))
    assert store.write_stats["batches"] - before <= 2  # they shared transactions
    assert [r["id"] for r in recs] == list(range(2, n + 2))
    conn = store._conn
    kinds = await store._writer.call(
        lambda: conn.execute("SELECT DISTINCT typeof(data) FROM t").fetchall())
    assert kinds == [("text",)]
    rows = await store.query("t", filter={"i": {"$gte": 0}}, sort="i asc")
    assert [{k: r[k] for k in d} for r, d in zip(rows, docs)] == docs
    assert [r["id"] for r in rows] == [r["id"] for r in recs]
    assert await store.count("t", filter={"name": f"naïve ☃ {n - 1}"}) == 1


async def test_call_runs_after_the_writes_queued_before_it(store):
    await store.add("t", {"v": -1})
    conn = store._conn
    adds = [store.add("t", {"v": i}) for i in range(50)]
    counted = store._writer.call(lambda: conn.execute("SELECT count(*) FROM t").fetchone()[0])
    results = await asyncio.gather(*adds, counted)
    assert results[-1] == 51


async def test_call_error_reaches_its_caller_only(store):
    import sqlite3

    await store.add("t", {"v": 0})
    conn = store._conn
    results = await asyncio.gather(
        store.add("t", {"v": 1}),
        store._writer.call(lambda: conn.execute("SELECT * FROM missing_table")),
        store.add("t", {"v": 2}),
        return_exceptions=True,
    )
    assert isinstance(results[1], sqlite3.OperationalError)
    assert results[0]["v"] == 1 and results[2]["v"] == 2
    assert await store.count("t") == 3


async def test_close_stops_the_writer_thread(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path}/s.db")
    thread = store._writer._thread
    assert thread.is_alive()
    await store.add("t", {"v": 1})
    await store.close()
    assert not thread.is_alive()
    await store.close()  # a second close is harmless
    with pytest.raises(StoreError, match="closed"):
        await store._writer.call(lambda: None)


async def test_writes_queued_while_a_batch_commits_form_the_next_batch(store):
    await store.add("t", {"v": -1})

    async def writer(w: int):
        for i in range(20):
            await store.add("t", {"w": w, "i": i})

    before = dict(store.write_stats)
    await asyncio.gather(*(writer(w) for w in range(200)))
    batches = store.write_stats["batches"] - before["batches"]
    assert store.write_stats["writes"] - before["writes"] == 4000
    assert batches < 400  # ~10 writes per batch at the very least
    assert await store.count("t") == 4001


async def test_file_store_checkpoints_every_10000_wal_pages(store):
    conn = store._conn
    got = await store._writer.call(lambda: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    assert got == 10_000


# -- row entries: runs of adds share one queue entry and one parameter list -------


async def _statements_of(store, writes):
    """SQL the writer thread ran while ``writes`` (awaitables) completed."""
    seen: list[str] = []
    conn = store._conn
    await store._writer.call(lambda: conn.set_trace_callback(seen.append))
    try:
        results = await asyncio.gather(*writes, return_exceptions=True)
    finally:
        await store._writer.call(lambda: conn.set_trace_callback(None))
    return results, [s for s in seen if "set_trace_callback" not in s]


async def test_a_batch_of_adds_is_one_transaction_of_multi_row_inserts(store):
    await store.add("t", {"warm": True})  # creates the table, loads its id counter
    results, sql = await _statements_of(store, [store.add("t", {"i": i}) for i in range(300)])
    assert [r["id"] for r in results] == list(range(2, 302))
    assert [s.split(" ")[0] for s in sql] == ["BEGIN"] + ["INSERT"] * 4 + ["COMMIT"]
    rows_per_insert = [s.count("), (") + 1 for s in sql[1:-1]]  # traced with values bound
    assert rows_per_insert == [256, 32, 8, 4]
    assert "cronstack_counters" not in " ".join(sql)  # the high-water mark is kept on delete
    rows = await store.query("t")  # insertion (rowid) order is the callers' order
    assert [r["id"] for r in rows] == list(range(1, 302))
    conn = store._conn
    kinds = await store._writer.call(
        lambda: conn.execute("SELECT DISTINCT typeof(data) FROM t").fetchall())
    assert kinds == [("text",)]


async def test_a_failing_run_of_rows_is_replayed_row_by_row(store):
    await store.add("t", {"id": "taken"})
    calls = [store.add("t", {"i": i}) for i in range(10)] + [store.add("t", {"id": "taken"})]
    results, sql = await _statements_of(store, calls)
    assert isinstance(results[10], DuplicateRecord)
    assert [r["i"] for r in results[:10]] == list(range(10))
    assert any(s.startswith("SAVEPOINT") for s in sql)  # the isolated replay ran
    assert await store.count("t") == 11  # each good row once: the failed attempt was rolled back


async def test_rows_never_commit_inside_a_transaction_left_open(store):
    await store.add("t", {"v": 0})
    conn = store._conn
    await store._writer.call(lambda: conn.execute("BEGIN"))
    results = await asyncio.gather(*(store.add("t", {"v": i}) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    await store._writer.call(lambda: conn.execute("ROLLBACK"))
    assert await store.count("t") == 1
    assert (await store.add("t", {"v": 9}))["v"] == 9


async def test_a_write_between_rows_keeps_its_place(store):
    await store.add("t", {"warm": True})
    first, deleted, again = await asyncio.gather(
        store.add("t", {"id": 7, "v": 1}), store.delete("t", 7), store.add("t", {"id": 7, "v": 2})
    )
    assert first["v"] == 1 and deleted is True and again["v"] == 2
    assert (await store.get("t", id=7))["v"] == 2


async def test_a_cancelled_caller_among_rows_of_one_entry(store):
    await store.add("t", {"warm": True})
    tasks = [asyncio.ensure_future(store.add("t", {"i": i})) for i in range(10)]
    await asyncio.sleep(0)  # all ten queued in one entry
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r["id"] for i, r in enumerate(results) if i != 3] == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    for _ in range(100):
        if await store.count("t") == 11:
            break
        await asyncio.sleep(0.01)
    assert sorted(r["i"] for r in await store.query("t", filter={"i": {"$gte": 0}})) == list(range(10))


async def test_batches_stop_near_max_batch_with_row_entries(store, monkeypatch):
    from engine._store import writer

    monkeypatch.setattr(writer, "MAX_BATCH", 100)
    await store.add("t", {"warm": True})
    before = dict(store.write_stats)
    results = await asyncio.gather(*(store.add("t", {"i": i}) for i in range(600)))
    assert [r["id"] for r in results] == list(range(2, 602))
    assert store.write_stats["writes"] - before["writes"] == 600
    assert store.write_stats["batches"] - before["batches"] >= 3  # 256 + 256 + 88 rows
    assert await store.count("t") == 601


@pytest.mark.parametrize("n", [2, 5, 100, 700, 2049])
async def test_rows_keep_the_callers_order_at_every_size(store, n):
    # statements of 256, 128, ... 1 rows; over 256 rows one entry becomes several
    await store.add("t", {"warm": True})
    recs = await asyncio.gather(*(store.add("t", {"i": i}) for i in range(n)))
    rows = await store.query("t")
    assert [r["id"] for r in rows] == [1] + [r["id"] for r in recs]
    assert [r.get("i") for r in rows[1:]] == list(range(n))


async def test_ids_are_not_reused_after_delete_many_and_reopen(tmp_path):
    url = f"sqlite:///{tmp_path}/hw.db"
    async with open_store(url) as store:
        for i in range(5):
            await store.add("items", {"i": i})
        assert await store.delete_many("items", {"i": {"$gte": 3}}) == 2
    async with open_store(url) as store:
        assert (await store.add("items", {}))["id"] == 6
