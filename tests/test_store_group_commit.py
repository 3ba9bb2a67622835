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


async def test_cancelled_caller_still_commits(store):
    await store.add("t", {"v": "first"})  # the table's id counter is loaded: add queues at once
    task = asyncio.ensure_future(store.add("t", {"v": "survivor"}))
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
