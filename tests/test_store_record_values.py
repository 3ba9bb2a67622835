"""Values the store must refuse rather than store as something else, and dotted upsert identifiers."""

from __future__ import annotations

import re

import pytest

from engine._store import InvalidRecord, open_store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/v.db") as s:
        await s.add("t", {"warm": True})  # the table exists and its id counter is loaded: adds take the hot path
        yield s


@pytest.mark.parametrize(("data", "where"), [
    ({"v": float("nan")}, "data.v"),
    ({"a": [1, {"b": float("inf")}]}, "data.a[1].b"),
    ({"n": None, "x": -float("inf")}, "data.x"),
])
async def test_nan_and_infinity_are_refused_not_stored_as_null(store, data, where):
    for write in (lambda: store.add("t", data), lambda: store.queue_add("t", data, keep=False),
                  lambda: store.edit("t", 1, data), lambda: store.upsert("t", {**data, "k": 1}, "k"),
                  lambda: store.edit_many("t", {}, data)):
        with pytest.raises(InvalidRecord, match=re.escape(where) + " is NaN or infinite"):
            await write()
    assert await store.count("t") == 1
    assert set(await store.get("t", id=1)) == {"id", "created_at", "updated_at", "warm"}


async def test_null_values_are_still_stored(store):
    rec = await store.add("t", {"v": None, "w": [None, 1.5]})
    assert (await store.get("t", id=rec["id"]))["w"] == [None, 1.5]


@pytest.mark.parametrize("when", [float("nan"), float("inf"), -float("inf"), 10**400])
async def test_record_times_must_be_finite(store, when):
    with pytest.raises(InvalidRecord, match="finite number of Unix seconds"):
        await store.add("t", {"created_at": when})
    with pytest.raises(InvalidRecord, match="finite number of Unix seconds"):
        await store.edit("t", 1, {"updated_at": when})
    assert await store.count("t") == 1


async def test_an_id_with_a_lone_surrogate_is_a_clear_error(store):
    for call in (lambda: store.add("t", {"id": "a\ud800"}), lambda: store.get("t", id="a\ud800"),
                 lambda: store.delete("t", "a\ud800")):
        with pytest.raises(InvalidRecord, match="lone surrogate"):
            await call()
    assert (await store.add("t", {"id": "é-ok"}))["id"] == "é-ok"


async def test_a_dotted_identifier_upserts_on_the_nested_value(store):
    for v in (1, 2, 3):
        rec = await store.upsert("c", {"crm": {"id": "c-17"}, "v": v}, "crm.id")
    assert await store.count("c") == 1
    assert rec["v"] == 3 and rec["crm"] == {"id": "c-17"}
    other = await store.upsert("c", {"crm": {"id": "c-18"}, "v": 9}, "crm.id")
    assert other["id"] != rec["id"] and await store.count("c") == 2


async def test_a_dotted_identifier_is_not_a_top_level_key(store):
    with pytest.raises(InvalidRecord, match="no value for the identifier field 'crm.id'.*path into nested"):
        await store.upsert("c", {"crm.id": "c-17", "v": 1}, "crm.id")
    assert await store.count("c") == 0


async def test_a_failed_read_is_a_read_error_not_a_write_failure(store, monkeypatch):
    import sqlite3

    from engine._store import RecordError, WriteFailed

    async def broken(sql, params):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_fetchall", broken)
    for read in (lambda: store.query("t", filter={"warm": True}), lambda: store.count("t"),
                 lambda: store.get("t", id=1)):
        with pytest.raises(RecordError, match="could not read") as e:
            await read()
        assert not isinstance(e.value, WriteFailed)


async def test_a_failed_id_mark_read_is_a_record_error_and_the_next_add_retries(store, monkeypatch):
    import sqlite3

    from engine._store import RecordError

    real = store._fetchall
    failures = []

    async def flaky(sql, params):
        if "cronstack_counters" in sql and not failures:
            failures.append(sql)
            raise sqlite3.OperationalError("disk I/O error")
        return await real(sql, params)

    monkeypatch.setattr(store, "_fetchall", flaky)
    with pytest.raises(RecordError, match="reading the id mark of table 'u'"):
        await store.add("u", {"v": 1})
    assert (await store.add("u", {"v": 2}))["id"] == 1 and failures


async def test_a_step_with_a_dotted_identifier_upserts_through_the_engine(tmp_path):
    """The step checks the identifier as the store reads it: a path, not a top-level key."""
    from engine import Engine, RunFailed

    step = {"function": "add_or_edit_record", "table": "c", "identifier": "crm.id",
            "data": {"crm": {"id": "{{ k }}"}, "v": "{{ v }}"}, "return_as": "rec"}
    async with Engine.open([], database=f"sqlite:///{tmp_path}/e.db") as engine:
        for v in (1, 2):
            rec = await engine.run_stack([step, {"function": "return", "value": "{{ rec }}"}], {"k": "c-1", "v": v})
        assert rec["v"] == 2 and rec["crm"] == {"id": "c-1"}
        assert await engine.run_stack([{"function": "count_records", "table": "c", "return_as": "n"},
                                       {"function": "return", "value": "{{ n }}"}]) == 1
        with pytest.raises(RunFailed) as info:
            await engine.run_stack([step], {"k": None, "v": 3})
    assert info.value.error["type"] == "InvalidInput"
    assert "no value for 'crm.id'" in info.value.error["message"]
    assert "path into nested objects" in info.value.error["message"]
