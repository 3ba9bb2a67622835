"""Helpers shared by the engine tests."""

import anyio


async def eventually(predicate, seconds=10.0, poll=0.005):
    """Wait (in real time) until ``predicate()`` (maybe a coroutine) is truthy; return its value.

    The engine's store works in a thread, so a condition can become true
    without the event loop doing anything the test could await.
    """
    with anyio.fail_after(seconds):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await anyio.sleep(poll)


async def assert_cancellable_while_others_run(run, seconds=0.2):
    """``run()`` (a never-ending computation) lets another task run and stops when a timeout cancels it.

    Cooperative yields are what make both true: a loop that never awaited
    would starve the ticker and never see the cancellation.
    """
    import anyio.lowlevel

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    with anyio.move_on_after(seconds) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await run()
    assert scope.cancelled_caught
    assert ticks > 10
