"""The store contract: what every backend (SQLite today) must do, records and engine state.

A new backend joins the ``store`` fixture's params and passes this file unchanged.
"""

from __future__ import annotations

import asyncio

import pytest

from engine._store import (
    DuplicateRecord,
    InvalidName,
    InvalidRecord,
    RecordError,
    RecordNotFound,
    RunNotFound,
    Store,
    StoreError,
    open_store,
)
from runtime import Records, RunError

pytestmark = pytest.mark.anyio


class Clock:
    """A hand-driven clock: timestamps the tests can predict."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sqlite-file", "postgresql"])
async def store(request, tmp_path, clock):
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path}/contract.db"
    else:
        url = request.getfixturevalue("pg_url")
    async with open_store(url, clock=clock, indexes={"items": ["status"]}) as s:
        yield s


# -- records --------------------------------------------------------------------


async def test_store_is_a_runtime_records(store):
    assert isinstance(store, Records)
    assert isinstance(store, Store)


async def test_add_assigns_increasing_integer_ids_and_timestamps(store, clock):
    a = await store.add("items", {"name": "a", "nested": {"x": [1, 2]}})
    clock.t = 1_001.5
    b = await store.add("items", {"name": "b"})
    assert a == {"id": 1, "created_at": 1_000.0, "updated_at": 1_000.0, "name": "a",
                 "nested": {"x": [1, 2]}}
    assert b["id"] == 2 and b["created_at"] == 1_001.5
    assert await store.get("items", id=1) == a


async def test_given_ids_text_and_integer(store):
    await store.add("items", {"id": "abc", "v": 1})
    await store.add("items", {"id": 10, "v": 2})
    nxt = await store.add("items", {"v": 3})
    assert nxt["id"] == 11  # assigned ids never collide with given integers
    assert (await store.get("items", id="abc"))["v"] == 1
    assert await store.get("items", id="10") is None  # 10 and "10" are different ids
    assert (await store.get("items", id=10.0))["v"] == 2  # a whole float is that integer


async def test_duplicate_given_id_is_refused(store):
    await store.add("items", {"id": "k"})
    with pytest.raises(DuplicateRecord) as err:
        await store.add("items", {"id": "k"})
    assert isinstance(err.value, RunError) and err.value.error_type == "DuplicateRecord"
    assert await store.count("items") == 1


@pytest.mark.parametrize("bad", [True, 1.5, [1], {"a": 1}, ""])
async def test_bad_ids_are_refused(store, bad):
    with pytest.raises(InvalidRecord):
        await store.add("items", {"id": bad})


async def test_the_largest_id_leaves_no_id_to_assign_but_given_ids_still_work(store):
    top = 2**63 - 1
    assert (await store.add("items", {"id": top}))["id"] == top
    for _ in range(2):  # refused each time (the counter does not pass the limit), never an internal error
        with pytest.raises(InvalidRecord, match="no id is left to assign"):
            await store.add("items", {"name": "next"})
    assert (await store.add("items", {"id": "text-id", "k": "a"}))["id"] == "text-id"
    with pytest.raises(InvalidRecord, match="does not fit in 64 bits"):
        await store.add("items", {"id": top + 1})
    # an upsert that edits needs no new id; one that would insert is refused alone
    assert (await store.upsert("items", {"k": "a", "v": 2}, "k"))["id"] == "text-id"
    with pytest.raises(InvalidRecord, match="no id is left to assign"):
        await store.upsert("items", {"k": "b"}, "k")
    assert await store.count("items") == 2


async def test_unencodable_value_is_refused_as_record_error(store):
    with pytest.raises(InvalidRecord, match="cannot be stored as JSON"):
        await store.add("items", {"v": object()})
    assert await store.count("items") == 0


async def test_never_written_table_reads_empty(store):
    assert await store.query("ghost") == []
    assert await store.get("ghost", id=1) is None
    assert await store.get("ghost", filter={"a": 1}) is None
    assert await store.count("ghost") == 0
    assert await store.delete("ghost", 1) is False
    assert await store.delete_many("ghost", {}) == 0
    assert await store.edit_many("ghost", {}, {"a": 1}) == 0
    with pytest.raises(RecordNotFound):
        await store.edit("ghost", 1, {"a": 1})


async def test_edit_merges_shallowly_and_stamps_updated_at(store, clock):
    rec = await store.add("items", {"a": 1, "obj": {"x": 1, "y": 2}, "keep": True})
    clock.t = 2_000.0
    out = await store.edit("items", rec["id"], {"a": None, "obj": {"x": 9}})
    assert out == {"id": rec["id"], "created_at": 1_000.0, "updated_at": 2_000.0, "a": None,
                   "obj": {"x": 9}, "keep": True}
    assert await store.get("items", id=rec["id"]) == out


async def test_edit_missing_id_raises_record_not_found(store):
    await store.add("items", {"a": 1})
    with pytest.raises(RecordNotFound) as err:
        await store.edit("items", 99, {"a": 2})
    assert err.value.error_type == "RecordNotFound"
    assert "99" in err.value.message and "items" in err.value.message
    assert err.value.to_object("stack[0]")["type"] == "RecordNotFound"


async def test_edit_cannot_change_id(store):
    rec = await store.add("items", {"a": 1})
    with pytest.raises(InvalidRecord):
        await store.edit("items", rec["id"], {"id": 77})
    assert (await store.edit("items", rec["id"], {"id": rec["id"], "a": 2}))["a"] == 2


async def test_delete(store):
    rec = await store.add("items", {"a": 1})
    assert await store.delete("items", rec["id"]) is True
    assert await store.delete("items", rec["id"]) is False
    assert await store.get("items", id=rec["id"]) is None


async def test_ids_are_not_reused_after_delete(store):
    a = await store.add("items", {})
    await store.delete("items", a["id"])
    assert (await store.add("items", {}))["id"] == a["id"] + 1


async def test_upsert_inserts_then_merges_on_identifier(store, clock):
    first = await store.upsert("erp_sync", {"external_id": "E1", "v": 1}, "external_id")
    clock.t = 1_500.0
    second = await store.upsert("erp_sync", {"external_id": "E1", "w": 2}, "external_id")
    assert second == {"id": first["id"], "created_at": 1_000.0, "updated_at": 1_500.0,
                      "external_id": "E1", "v": 1, "w": 2}
    other = await store.upsert("erp_sync", {"external_id": 1, "v": 3}, "external_id")
    assert other["id"] != first["id"]  # 1 is not "E1", and not "1"
    assert await store.count("erp_sync") == 2


async def test_upsert_on_id_and_missing_identifier(store):
    rec = await store.upsert("items", {"id": "x", "v": 1}, "id")
    assert rec["id"] == "x"
    assert (await store.upsert("items", {"id": "x", "v": 2}, "id"))["v"] == 2
    with pytest.raises(InvalidRecord, match="identifier"):
        await store.upsert("items", {"v": 1}, "external_id")
    with pytest.raises(InvalidName):
        await store.upsert("items", {"v": 1}, "bad name")


async def test_bulk_edit_and_delete_return_counts(store):
    for i in range(6):
        await store.add("items", {"n": i, "status": "old" if i < 4 else "new"})
    assert await store.edit_many("items", {"status": "old"}, {"flag": True}) == 4
    assert await store.count("items", filter={"flag": True}) == 4
    assert await store.delete_many("items", {"n": {"$lt": 2}}) == 2
    assert await store.count("items") == 4
    with pytest.raises(InvalidRecord):
        await store.edit_many("items", {}, {"id": 5})


async def test_given_created_at_is_kept(store):
    rec = await store.add("logs", {"created_at": 10, "m": "old"})
    assert rec["created_at"] == 10.0 and isinstance(rec["created_at"], float)
    assert await store.get("logs", id=rec["id"]) == rec
    assert await store.count("logs", filter={"created_at": {"$lt": 100}}) == 1
    with pytest.raises(InvalidRecord):
        await store.add("logs", {"created_at": "yesterday"})


async def test_table_names_ignore_case(store):
    await store.add("Users", {"a": 1})
    assert await store.count("users") == 1


@pytest.mark.parametrize("name", ["t; DROP", "1abc", "", "a.b", "cronstack_runs", "sqlite_master",
                                  "x" * 65, None, 5])
async def test_bad_table_names_are_refused(store, name):
    with pytest.raises(InvalidName) as err:
        await store.add(name, {"a": 1})
    assert isinstance(err.value, RecordError) and isinstance(err.value, RunError)
    with pytest.raises(InvalidName):
        await store.query(name)


async def test_records_read_your_writes_under_concurrency(store):
    import anyio

    async def one(i: int) -> None:
        rec = await store.add("items", {"i": i})
        assert (await store.get("items", id=rec["id"]))["i"] == i

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert await store.count("items") == 50


# -- runs -----------------------------------------------------------------------


async def test_insert_and_get_run_with_defaults(store, clock):
    await store.insert_run({"id": "r1", "task": "t", "inputs": {"a": [1]}})
    run = await store.get_run("r1")
    assert run["status"] == "queued" and run["trigger"] == "manual" and run["kind"] == "task"
    assert run["attempt"] == 1 and run["created_at"] == 1_000.0 and run["not_before"] == 1_000.0
    assert run["inputs"] == {"a": [1]} and run["result"] is None
    assert await store.get_run("nope") is None


async def test_insert_run_refuses_bad_rows(store):
    with pytest.raises(StoreError):
        await store.insert_run({"task": "t"})
    with pytest.raises(StoreError, match="status"):
        await store.insert_run({"id": "r", "task": "t", "status": "weird"})
    with pytest.raises(StoreError, match="unknown run fields"):
        await store.insert_run({"id": "r", "task": "t", "colour": "red"})
    await store.insert_run({"id": "r", "task": "t"})
    with pytest.raises(StoreError, match="unique"):
        await store.insert_run({"id": "r", "task": "t"})


async def test_a_burst_of_run_inserts_with_one_duplicate_fails_only_that_one(store):
    """Hundreds of runs inserted at once (one batch, a few statements) with one repeated id:
    every other run is stored, in order, and only the repeat is refused."""
    import asyncio

    await store.insert_run({"id": "dup", "task": "t"})
    ids = [f"b{i:03d}" for i in range(300)]
    ids[150] = "dup"
    outcomes = await asyncio.gather(
        *(store.insert_run({"id": i, "task": "t", "attempt": n}) for n, i in enumerate(ids)),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes if o is not None] == ["StoreError"]
    assert isinstance(outcomes[150], StoreError)
    stored = await store.list_runs("t", limit=400, newest_first=False)
    assert [r["id"] for r in stored] == ["dup"] + [i for i in ids if i != "dup"]
    assert [r["attempt"] for r in stored[1:]] == [n for n in range(300) if n != 150]


async def test_update_run(store, clock):
    await store.insert_run({"id": "r1", "task": "t"})
    clock.t = 1_010.0
    await store.update_run("r1", {"status": "failed", "error": {"message": "boom", "type": "X"},
                                  "result": [1, 2], "finished_at": 1_009.0})
    run = await store.get_run("r1")
    assert run["status"] == "failed" and run["error"]["message"] == "boom"
    assert run["result"] == [1, 2] and run["updated_at"] == 1_010.0
    with pytest.raises(RunNotFound):
        await store.update_run("missing", {"status": "failed"})
    with pytest.raises(StoreError):
        await store.update_run("r1", {"status": "bogus"})


async def test_claim_fire_runs_each_fire_once(store):
    assert await store.claim_fire("t", 60.0, {"id": "a"}) is True
    assert await store.claim_fire("t", 60.0, {"id": "b"}) is False
    assert await store.claim_fire("t", 120.0, {"id": "c"}) is True
    assert await store.claim_fire("u", 60.0, {"id": "d", "trigger": "catchup"}) is True
    assert await store.get_run("b") is None
    assert (await store.get_run("a"))["scheduled_at"] == 60.0
    # manual and retry runs are not fires: any number may share a time
    await store.insert_run({"id": "m1", "task": "t", "scheduled_at": 60.0, "trigger": "retry"})
    with pytest.raises(StoreError):
        await store.claim_fire("t", 180.0, {"id": "x", "trigger": "manual"})


async def test_claim_fires_claims_a_wave_in_one_write(store):
    rows = [{"id": "a", "task": "t", "scheduled_at": 60.0}, {"id": "b", "task": "u", "scheduled_at": 60.0},
            {"id": "c", "task": "t", "scheduled_at": 60.0, "status": "skipped"},
            {"id": "d", "task": "v", "scheduled_at": 60.0, "trigger": "catchup"}]
    assert await store.claim_fires(rows) == [True, True, False, True]
    assert await store.get_run("c") is None
    assert (await store.get_run("a"))["trigger"] == "schedule"
    # a fire claimed one by one is taken for the wave too, and the other way round
    assert await store.claim_fire("u", 120.0, {"id": "e"}) is True
    assert await store.claim_fires([{"id": "f", "task": "u", "scheduled_at": 120.0},
                                    {"id": "g", "task": "t", "scheduled_at": 120.0}]) == [False, True]
    assert await store.claim_fire("t", 120.0, {"id": "h"}) is False
    assert await store.claim_fires([]) == []
    with pytest.raises(StoreError):
        await store.claim_fires([{"id": "x", "task": "t", "scheduled_at": 180.0, "trigger": "manual"}])
    with pytest.raises(StoreError):
        await store.claim_fires([{"id": "y", "task": "t"}])
    assert await store.get_run("x") is None and await store.get_run("y") is None


async def test_finish_run_writes_outcome_and_trace_together(store, clock):
    await store.insert_run({"id": "r1", "task": "t", "status": "running"})
    clock.t = 1_020.0
    entry = {"path": "stack[0]", "kind": "return", "started": 1.0, "duration": 0.0,
             "inputs": None, "output": {"x": 1}, "error": None}
    await store.finish_run("r1", {"status": "completed", "result": {"ok": True}, "finished_at": 1_019.0},
                           [entry])
    run = await store.get_run("r1")
    assert run["status"] == "completed" and run["result"] == {"ok": True}
    assert run["finished_at"] == 1_019.0 and run["updated_at"] == 1_020.0
    assert await store.get_trace("r1") == [entry]
    await store.insert_run({"id": "r2", "task": "t", "status": "running"})
    await store.finish_run("r2", {"status": "failed", "error": {"message": "boom"}})
    assert (await store.get_run("r2"))["status"] == "failed" and await store.get_trace("r2") == []
    with pytest.raises(RunNotFound):
        await store.finish_run("missing", {"status": "completed"}, [entry])
    assert await store.get_trace("missing") == []
    with pytest.raises(StoreError):
        await store.finish_run("r1", {"status": "bogus"})
    # the trace may come as the JSON text of its entries (what RunTrace.export_json makes)
    await store.insert_run({"id": "r3", "task": "t", "status": "running"})
    await store.finish_run("r3", {"status": "completed"}, '[{"path": "stack[0]", "kind": "log"}]')
    assert await store.get_trace("r3") == [{"path": "stack[0]", "kind": "log"}]


async def test_run_writes_batched_together_fail_only_their_own_caller(store):
    """Writes of many runs committed in one batch: one bad write fails alone, the order is kept."""
    await store.insert_run({"id": "dup", "task": "t"})
    rows = [{"id": f"b{i}", "task": "t"} for i in range(20)]
    rows[7] = {"id": "dup", "task": "t"}
    results = await asyncio.gather(*(store.insert_run(r) for r in rows), return_exceptions=True)
    assert isinstance(results[7], StoreError) and "unique" in str(results[7])
    assert all(r is None for i, r in enumerate(results) if i != 7)
    assert await store.count_runs("t") == 20
    updates = [store.update_run(f"b{i}", {"status": "running"}) for i in range(11) if i != 7]
    updates.insert(4, store.update_run("nobody", {"status": "running"}))
    updates.append(store.finish_run("nobody", {"status": "completed"}, [{"path": "p", "kind": "k"}]))
    updates += [store.finish_run(f"b{i}", {"status": "completed", "result": i}, [{"path": f"p{i}"}])
                for i in range(11, 16)]
    # two writes to one run in the same batch land in the order they were made
    updates += [store.update_run("b16", {"status": "running", "started_at": 5.0}),
                store.update_run("b16", {"status": "failed"}),
                store.update_run("b16", {"status": "completed", "started_at": 6.0})]
    results = await asyncio.gather(*updates, return_exceptions=True)
    assert isinstance(results[4], RunNotFound) and isinstance(results[11], RunNotFound)
    assert sum(isinstance(r, Exception) for r in results) == 2
    assert await store.count_runs("t", "running") == 10
    assert [(await store.get_run(f"b{i}"))["result"] for i in range(11, 16)] == list(range(11, 16))
    assert await store.get_trace("b12") == [{"path": "p12"}] and await store.get_trace("nobody") == []
    b16 = await store.get_run("b16")
    assert b16["status"] == "completed" and b16["started_at"] == 6.0


async def test_due_and_claim_run(store):
    await store.insert_run({"id": "later", "task": "t", "not_before": 2_000.0})
    await store.insert_run({"id": "soon", "task": "t", "not_before": 500.0})
    await store.insert_run({"id": "now", "task": "t"})
    due = await store.due_runs(1_000.0)
    assert [r["id"] for r in due] == ["soon", "now"]
    assert [r["id"] for r in await store.due_runs(1_000.0, limit=1)] == ["soon"]
    assert await store.claim_run("soon", "e1", 1_000.5) is True
    assert await store.claim_run("soon", "e2", 1_000.6) is False
    run = await store.get_run("soon")
    assert run["status"] == "running" and run["engine_id"] == "e1" and run["started_at"] == 1_000.5
    assert [r["id"] for r in await store.due_runs(3_000.0)] == ["now", "later"]


async def test_cancel_queued_is_one_conditional_write(store, clock):
    await store.insert_run({"id": "q", "task": "t"})
    await store.insert_run({"id": "r", "task": "t"})
    assert await store.claim_run("r", "e1", 1_000.0) is True
    clock.t = 1_001.0
    error = {"message": "cancelled before it started", "type": "Cancelled", "step": None}
    assert await store.cancel_queued("q", 1_000.5, error) is True
    q = await store.get_run("q")
    assert (q["status"], q["started_at"], q["finished_at"], q["error"], q["updated_at"]) == (
        "cancelled", None, 1_000.5, error, 1_001.0)
    assert await store.cancel_queued("q", 1_002.0, error) is False  # no longer queued
    assert await store.cancel_queued("r", 1_002.0, error) is False  # claimed: left as it is
    assert (await store.get_run("r"))["status"] == "running"
    assert await store.cancel_queued("missing", 1_002.0, error) is False
    assert await store.claim_run("q", "e2", 1_003.0) is False  # a cancelled run is never claimed
    assert await store.due_runs(5_000.0) == []


async def test_claim_fires_checked_reads_pause_and_running_runs(store, clock):
    def fire(rid, task, at, status="running"):
        return {"id": rid, "task": task, "scheduled_at": at, "status": status, "started_at": at}

    await store.insert_run({"id": "busy", "task": "busy", "status": "running"})
    await store.set_task_state("off", paused=True)
    await store.set_task_state("on", paused=False)
    out = await store.claim_fires_checked(
        [fire("b1", "busy", 10.0), fire("f1", "free", 10.0), fire("o1", "off", 10.0),
         fire("n1", "on", 10.0), fire("a1", "allow", 10.0), fire("a2", "allow", 11.0),
         fire("a3", "allow", 12.0), fire("u1", "busy", 13.0)],
        [1, 1, 1, None, 2, 2, 2, None])
    assert out == ["skipped", "claimed", "paused", "claimed", "claimed", "claimed", "skipped", "claimed"]
    b1 = await store.get_run("b1")
    assert (b1["status"], b1["started_at"], b1["finished_at"], b1["error"]["type"]) == (
        "skipped", None, 1_000.0, "Skipped")
    assert "still running" in b1["error"]["message"]
    assert await store.get_run("o1") is None  # paused: nothing stored
    assert (await store.get_run("f1"))["status"] == "running"
    assert (await store.get_run("a3"))["status"] == "skipped"  # a1 and a2 count as running
    assert (await store.get_run("u1"))["status"] == "running"  # no limit: claimed as given
    # a fire that already has a row is taken, whatever its task's state
    assert await store.claim_fires_checked([fire("f1-again", "free", 10.0)], [None]) == ["taken"]
    assert await store.claim_fires_checked([fire("b1-again", "busy", 10.0)], [1]) == ["taken"]
    assert await store.get_run("f1-again") is None
    # queued rows (no slot yet) are not counted as running; finished runs are not either
    await store.update_run("busy", {"status": "completed"})
    await store.update_run("u1", {"status": "completed"})
    assert await store.claim_fires_checked(
        [fire("q1", "busy", 20.0, "queued"), fire("b2", "busy", 21.0)], [1, 1]) == ["claimed", "claimed"]
    assert await store.claim_fires_checked([], []) == []
    with pytest.raises(StoreError):
        await store.claim_fires_checked([fire("x", "t", 1.0)], [])
    with pytest.raises(StoreError):
        await store.claim_fires_checked([{"id": "m", "task": "t", "trigger": "manual", "scheduled_at": 1.0}], [None])


async def test_recover_running_marks_dead_engines_runs_crashed(store):
    for rid in ("a", "b", "mine"):
        await store.insert_run({"id": rid, "task": "t"})
    await store.claim_run("a", "dead", 1.0)
    await store.claim_run("b", "dead", 2.0)
    await store.claim_run("mine", "me", 3.0)
    crashed = await store.recover_running("me")
    assert sorted(r["id"] for r in crashed) == ["a", "b"]
    assert all(r["status"] == "crashed" and r["error"]["type"] == "EngineCrashed" for r in crashed)
    assert (await store.get_run("a"))["status"] == "crashed"
    assert (await store.get_run("mine"))["status"] == "running"
    assert await store.recover_running("me") == []


async def test_list_runs_by_executed_at(store, clock):
    """A retry row is made when its attempt fails but runs later: by start time it sorts
    where it ran; a run not started yet sorts by its scheduled time, then by creation."""
    clock.t = 1_000.0
    await store.insert_run({"id": "a", "task": "t", "scheduled_at": 1_000.0})
    await store.claim_run("a", "me", 1_000.0)
    clock.t = 1_010.0
    await store.insert_run({"id": "retry", "task": "t", "scheduled_at": 1_070.0})  # runs at 1,070
    clock.t = 1_030.0
    await store.insert_run({"id": "b", "task": "t", "scheduled_at": 1_030.0})
    await store.claim_run("b", "me", 1_030.0)
    await store.claim_run("retry", "me", 1_070.0)
    clock.t = 1_040.0
    await store.insert_run({"id": "queued", "task": "t", "scheduled_at": 1_050.0})
    assert [r["id"] for r in await store.list_runs("t")] == ["queued", "b", "retry", "a"]
    assert [r["id"] for r in await store.list_runs("t", by="executed_at")] == ["retry", "queued", "b", "a"]
    assert [r["id"] for r in await store.list_runs("t", by="executed_at", newest_first=False, limit=2)] == [
        "a", "b"]


async def test_list_count_and_last_runs(store, clock):
    for i in range(5):
        clock.t = 1_000.0 + i
        await store.insert_run({"id": f"t{i}", "task": "t", "status": "completed" if i % 2 else "failed"})
    clock.t = 1_100.0
    await store.insert_run({"id": "u0", "task": "u"})
    assert [r["id"] for r in await store.list_runs("t")] == ["t4", "t3", "t2", "t1", "t0"]
    assert [r["id"] for r in await store.list_runs("t", limit=2, offset=1)] == ["t3", "t2"]
    assert [r["id"] for r in await store.list_runs("t", newest_first=False, limit=2)] == ["t0", "t1"]
    assert [r["id"] for r in await store.list_runs(status="completed")] == ["t3", "t1"]
    with pytest.raises(StoreError, match="listed by"):
        await store.list_runs("t", by="started")
    assert len(await store.list_runs(status=["completed", "queued"])) == 3
    assert await store.count_runs() == 6
    assert await store.count_runs("t", "failed") == 3
    last = await store.last_runs()
    assert set(last) == {"t", "u"} and last["t"]["id"] == "t4" and last["u"]["id"] == "u0"


async def test_traces_keep_order_and_survive_odd_values(store):
    await store.insert_run({"id": "r", "task": "t"})
    e1 = {"path": "stack[0]", "kind": "create_variable", "started": 1.0, "duration": 0.1,
          "inputs": {"v": 1}, "output": 1, "error": None}
    await store.add_trace("r", [e1])
    await store.add_trace("r", [{"path": "stack[1]", "kind": "log", "output": {1, 2}.__class__}])
    await store.add_trace("r", [])
    trace = await store.get_trace("r")
    assert trace[0] == e1 and trace[1]["path"] == "stack[1]"
    assert isinstance(trace[1]["output"], str)  # stored as its repr, never failing the run
    assert await store.get_trace("other") == []


async def test_task_state(store, clock):
    assert await store.get_task_state("t") is None
    await store.set_task_state("t", last_fire=60.0)
    await store.set_task_state("t", paused=True, note="maintenance")
    state = await store.get_task_state("t")
    assert state == {"task": "t", "last_fire": 60.0, "paused": True, "note": "maintenance",
                     "updated_at": 1_000.0}
    await store.set_task_state("t", paused=False)
    assert (await store.get_task_state("t"))["last_fire"] == 60.0
    assert set(await store.all_task_states()) == {"t"}
    with pytest.raises(StoreError):
        await store.set_task_state("t", updated_at=5.0)


async def test_prune_history_keeps_unfinished_and_recent(store, clock):
    clock.t = 100.0
    await store.insert_run({"id": "old_done", "task": "t", "status": "completed"})
    await store.insert_run({"id": "old_other_task", "task": "u", "status": "completed"})
    await store.insert_run({"id": "old_queued", "task": "t"})
    await store.add_trace("old_done", [{"path": "stack[0]"}])
    clock.t = 900.0
    await store.insert_run({"id": "new_done", "task": "t", "status": "completed"})
    assert await store.prune_history("t", 500.0) == 1
    assert await store.get_run("old_done") is None and await store.get_trace("old_done") == []
    assert await store.get_run("old_queued") is not None
    assert await store.get_run("old_other_task") is not None
    assert await store.prune_history(None, 500.0) == 1
    assert await store.count_runs() == 2


async def test_ids_are_not_reused_across_reopen(tmp_path):
    url = f"sqlite:///{tmp_path}/reopen.db"
    async with open_store(url) as store:
        for _ in range(3):
            last = await store.add("items", {})
        await store.delete("items", last["id"])
        await store.add("items", {"id": 50})
        await store.delete("items", 50)
    async with open_store(url) as store:
        assert (await store.add("items", {}))["id"] == 51


async def test_given_timestamps_on_edit_and_upsert_are_floats(store):
    rec = await store.add("items", {"k": "a"})
    out = await store.edit("items", rec["id"], {"created_at": 5, "updated_at": 6})
    assert out["created_at"] == 5.0 and isinstance(out["created_at"], float)
    assert out["updated_at"] == 6.0 and await store.get("items", id=rec["id"]) == out
    merged = await store.upsert("items", {"k": "a", "created_at": 7}, "k")
    assert merged["created_at"] == 7.0 and isinstance(merged["created_at"], float)
    with pytest.raises(InvalidRecord):
        await store.edit("items", rec["id"], {"updated_at": "soon"})


async def test_a_burst_of_run_updates_keeps_order_and_fails_only_a_missing_run(store):
    """Many updates in one batch (a few multi-row statements): each lands on its own run; two
    updates of one run keep their order (the later wins); a missing run fails alone."""
    import asyncio

    ids = [f"u{i:03d}" for i in range(200)]
    await asyncio.gather(*(store.insert_run({"id": i, "task": "t"}) for i in ids))
    writes = [store.update_run(i, {"status": "running", "attempt": n}) for n, i in enumerate(ids)]
    writes.append(store.update_run("missing", {"status": "running", "attempt": 7}))
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes if o is not None] == ["RunNotFound"]
    runs = {r["id"]: r for r in await store.list_runs("t", limit=300)}
    assert all(runs[i]["status"] == "running" and runs[i]["attempt"] == n for n, i in enumerate(ids))
    # the same run twice in one batch, same columns: the later write is the one kept
    await asyncio.gather(store.update_run("u000", {"status": "failed"}),
                         store.update_run("u001", {"status": "failed"}),
                         store.update_run("u000", {"status": "completed"}))
    assert (await store.get_run("u000"))["status"] == "completed"
    assert (await store.get_run("u001"))["status"] == "failed"
