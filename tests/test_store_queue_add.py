"""The coroutine-free add: ``queue_add`` and the ``add_record`` handler that uses it.

On the hot path ``queue_add`` returns the group writer's future itself,
resolving to the record after COMMIT; everywhere else it returns ``add``'s
coroutine. Either way the caller must see what ``add`` gives: the same
record, the same errors, the write committed before it resumes, a bad
write failing only its own caller.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3

import pytest

from engine._store import DuplicateRecord, InvalidName, InvalidRecord, StoreError, open_store
from runtime import RunContext, RunError
from runtime._effects import EFFECTS

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/q.db", clock=lambda: 1234.5) as s:
        yield s


async def test_hot_path_returns_the_commit_future_resolving_to_the_record(store, tmp_path):
    first = store.queue_add("t", {"v": 0})
    assert inspect.iscoroutine(first)  # the table's counter is not loaded yet: add's coroutine
    assert (await first)["id"] == 1
    fut = store.queue_add("t", {"v": 1, "nested": {"a": [1, 2]}})
    assert isinstance(fut, asyncio.Future) and not fut.done()
    rec = await fut
    assert rec == {"id": 2, "created_at": 1234.5, "updated_at": 1234.5, "v": 1, "nested": {"a": [1, 2]}}
    # committed when it resolved: another connection sees the row
    with sqlite3.connect(f"{tmp_path}/q.db") as conn:
        assert conn.execute("SELECT id, data FROM t WHERE id = 2").fetchone() == (
            2, '{"v":1,"nested":{"a":[1,2]}}')
    assert await store.get("t", id=2) == rec


async def test_same_record_as_add(store):
    await store.add("t", {"warm": True})
    via_add = await store.add("t", {"k": "x"})
    via_queue = await store.queue_add("t", {"k": "x"})
    assert via_queue == dict(via_add, id=via_add["id"] + 1)
    assert list(via_queue) == list(via_add)  # key order too


@pytest.mark.parametrize("data", [
    {"id": 77, "v": 1},
    {"created_at": 5.0, "v": 1},
    {"updated_at": 6.0, "v": 1},
])
async def test_given_id_or_times_take_adds_path(store, data):
    await store.add("t", {"warm": True})
    got = store.queue_add("t", data)
    assert inspect.iscoroutine(got)
    rec = await got
    assert rec == await store.get("t", id=rec["id"])
    for key in data:
        assert rec[key] == data[key]


async def test_errors_are_adds(store):
    await store.add("t", {"warm": True})
    with pytest.raises(InvalidRecord):
        await store.queue_add("t", {"bad": object()})
    with pytest.raises(InvalidName):
        await store.queue_add("no such table", {"v": 1})
    with pytest.raises(InvalidRecord):
        await store.queue_add("t", ["not", "an", "object"])
    assert await store.count("t") == 1


async def test_a_bad_row_among_queued_ones_fails_alone(store):
    await store.add("t", {"id": "taken"})
    await store.add("t", {"warm": True})
    before = store.write_stats["batches"]
    # the duplicate's coroutine runs before the flush that the first queued row
    # schedules, so all 201 rows share one row entry and one (replayed) batch
    dup = asyncio.ensure_future(store.queue_add("t", {"id": "taken"}))
    calls = [store.queue_add("t", {"i": i}) for i in range(200)]
    results = await asyncio.gather(dup, *calls, return_exceptions=True)
    assert isinstance(results[0], DuplicateRecord)
    good = results[1:]
    assert all(isinstance(r, dict) for r in good) and [r["i"] for r in good] == list(range(200))
    for r in good[::37]:
        assert r == await store.get("t", id=r["id"])
    assert await store.count("t") == 202
    assert store.write_stats["batches"] - before == 1


async def test_closed_store_refuses_queue_add(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path}/c.db")
    await store.add("t", {"v": 1})
    queued = store.queue_add("t", {"v": 2})
    await store.close()
    assert (await queued)["v"] == 2  # queued before close: committed by close
    with pytest.raises(StoreError, match="closed"):
        store.queue_add("t", {"v": 3})


# -- the add_record handler ------------------------------------------------------------

add_record = EFFECTS["add_record"]


async def test_handler_awaits_the_stores_future(store):
    await store.add("t", {"warm": True})
    got = add_record(RunContext(records=store), {"table": "t", "data": {"v": 1}})
    assert isinstance(got, asyncio.Future)
    assert (await got)["v"] == 1
    assert (await add_record(RunContext(records=store), {"table": "t"}))["id"] == 3  # no data: {}


async def test_handler_checks_before_writing(store):
    ctx = RunContext(records=store)
    with pytest.raises(RunError, match="no database") as e:
        add_record(RunContext(), {"table": "t", "data": {}})
    assert e.value.error_type == "NoDatabase"
    for table in (None, "", 5):
        with pytest.raises(RunError, match="'table' must be a table name") as e:
            add_record(ctx, {"table": table, "data": {}})
        assert e.value.error_type == "InvalidName"
    with pytest.raises(RunError, match="'data' must be an object") as e:
        add_record(ctx, {"table": "t", "data": [1]})
    assert e.value.error_type == "InvalidInput"
    assert await store.count("t") == 0


class _Forwarding:
    """Forwards attributes by ``__getattr__``, counting ``add`` calls (like the fault store)."""

    def __init__(self, inner):
        self._inner = inner
        self.adds = 0

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != "add":
            return attr

        async def add(*args):
            self.adds += 1
            return await attr(*args)

        return add


async def test_handler_goes_through_add_of_a_wrapping_store(store):
    wrapper = _Forwarding(store)
    rec = await add_record(RunContext(records=wrapper), {"table": "t", "data": {"v": 1}})
    assert wrapper.adds == 1 and rec["v"] == 1


class _DictSubclass(dict):
    pass


async def test_handler_takes_mapping_subclasses(store):
    await store.add("t", {"warm": True})
    rec = await add_record(RunContext(records=store), {"table": "t", "data": _DictSubclass(v=2)})
    assert rec["v"] == 2 and (await store.get("t", id=rec["id"]))["v"] == 2


async def test_futures_belong_to_the_stores_loop(store):
    await store.add("t", {"warm": True})
    fut = store.queue_add("t", {"v": 1})
    assert fut.get_loop() is asyncio.get_running_loop()
    await fut


async def test_keep_false_resolves_to_none_after_commit(store, tmp_path):
    """A step that stores no result asks for none: the row is written all the same."""
    await store.add("t", {"warm": True})
    fut = store.queue_add("t", {"v": 1}, keep=False)
    assert isinstance(fut, asyncio.Future)
    assert await fut is None
    with sqlite3.connect(f"{tmp_path}/q.db") as conn:
        assert conn.execute("SELECT id, data FROM t WHERE id = 2").fetchone() == (2, '{"v":1}')
    assert (await store.queue_add("t", {"v": 2}))["id"] == 3  # the counter moved on
    assert await add_record(RunContext(records=store), {"table": "t", "data": {"v": 3}}, False) is None
    assert (await store.get("t", id=4))["v"] == 3


async def test_keep_false_still_fails_a_bad_write(store):
    await store.add("t", {"warm": True})
    with pytest.raises(InvalidRecord, match="cannot be stored as JSON"):
        await store.queue_add("t", {"v": object()}, keep=False)
    assert await store.count("t") == 1
