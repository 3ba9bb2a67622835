"""Committed writes wake their tasks directly (``writer._resolve`` / ``_wake_all``).

On asyncio's own loop, a future awaited by one task and nothing else is
resolved without its wake-up being scheduled through ``loop.call_soon``;
the writer runs the wake-ups itself once a slice of the batch is resolved.
On uvloop (a C ``call_soon``, cheaper than that) wake-ups are scheduled.
Every test runs on both. The task must see
exactly what a scheduled wake-up gives it: its own result, its context,
a cancellation that came meanwhile, and every other callback still called.
"""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from engine._store import open_store, writer

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request):
    return request.param


@pytest.fixture
async def store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path}/w.db", clock=lambda: 1234.5) as s:
        await s.add("t", {"warm": True})  # the table exists, its id counter is loaded
        yield s


def test_the_direct_path_is_available():
    # CPython's C future has ``_callbacks``; without it every wake-up is scheduled
    assert writer._DIRECT


async def test_direct_on_asyncios_loop_only(store, anyio_backend):
    assert store._writer._direct is not anyio_backend[1].get("use_uvloop", False)


async def test_tasks_are_woken_without_a_call_soon_each(store, anyio_backend):
    if anyio_backend[1].get("use_uvloop"):
        pytest.skip("uvloop's wake-ups are scheduled")
    loop = asyncio.get_running_loop()
    calls = 0
    real = loop.call_soon

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    got = []
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def one(i):
        got.append(await store.queue_add("t", {"i": i}))
        if len(got) == 100:
            all_in.set()
        await release.wait()  # a finishing task would schedule its own callbacks

    tasks = [asyncio.ensure_future(one(i)) for i in range(100)]
    await asyncio.sleep(0)  # every task has queued its row and awaits its future
    loop.call_soon = counting
    try:
        await all_in.wait()
    finally:
        del loop.call_soon
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(r["i"] for r in got) == list(range(100))
    assert calls < 20  # scheduled, the wake-ups would take a call_soon per write


async def test_each_task_gets_its_own_record_committed(store, tmp_path):
    async def writer_task(w):
        out = []
        for i in range(5):
            out.append(await store.queue_add("t", {"w": w, "i": i}))
        return out

    got = await asyncio.gather(*(writer_task(w) for w in range(300)))
    for w, recs in enumerate(got):
        assert [(r["w"], r["i"]) for r in recs] == [(w, i) for i in range(5)]
        for r in recs[::2]:
            assert await store.get("t", id=r["id"]) == r
    assert len({r["id"] for recs in got for r in recs}) == 1500


async def test_a_task_runs_in_its_own_context(store):
    var = contextvars.ContextVar("var", default=None)

    async def one(i):
        var.set(i)
        await store.queue_add("t", {"i": i})
        assert var.get() == i
        var.set(-i)
        await store.queue_add("t", {"i": i})
        return var.get()

    assert await asyncio.gather(*(one(i) for i in range(1, 50))) == [-i for i in range(1, 50)]


async def test_other_callbacks_of_a_future_are_still_called(store):
    fut = store.queue_add("t", {"v": 1})
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()["v"]))

    async def waiter():
        return await fut

    task = asyncio.ensure_future(waiter())
    assert (await task)["v"] == 1
    await asyncio.sleep(0)
    assert seen == [1]


async def test_a_callback_without_a_task_is_scheduled_as_before(store):
    fut = store.queue_add("t", {"v": 1})
    seen = []
    called = asyncio.Event()
    fut.add_done_callback(lambda f: (seen.append(f.result()["v"]), called.set()))
    await called.wait()
    assert seen == [1]


async def test_a_task_cancelled_by_one_woken_before_it_gets_cancelled(store):
    # both rows commit in one batch; the first task, woken first, cancels the second,
    # whose future is resolved by then: it sees CancelledError, as with scheduled wake-ups
    second: asyncio.Task | None = None

    async def first():
        rec = await store.queue_add("t", {"n": 1})
        assert second is not None
        second.cancel()
        return rec

    async def later():
        return await store.queue_add("t", {"n": 2})

    a = asyncio.ensure_future(first())
    second = asyncio.ensure_future(later())
    await asyncio.sleep(0)
    assert (await a)["n"] == 1
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await store.count("t", filter={"n": 2}) == 1  # its row committed all the same


async def test_a_cancelled_waiter_is_skipped_and_its_row_committed(store):
    async def one(i):
        return await store.queue_add("t", {"i": i})

    tasks = [asyncio.ensure_future(one(i)) for i in range(10)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    got = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(got[3], asyncio.CancelledError)
    assert [r["i"] for k, r in enumerate(got) if k != 3] == [i for i in range(10) if i != 3]
    assert await store.count("t", filter={"i": 3}) == 1


async def test_wake_ups_left_after_an_error_are_scheduled():
    loop = asyncio.get_running_loop()
    ran = []

    def boom(fut):
        ran.append("boom")
        raise KeyboardInterrupt

    futs = [loop.create_future() for _ in range(3)]
    for f in futs:
        f.set_result(None)
    ctx = contextvars.copy_context()
    woken = [
        (ctx, lambda f: ran.append(0), futs[0]),
        (ctx, boom, futs[1]),
        (ctx, lambda f: ran.append(2), futs[2]),
    ]
    with pytest.raises(KeyboardInterrupt):
        writer._wake_all(woken)
    assert ran == [0, "boom"]
    await asyncio.sleep(0)
    assert ran == [0, "boom", 2]
