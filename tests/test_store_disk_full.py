"""A write that makes SQLite roll back the whole transaction (disk full).

On SQLITE_FULL (and some I/O errors) SQLite ends the transaction itself:
the savepoint of the failing write is gone, and so are the batch's writes
that had succeeded before it. Each of them must fail with the real reason,
and the writer must not go on believing that tables created in that
transaction exist.
"""

from __future__ import annotations

import asyncio

import pytest

from engine._store import WriteFailed, open_store

pytestmark = pytest.mark.anyio


async def _cap_pages(store, extra: int) -> None:
    conn = store._conn
    pages = await store._writer.call(lambda: conn.execute("PRAGMA page_count").fetchone()[0])
    await store._writer.call(lambda: conn.execute(f"PRAGMA max_page_count = {pages + extra}").fetchone())


async def test_a_full_disk_fails_the_batch_with_its_reason_and_forgets_new_tables(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/full.db") as store:
        await store.add("small", {"a": 1})
        await _cap_pages(store, 3)
        big = "x" * 3000
        got = await asyncio.gather(*[store.add("newtab", {"i": i, "pad": big}) for i in range(20)],
                                   return_exceptions=True)
        assert all(isinstance(r, WriteFailed) for r in got), got
        assert "disk is full" in str(got[0]) and "savepoint" not in str(got[0])
        assert not store._conn.in_transaction
        assert "newtab" not in store._writer._ctx.tables
        await _cap_pages(store, 100_000)  # space freed: the table can be made again
        rec = await store.add("newtab", {"after": 1})
        assert await store.count("newtab") == 1 and (await store.get("newtab", id=rec["id"]))["after"] == 1
        assert await store.count("small") == 1


async def test_writes_that_succeeded_before_the_full_disk_fail_too(tmp_path):
    """In the replay a small write may succeed before a big one fills the disk; the rollback takes it."""
    async with open_store(f"sqlite:///{tmp_path}/full.db") as store:
        await store.add("t", {"warm": True})
        await _cap_pages(store, 2)
        got = await asyncio.gather(store.add("t", {"small": 1}), store.add("t", {"pad": "y" * 20_000}),
                                   return_exceptions=True)
        assert [type(r) for r in got] == [WriteFailed, WriteFailed], got
        assert all("disk is full" in str(r) for r in got), got
        assert await store.count("t") == 1  # nothing reported as written is missing, nothing failed is there
