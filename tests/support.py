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
