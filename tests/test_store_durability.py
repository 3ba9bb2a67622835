"""A write is durable when ``add`` returns: SIGKILL right after cannot lose it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import engine._store
from engine._store import open_store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(engine._store.__file__).parents[2]

WRITER = """
import asyncio, sys
from engine._store import open_store
async def main():
    store = await open_store(sys.argv[1], synchronous=sys.argv[2])
    for i in range(int(sys.argv[3])):
        rec = await store.add("events", {"i": i, "pad": "x" * 200})
        await store.insert_run({"id": f"run{i}", "task": "t"})
        await store.update_run(f"run{i}", {"status": "completed", "result": {"i": i}})
        print("written", rec["id"], flush=True)
    await asyncio.sleep(60)  # never closes: killed first
asyncio.run(main())
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


def write_then_kill(url: str, synchronous: str, count: int) -> list[int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, synchronous, str(count)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ids = []
    try:
        for _ in range(count):
            line = proc.stdout.readline().split()
            assert line and line[0] == "written", proc.stderr.read()
            ids.append(int(line[1]))
        proc.send_signal(signal.SIGKILL)  # right after the last "written"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return ids


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
async def test_committed_rows_survive_sigkill(tmp_path, synchronous):
    path = tmp_path / "durable.db"
    url = f"sqlite:///{path}"
    ids = write_then_kill(url, synchronous, 20)
    assert ids == list(range(1, 21))
    # the -wal file is still there: recovery happens on the next open
    assert (tmp_path / "durable.db-wal").exists()
    async with open_store(url) as store:
        assert await store.integrity_check() == ["ok"]
        assert [r["i"] for r in await store.query("events")] == list(range(20))
        last = await store.get_run("run19")
        assert last["status"] == "completed" and last["result"] == {"i": 19}
        assert (await store.add("events", {"i": 20}))["id"] == 21
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
