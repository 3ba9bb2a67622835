"""Filters at the edges: integers beyond 64 bits, lone surrogates, huge and deep filters,
read errors that are not write errors, and the cross-kind sort order."""

from __future__ import annotations

import sqlite3

import pytest

from engine._store import InvalidFilter, RecordError, StoreError, WriteFailed, open_store
from engine._store.errors import translate
from engine._store.filters import (
    _MAX_FILTER_DEPTH,
    _MAX_IN,
    _MAX_LIKE,
    _MAX_TERMS,
    _MAX_VALUES,
    check_count,
    compile_filter,
)

pytestmark = pytest.mark.anyio

BIG = 2**64
HUGE = 10**400  # beyond the largest real: SQLite reads it back as infinity
AMOUNTS = [5, 2**63 - 1, 2**63, BIG, -BIG, HUGE]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/l.db", indexes={"t": ["v"]}) as s:
        yield s


async def amounts(store, flt, **kw):
    return [r["amount"] for r in await store.query("big", filter=flt, **kw)]


# -- integers beyond 64 bits ------------------------------------------------------------


async def test_big_integers_compare_like_the_stored_ones(store):
    for a in AMOUNTS:
        await store.add("big", {"amount": a})
    # SQLite reads a stored integer outside 64 bits as a real: filter values are bound alike
    assert await amounts(store, {"amount": BIG}) == [BIG]
    assert await amounts(store, {"amount": HUGE}) == [HUGE]
    assert await amounts(store, {"amount": {"$gt": BIG}}) == [HUGE]
    assert await amounts(store, {"amount": {"$gte": BIG}}) == [BIG, HUGE]
    assert await amounts(store, {"amount": {"$gt": 2**63 - 1}}) == [2**63, BIG, HUGE]
    assert await amounts(store, {"amount": {"$lt": -(2**63) - 1}}) == [-BIG]
    assert await amounts(store, {"amount": {"$in": [BIG, 5, -BIG]}}) == [5, BIG, -BIG]
    assert await amounts(store, {"amount": {"$nin": [BIG, HUGE]}}) == [5, 2**63 - 1, 2**63, -BIG]
    assert await amounts(store, {"amount": {"$gt": -HUGE}}, sort="amount") == sorted(AMOUNTS)
    assert await store.count("big", filter={"amount": {"$ne": BIG}}) == len(AMOUNTS) - 1


async def test_big_integers_in_writes_and_upsert(store):
    await store.add("big", {"amount": BIG, "n": 0})
    assert await store.edit_many("big", {"amount": BIG}, {"n": 1}) == 1
    merged = await store.upsert("big", {"amount": BIG, "n": 2}, "amount")
    assert merged["n"] == 2 and await store.count("big") == 1  # found, not inserted again
    assert await store.delete_many("big", {"amount": {"$gte": BIG}}) == 1


async def test_a_big_integer_in_a_stack_filter_is_not_an_internal_error():
    from engine import Engine

    async with Engine.open([]) as engine:
        await engine.store.add("orders", {"amount": BIG})
        got = await engine.run_stack([
            {"function": "count_records", "table": "orders",
             "filter": {"amount": {"$gte": BIG}}, "return_as": "n"},
            {"function": "delete_records", "table": "orders", "filter": {"amount": BIG}},
            {"function": "return", "value": "{{ n }}"},
        ])
        assert got == 1 and await engine.store.count("orders") == 0


async def test_huge_limit_and_offset_are_clamped(store):
    for i in range(3):
        await store.add("t", {"v": i})
    assert check_count(2**70, "limit") == 2**63 - 1
    assert [r["v"] for r in await store.query("t", limit=2**63)] == [0, 1, 2]
    assert [r["v"] for r in await store.query("t", limit=1e20)] == [0, 1, 2]
    assert await store.query("t", offset=BIG) == []
    assert [r["v"] for r in await store.query("t", limit=BIG, offset=1)] == [1, 2]


# -- lone surrogates ----------------------------------------------------------------------


@pytest.mark.parametrize("cond", [
    "\ud800", {"$gt": "a\udfff"}, {"$in": ["ok", "\ud800"]}, {"$like": "%\ud800%"},
    {"$ne": ["\ud800"]}, {"$eq": {"k": "\ud800"}},
])
async def test_a_lone_surrogate_in_a_value_is_an_invalid_filter(store, cond):
    await store.add("t", {"v": "x"})
    with pytest.raises(InvalidFilter, match=r"filter on 'v'.*lone surrogate.*remove it"):
        await store.count("t", filter={"v": cond})
    with pytest.raises(InvalidFilter, match="lone surrogate"):
        await store.delete_many("t", {"v": cond})
    assert await store.count("t") == 1


# -- huge filters: bounded before SQLite sees them -------------------------------------------


async def test_large_legal_filters_reach_sqlite_in_a_shape_it_accepts(store):
    for v in [True, False, None, [1], {"k": 1}, 3, "s"]:
        await store.add("t", {"v": v})
    assert await store.count("t", filter={"v": {"$in": [True, False, None, [1]] * 300}}) == 4
    assert await store.count("t", filter={"v": {"$nin": [True, None, {"k": 1}] * 1000}}) == 4
    assert await store.count("t", filter={"v": {"$in": list(range(_MAX_IN - 1)) + ["s"]}}) == 2
    n = _MAX_TERMS - 1
    assert await store.count("t", filter={"$and": [{"v": {"$ne": i}} for i in range(n)]}) == 6
    assert await store.count("t", filter={"$or": [{"v": i} for i in range(n)] + [{"v": "s"}]}) == 2
    assert await store.delete_many("t", {"$or": [{"v": {"$ne": i}} for i in range(-n, 0)]}) == 7


def _multikey(inner, level):  # the nested filter last, after other fields: the costliest place
    return {"a": 1, "b": 2, ("$or" if level % 2 else "$and"): [{"c": 1}, {"d": 1}, inner]}


WORST_SHAPES = {
    "lists after fields": lambda inner, level: _multikey(inner, level),
    "$not after fields": lambda inner, level: {"a": 1, "b": 2, "$not": inner},
    "$not in $or": lambda inner, level: {"$or": [{"c": 1}, {"$not": inner}]} if level % 2 else inner,
    "mixed": lambda inner, level: [_multikey, lambda i, _: {"a": 1, "$not": i}][level % 2](inner, level),
}


@pytest.mark.parametrize("shape", WORST_SHAPES)
async def test_the_worst_shapes_within_the_bounds_are_accepted(store, shape):
    await store.add("t", {"v": 1})
    field = {"$gt": 0, "$not": {"$lt": 0}}  # a field-level $not: one level
    flt: dict = {"v": field}
    for level in range(_MAX_FILTER_DEPTH - 1):
        flt = WORST_SHAPES[shape](flt, level)
    compile_filter(flt)  # within the bounds
    await store.count("t", filter=flt)  # and SQLite parses it: no InvalidFilter from SQLite


async def test_long_chains_at_every_level_are_accepted(store):
    await store.add("t", {"v": 1})
    flt: dict = {"v": 1}
    per_level = _MAX_TERMS // _MAX_FILTER_DEPTH - 1
    for level in range(_MAX_FILTER_DEPTH):  # the nested filter first: deepest in each chain
        key = "$and" if level % 2 else "$or"
        flt = {key: [flt] + [{"v": {"$ne": 100 + i}} for i in range(per_level)]}
    assert await store.count("t", filter=flt) == 1
    one_chain = {"$and": [{"v": {"$ne": 100 + i}} for i in range(_MAX_TERMS)]}
    assert await store.count("t", filter=one_chain) == 1


async def test_too_many_terms_and_too_long_patterns_are_refused(store):
    await store.add("t", {"v": "x"})
    many_ands = {"$and": [{"v": {"$ne": i}} for i in range(_MAX_TERMS + 1)]}
    with pytest.raises(InvalidFilter, match=rf"more than {_MAX_TERMS} comparisons.*use \$in"):
        await store.count("t", filter=many_ands)
    with pytest.raises(InvalidFilter, match="more than"):
        await store.delete_many("t", many_ands)
    with pytest.raises(InvalidFilter, match="more than"):
        await store.count("t", filter={"$or": [{}] * (_MAX_TERMS + 1)})
    too_many = {"$or": [{"v": {"$in": list(range(_MAX_IN))}} for _ in range(_MAX_VALUES // _MAX_IN + 1)]}
    with pytest.raises(InvalidFilter, match=rf"more than {_MAX_VALUES} values.*split it"):
        await store.count("t", filter=too_many)
    with pytest.raises(InvalidFilter, match=rf"filter on 'v': \$like.*{_MAX_LIKE}.*shorter pattern"):
        await store.count("t", filter={"v": {"$like": "a" * (_MAX_LIKE + 1)}})
    with pytest.raises(InvalidFilter, match="bytes"):  # SQLite counts bytes, not characters
        await store.count("t", filter={"v": {"$like": "é" * (_MAX_LIKE // 2 + 1)}})
    assert await store.count("t", filter={"v": {"$like": "%" + "x" * (_MAX_LIKE - 2) + "%"}}) == 0
    assert await store.count("t") == 1


def _nots(cond, n):
    for _ in range(n):
        cond = {"$not": cond}
    return cond


@pytest.mark.parametrize("depth", [_MAX_FILTER_DEPTH + 1, 3000])
async def test_a_deep_field_level_not_is_refused(store, depth):
    cond: dict = {"$gt": 1}
    for _ in range(depth):
        cond = {"$not": cond}
    compile_filter({"v": _nots({"$gt": 1}, _MAX_FILTER_DEPTH)})  # the bound itself is fine
    with pytest.raises(InvalidFilter, match=rf"deeper than {_MAX_FILTER_DEPTH} levels"):
        compile_filter({"v": cond})
    # top-level and field-level $not count together
    half: dict = {"$gt": 1}
    for _ in range(_MAX_FILTER_DEPTH // 2 + 1):
        half = {"$not": half}
    flt: dict = {"v": half}
    for _ in range(_MAX_FILTER_DEPTH // 2 + 1):
        flt = {"$not": flt}
    with pytest.raises(InvalidFilter, match="deeper than"):
        await store.count("t", filter=flt)


# -- read errors are not write errors ---------------------------------------------------------


async def test_a_statement_too_large_for_sqlite_is_an_invalid_filter_on_reads(store):
    await store.add("t", {"v": 1})
    deep = "SELECT " + "1 + " * 1200 + "1"  # what a filter past the compiler's bounds would hit
    with pytest.raises(InvalidFilter) as err:
        await store._read("t", deep, [], "counting")
    assert "split it into smaller queries" in err.value.message
    assert "disk space" not in err.value.message


def test_translate_fits_the_advice_to_the_error():
    too_big = sqlite3.OperationalError("Expression tree is too large (maximum depth 1000)")
    as_record = translate(too_big, "deleting records", record=True)
    assert isinstance(as_record, InvalidFilter) and "disk" not in as_record.message
    engine_own = translate(too_big, "listing runs")
    assert type(engine_own) is StoreError and "too large" in engine_own.message

    io = sqlite3.OperationalError("disk I/O error")
    read = translate(io, "querying table 't'", record=True, reading=True)
    assert type(read) is RecordError and read.error_type == "RecordError"
    assert "could not read" in read.message and "disk space" not in read.message
    assert "file system failed" in read.message
    assert type(translate(io, "listing runs", reading=True)) is StoreError
    other = translate(sqlite3.OperationalError("something odd"), "counting", record=True, reading=True)
    assert "could not read" in other.message and "disk space" not in other.message

    write = translate(io, "adding a record", record=True)
    assert isinstance(write, WriteFailed) and "file system failed" in write.message
    full = translate(sqlite3.OperationalError("database or disk is full"), "adding a record", record=True)
    assert isinstance(full, WriteFailed) and "free disk space" in full.message
    odd = translate(sqlite3.OperationalError("something odd"), "adding a record", record=True)
    assert isinstance(odd, WriteFailed) and "check disk space and permissions" in odd.message


# -- sort order across kinds --------------------------------------------------------------------


async def test_sort_across_kinds_is_the_index_order(store, tmp_path):
    """Ascending order is SQLite's order of json_extract: null/missing, numbers (booleans as
    0/1), then text, with arrays and objects sorted as their JSON text among the texts.
    A kind rank in front (CASE json_type ...) would keep kinds apart but stop a declared
    index from serving the sort: a sorted query with a limit would read and sort the
    whole table instead of the rows it returns. So the code keeps the index order."""
    for v in ["b", [1], "Z", 3, None, {"k": 1}, True, "a", "~"]:
        await store.add("t", {"v": v})
    await store.add("t", {"other": 1})
    got = [r.get("v", "<missing>") for r in await store.query("t", sort="v")]
    assert got == [None, "<missing>", True, 3, "Z", [1], "a", "b", {"k": 1}, "~"]
    conn = sqlite3.connect(tmp_path / "l.db")
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM t ORDER BY json_extract(data, '$.v'), rowid LIMIT 3"
    ).fetchall()
    conn.close()
    text = " | ".join(row[-1] for row in plan)
    assert "USING INDEX" in text and "TEMP B-TREE" not in text, text
