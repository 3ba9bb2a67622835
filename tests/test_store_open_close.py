"""Closing the store: concurrent closes, and what a damaged file does at open and on checks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import engine._store
from engine._store import StoreCorrupt, open_store

pytestmark = pytest.mark.anyio
ROOT = Path(engine._store.__file__).parents[2]

#: a close that takes longer than this is hung, not slow
HANG = 10


def run_isolated(body: str, tmp_path: Path) -> None:
    """Run ``async def main(path)`` in a child process: a hung close blocks even the
    event loop's teardown (aiosqlite awaits its stopped thread in a ``finally``), so
    only a process with a deadline turns a regression into a failure, not a hang."""
    script = (
        "import asyncio, anyio, sys\n"
        "from engine._store import StoreError, open_store\n"
        f"HANG = {HANG}\n{textwrap.dedent(body)}\n"
        "asyncio.run(main(sys.argv[1]))\nprint('done')\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "c.db")],
            cwd=ROOT, capture_output=True, text=True, timeout=HANG + 20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("closing the store hung")
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), proc.stderr[-3000:]


# -- close -------------------------------------------------------------------------


def test_concurrent_closes_all_return(tmp_path):
    run_isolated(
        """
        async def main(path):
            store = await open_store(f"sqlite:///{path}")
            await store.add("t", {"a": 1})
            pending = store.add("t", {"a": 2})  # queued, not yet committed
            with anyio.fail_after(HANG):
                await asyncio.gather(store.close(), store.close(), store.close(), pending)
                await store.close()  # and a later one returns at once
            try:
                await store.count("t")
                raise AssertionError("a closed store read")
            except StoreError as exc:
                assert "closed" in str(exc)
            # the queued write was committed and the lock released
            async with open_store(f"sqlite:///{path}") as again:
                assert await again.count("t") == 2
        """,
        tmp_path,
    )


def test_a_cancelled_close_still_closes(tmp_path):
    run_isolated(
        """
        async def main(path):
            store = await open_store(f"sqlite:///{path}")
            await store.add("t", {"a": 1})
            first = asyncio.ensure_future(store.close())
            await asyncio.sleep(0)
            first.cancel()
            with anyio.fail_after(HANG):
                await asyncio.gather(store.close(), store.close())
            async with open_store(f"sqlite:///{path}") as again:  # the lock was released
                assert await again.count("t") == 1
        """,
        tmp_path,
    )


def test_concurrent_closes_of_a_memory_store(tmp_path):
    run_isolated(
        """
        async def main(path):
            store = await open_store("sqlite:///:memory:")
            await store.add("t", {"a": 1})
            with anyio.fail_after(HANG):
                await asyncio.gather(store.close(), store.close())
        """,
        tmp_path,
    )


# -- damaged files -------------------------------------------------------------------


def overwrite_pages(path: Path) -> bytes:
    """Overwrite two pages of a closed database with garbage; return the damaged bytes."""
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 5] = random.Random(7).randbytes(4096 * 2)
    path.write_bytes(bytes(data))
    return bytes(data)


def contents(path: Path) -> bytes:
    return path.read_bytes()


async def damaged(path: Path) -> bytes:
    """A database whose record pages were overwritten with garbage after it was closed."""
    async with open_store(f"sqlite:///{path}") as store:
        for i in range(300):
            await store.add("t", {"i": i, "pad": "x" * 200})
    return overwrite_pages(path)


async def test_integrity_check_of_a_damaged_file_is_store_corrupt(tmp_path):
    path = tmp_path / "d.db"
    before = await damaged(path)
    async with open_store(f"sqlite:///{path}") as store:
        with pytest.raises(StoreCorrupt, match=r"checking the integrity of .*d\.db: .*damaged.*backup"):
            await store.integrity_check()
    assert contents(path) == before  # checking wrote nothing
