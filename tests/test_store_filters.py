"""The filter language end to end: every operator, JSON kinds, nulls, sort, paging, injection."""

from __future__ import annotations

import pytest

from engine._store import InvalidFilter, InvalidName, open_store
from engine._store.filters import compile_filter, compile_sort

pytestmark = pytest.mark.anyio

ROWS = [
    {"name": "ann", "age": 30, "score": 1.5, "active": True, "tags": ["a"], "addr": {"city": "Oslo", "zip": 1}},
    {"name": "bob", "age": 25, "score": 3, "active": False, "addr": {"city": "Rome"}},
    {"name": "cid", "age": "30", "active": 1, "addr": None},
    {"name": "dee", "age": None, "priority": 2},
    {"name": "eve", "age": 41, "priority": 2, "addr": {"city": "oslo"}},
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/f.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    async with open_store(url, indexes={"people": ["age", "addr.city"]}) as s:
        for row in ROWS:
            await s.add("people", row)
        yield s


async def names(store, flt=None, **kw):
    return [r["name"] for r in await store.query("people", filter=flt, **kw)]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"age": 30}, ["ann"]),  # the number 30, not the text "30"
        ({"age": "30"}, ["cid"]),
        ({"age": {"$eq": 30}}, ["ann"]),
        ({"age": 30.0}, ["ann"]),  # integers and reals compare numerically
        ({"active": True}, ["ann"]),  # true is not 1
        ({"active": 1}, ["cid"]),
        ({"active": False}, ["bob"]),
        ({"age": None}, ["dee"]),  # null matches null ...
        ({"priority": None}, ["ann", "bob", "cid"]),  # ... and missing
        ({"age": {"$ne": 30}}, ["bob", "cid", "dee", "eve"]),  # $ne includes null/missing
        ({"age": {"$gt": 29}}, ["ann", "eve"]),  # numbers only: "30" and null never order
        ({"age": {"$gte": 30, "$lt": 41}}, ["ann"]),
        ({"age": {"$lte": 25}}, ["bob"]),
        ({"name": {"$gt": "c"}}, ["cid", "dee", "eve"]),  # text compares as text
        ({"score": {"$gt": 2}}, ["bob"]),
        ({"age": {"$in": [25, "30", None]}}, ["bob", "cid", "dee"]),
        ({"age": {"$in": []}}, []),
        ({"age": {"$nin": [25, 30]}}, ["cid", "dee", "eve"]),
        ({"name": {"$like": "%e%"}}, ["dee", "eve"]),
        ({"name": {"$like": "A%"}}, ["ann"]),  # LIKE ignores ASCII case
        ({"priority": {"$exists": True}}, ["dee", "eve"]),
        ({"age": {"$exists": True}}, ["ann", "bob", "cid", "dee", "eve"]),  # null is present
        ({"addr": {"$exists": False}}, ["dee"]),
        ({"addr.city": "Oslo"}, ["ann"]),  # dotted path, case-sensitive equality
        ({"addr.zip": {"$gte": 1}}, ["ann"]),
        ({"addr.city": {"$like": "oslo"}}, ["ann", "eve"]),
        ({"addr.city": None}, ["cid", "dee"]),  # a member of null or missing is null
        ({"tags": ["a"]}, ["ann"]),  # arrays compare as whole JSON values
        ({"addr": {"city": "Rome"}}, ["bob"]),
        ({"$or": [{"name": "ann"}, {"age": {"$gt": 40}}]}, ["ann", "eve"]),
        ({"$and": [{"priority": 2}, {"age": {"$exists": True}}]}, ["dee", "eve"]),
        ({"$not": {"priority": 2}}, ["ann", "bob", "cid"]),
        ({"age": {"$not": {"$gt": 29}}}, ["bob", "cid", "dee"]),
        ({"$or": []}, []),
        ({"$and": []}, ["ann", "bob", "cid", "dee", "eve"]),
        ({}, ["ann", "bob", "cid", "dee", "eve"]),
        ({"name": "ann", "age": 25}, []),  # several fields: all must match
        ({"id": 2}, ["bob"]),
        ({"id": {"$in": [1, 5]}}, ["ann", "eve"]),
        ({"created_at": {"$gt": 0}}, ["ann", "bob", "cid", "dee", "eve"]),
        ({"created_at": {"$exists": False}}, []),
    ],
)
async def test_operator(store, flt, expected):
    assert await names(store, flt) == expected
    assert await store.count("people", filter=flt) == len(expected)


async def test_sort_and_paging(store):
    assert await names(store, sort="priority desc, name asc") == ["dee", "eve", "ann", "bob", "cid"]
    assert await names(store, sort=["priority desc", {"field": "name", "direction": "DESC"}]) == [
        "eve", "dee", "cid", "bob", "ann"]
    # ascending: nulls/missing first, then numbers, then text
    assert await names(store, sort="age") == ["dee", "bob", "ann", "eve", "cid"]
    assert await names(store, sort="addr.city desc", limit=2) == ["eve", "bob"]
    assert await names(store, sort="name", limit=2, offset=1) == ["bob", "cid"]
    assert await names(store, sort="name", offset=3) == ["dee", "eve"]
    assert await names(store, limit=0) == []
    assert await names(store, sort="id desc") == ["eve", "dee", "cid", "bob", "ann"]
    assert (await store.get("people", filter={"priority": 2}))["name"] == "dee"


@pytest.mark.parametrize(
    "kw",
    [
        {"sort": "name sideways"},
        {"sort": "name asc extra"},
        {"sort": ","},
        {"sort": [{"field": "name", "order": "asc"}]},
        {"sort": 5},
        {"limit": -1},
        {"limit": "10"},
        {"offset": True},
        {"filter": {"age": {"$gt": None}}},
        {"filter": {"age": {"$gt": [1]}}},
        {"filter": {"age": {"$in": 5}}},
        {"filter": {"name": {"$like": 5}}},
        {"filter": {"age": {"$exists": "yes"}}},
        {"filter": {"age": {"$gt": 1, "plain": 2}}},
        {"filter": {"$or": {"a": 1}}},
        {"filter": {"$nor": []}},
        {"filter": {"age": {"$gte": float("nan")}}},
        {"filter": {"age": object()}},
        {"filter": ["age", 1]},
    ],
)
async def test_malformed_queries_are_refused(store, kw):
    with pytest.raises(InvalidFilter):
        await store.query("people", **kw)


async def test_unknown_operator_suggests_the_nearest(store):
    with pytest.raises(InvalidFilter, match=r"did you mean '\$gte'"):
        await store.query("people", filter={"age": {"$gtee": 1}})


@pytest.mark.parametrize("field", ["a b", "1x", "a..b", "a.", "x'); DROP TABLE people;--", "a-b", ""])
async def test_bad_field_names_are_refused(store, field):
    with pytest.raises(InvalidName) as err:
        await store.query("people", filter={field: 1})
    assert err.value.extra["name"] == field
    with pytest.raises((InvalidName, InvalidFilter)):  # a space splits a sort entry
        await store.query("people", sort=f"{field} asc" if field.strip() else [{"field": field}])
    with pytest.raises(InvalidName):
        await store.upsert("people", {field: 1}, field)


INJECTIONS = [
    "x'); DROP TABLE people;--",
    "' OR 1=1 --",
    '"; DELETE FROM people; --',
    "%' OR '1'='1",
    "\\'; SELECT sqlite_version(); --",
    "Robert'); DROP TABLE students;--",
]


@pytest.mark.parametrize("value", INJECTIONS)
async def test_values_never_change_sql(store, value):
    rec = await store.add("people", {"name": value, "nested": {"v": value}})
    assert (await store.get("people", id=rec["id"]))["name"] == value
    assert await names(store, {"name": value}) == [value]
    assert await names(store, {"nested.v": {"$in": [value]}}) == [value]
    assert await names(store, {"name": {"$like": value}}) in ([], [value])
    await store.add("people", {"id": value, "name": "by-text-id"})
    assert (await store.get("people", id=value))["name"] == "by-text-id"
    assert await store.count("people") == len(ROWS) + 2  # nothing dropped or deleted
    assert await store.delete_many("people", {"name": value}) == 1
    assert await store.count("people") == len(ROWS) + 1


async def test_text_with_nul_round_trips(store):
    # SQLite's JSON functions stop at NUL, so filters cannot match such text (documented);
    # storing and reading it back by id is exact.
    value = "a\x00'); DROP TABLE people;--"
    rec = await store.add("people", {"name": value})
    assert (await store.get("people", id=rec["id"]))["name"] == value
    assert await store.count("people") == len(ROWS) + 1


async def test_sort_injection_is_refused(store):
    for sort in ["name; DROP TABLE people", "name desc; --", "(SELECT 1)", "name DESC NULLS"]:
        with pytest.raises((InvalidFilter, InvalidName)):
            await store.query("people", sort=sort)
    assert await store.count("people") == len(ROWS)


def test_compiled_sql_has_only_placeholders_for_values():
    sql, params = compile_filter({"a.b": "x'y", "n": {"$in": [1, "two"]}, "$or": [{"c": 2.5}]})
    assert "x'y" not in sql and "two" not in sql and "2.5" not in sql
    assert params == ["x'y", 1, "two", 2.5]
    assert compile_sort(None) == "rowid"
    assert compile_sort("a.b desc") == "json_extract(data, '$.a.b') DESC, rowid"
