"""A durable peer: the same workflow on DBOS (SQLite) and on cronstack, runs/s and steps/s.

The workflow: query 10 items, loop over them, and for each even ``value``
insert a result row (5 inserts), then return the count. On DBOS (``pip install
dbos``; SQLite system database) the query and each insert are ``@DBOS.step``s
writing an application SQLite file with ``sqlite3``, inside a
``@DBOS.workflow`` (every step checkpointed). On cronstack it is a task stack
(``query_all_records``, ``loop``, ``conditional``, ``add_record``) on an
``Engine`` with an SQLite file and request history on (every step traced).
Both run one workflow after another (``trigger(..., wait=True)`` for
cronstack), for a fixed time budget; steps/s counts the 6 I/O steps (1 query +
5 inserts) of each. An extra row gives cronstack with the runs started at once.
When DBOS is not installed its row is reported as skipped, with the reason.
Run: ``.venv/bin/python -m benchmarks.bench_peer [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import loops, runner
from benchmarks._harness import Result, parse_args, report

ITEMS = 10
IO_STEPS = 1 + ITEMS // 2

STACK = [
    {"function": "query_all_records", "table": "items", "sort": "id asc", "limit": ITEMS, "return_as": "items"},
    {"function": "create_variable", "name": "inserted", "value": 0},
    {"function": "loop", "array": "{{ items }}", "operations": [
        {"function": "conditional", "condition": "item.value % 2 == 0", "true_branch": [
            {"function": "add_record", "table": "results",
             "data": {"item_id": "{{ item.id }}", "square": "{{ item.value * item.value }}"}},
            {"function": "update_variable", "name": "inserted", "operation": "increment", "value": 1},
        ]},
    ]},
    {"function": "return", "value": "{{ inserted }}"},
]  # fmt: skip


def dbos_rate(folder: Path, budget: float, max_runs: int) -> tuple[float, int]:
    """(workflows/s, workflows run) of the workflow on DBOS within ``budget`` seconds."""
    from dbos import DBOS

    app = str(folder / "dbos-app.db")
    with sqlite3.connect(app) as c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value INTEGER)")
        c.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, item_id INTEGER, square INTEGER)")
        c.executemany("INSERT INTO items (value) VALUES (?)", [(i,) for i in range(ITEMS)])

    @DBOS.step()
    def query() -> list[dict[str, Any]]:
        with sqlite3.connect(app) as c:
            rows = c.execute("SELECT id, value FROM items ORDER BY id LIMIT ?", (ITEMS,))
            return [{"id": r[0], "value": r[1]} for r in rows]

    @DBOS.step()
    def insert(item: dict[str, Any]) -> None:
        with sqlite3.connect(app) as c:
            c.execute("INSERT INTO results (item_id, square) VALUES (?, ?)", (item["id"], item["value"] ** 2))

    @DBOS.workflow()
    def workflow() -> int:
        inserted = 0
        for item in query():
            if item["value"] % 2 == 0:
                insert(item)
                inserted += 1
        return inserted

    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(config={"name": "cronstack-bench", "system_database_url": f"sqlite:///{folder / 'dbos-sys.db'}",
                 "log_level": "WARNING"})  # fmt: skip
    DBOS.launch()
    try:
        if workflow() != ITEMS // 2:  # warm-up and a check
            raise AssertionError("the DBOS workflow inserted the wrong number of rows")
        n, t0 = 0, time.perf_counter()
        while n < max_runs and time.perf_counter() - t0 < budget:
            workflow()
            n += 1
        elapsed = time.perf_counter() - t0
    finally:
        DBOS.destroy()
    with sqlite3.connect(app) as c:
        stored = c.execute("SELECT count(*) FROM results").fetchone()[0]
    if stored != (n + 1) * (ITEMS // 2):
        raise AssertionError(f"DBOS stored {stored} results for {n + 1} workflows")
    return n / elapsed, n


async def cronstack_rate(folder: Path, budget: float, max_runs: int, concurrent: int = 0) -> tuple[float, int]:
    """(runs/s, runs) of the workflow on cronstack: one after another, or ``concurrent`` at once."""
    from engine import Engine

    db = folder / f"peer-{time.monotonic_ns()}.db"
    async with Engine.open([{"name": "workflow", "stack": STACK}], database=f"sqlite:///{db}", env={}) as engine:
        for i in range(ITEMS):
            await engine.store.add("items", {"value": i})
        first = await engine.trigger("workflow", wait=True)
        if first["status"] != "completed" or first["result"] != ITEMS // 2:  # type: ignore[index]
            raise AssertionError(f"the cronstack workflow ended {first}")
        t0 = time.perf_counter()
        if concurrent:
            n = concurrent
            ids = await asyncio.gather(*(engine.trigger("workflow") for _ in range(n)))
            # the engine has no public "wait for every run"; a 1 ms poll
            while sum(engine.runs_total.values()) < n + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            del ids
        else:
            n = 0
            while n < max_runs and time.perf_counter() - t0 < budget:
                await engine.trigger("workflow", wait=True)
                n += 1
        elapsed = time.perf_counter() - t0
        stored = await engine.store.count("results")
        if stored != (n + 1) * (ITEMS // 2):
            raise AssertionError(f"cronstack stored {stored} results for {n + 1} runs")
    return n / elapsed, n


def run(quick: bool, *, budget: float | None = None, max_runs: int | None = None) -> list[Result]:
    budget = budget or (4.0 if quick else 15.0)
    max_runs = max_runs or 100_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-") as tmp:
        folder = Path(tmp)
        try:
            import dbos  # noqa: F401
        except ImportError as exc:
            peer, peer_n, skip = None, 0, f"skipped: DBOS is not installed ({exc}); pip install dbos"
        else:
            peer, peer_n = dbos_rate(folder, budget, max_runs)
            skip = ""
        for loop in loops():
            with runner(loop) as r:
                seq, seq_n = r.run(cronstack_rate(folder, budget, max_runs))
                burst, burst_n = r.run(cronstack_rate(folder, budget, max_runs, concurrent=1_000 if quick else 5_000))
            results.append(Result("peer", f"workflow runs/s, sequential, {loop}", seq, "runs/s",
                                  "DBOS 3.4 on SQLite" if peer else None, peer,
                                  note=skip or f"{seq_n:,} runs vs {peer_n:,} DBOS workflows"))
            results.append(Result("peer", f"workflow steps/s, sequential, {loop}", seq * IO_STEPS, "steps/s",
                                  "DBOS 3.4 on SQLite" if peer else None, peer * IO_STEPS if peer else None,
                                  note=f"{IO_STEPS} I/O steps per workflow"))
            results.append(Result("peer", f"workflow runs/s, {burst_n:,} at once, {loop}", burst, "runs/s",
                                  "DBOS 3.4 sequential" if peer else None, peer))
    if peer is None:
        results.append(Result("peer", "DBOS", 0.0, "runs/s", note=skip))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
