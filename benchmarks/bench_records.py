"""Record writes and indexed reads through the store, against raw sqlite3.

Measured (each against a baseline taken in the same run):
- group commit: N concurrent runs of an ``Engine`` each doing M
  ``add_record`` steps (a loop over M documents), in rows/s from the first
  trigger to the last run's outcome committed, against raw
  ``sqlite3.executemany`` of the same rows in one transaction. Target >= 50%
  of raw. The same with N plain coroutines each awaiting M ``store.add``
  calls (the store alone, without runs and the VM); also the naive
  alternative, one transaction (commit) per row. Every caller resumes only
  after its row is committed. The store-alone rows are also given per
  CPU-second of the whole process (every thread), which other processes'
  load moves less than wall time. Every row times the writes alone: opening
  the engine, the store or the sqlite3 connection and creating the table
  are left out of all of them.
- an equality ``store.query`` on a declared (indexed) field over a large
  table returning 10 records, median latency, against the same query on an
  undeclared field (a full scan). Target: under 5 ms median at 1,000,000
  rows. Also shown: an indexed query returning 1,000 records (its cost is
  decoding those records, not finding them).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parent.parent))

from benchmarks import runner  # noqa: E402
from benchmarks._harness import Result, _summarise, parse_args, report, time_async  # noqa: E402
from engine._store import codec, open_store  # noqa: E402

BENCH = "records"


def _row(i: int) -> dict:
    """A ~200-byte JSON record, like the seed's log rows."""
    return {
        "task_name": "daily_data_sync",
        "status": "completed" if i % 3 else "failed",
        "records_processed": i,
        "summary": {"started_at": 1_700_000_000.5 + i, "records_sent": i % 100, "ok": True},
        "message": f"processed batch number {i:08d} of the nightly synchronisation",
    }


def _raw_table(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute(
        "CREATE TABLE t (id NOT NULL UNIQUE, created_at REAL NOT NULL, "
        "updated_at REAL NOT NULL, data TEXT NOT NULL)"
    )
    return conn


def _raw_executemany(path: str, rows: list[tuple]) -> tuple[float, float]:
    """(wall, CPU) seconds of the one transaction; connecting and creating the table are
    left out, as the other rows leave out opening the store or the engine."""
    conn = _raw_table(path)
    t0, c0 = time.perf_counter(), time.process_time()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    spent = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return spent


def _raw_per_row(path: str, rows: list[tuple]) -> float:
    """Wall seconds of one transaction per row (the connection made before)."""
    conn = _raw_table(path)
    t0 = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", row)
        conn.execute("COMMIT")
    spent = time.perf_counter() - t0
    conn.close()
    return spent


def _fresh(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return path


def _vs_raw(figure: str, rate: float, raw_rate: float, note: str = "") -> Result:
    """A rows/s figure held to the target: at least half of raw ``executemany``'s rate."""
    return Result(BENCH, figure, rate, "rows/s", "raw executemany", raw_rate, ">= 0.50x raw",
                  rate >= 0.5 * raw_rate, note=note)  # fmt: skip


def bench_group_commit(tmp: str, writers: int, per_writer: int, repeat: int) -> list[Result]:
    total = writers * per_writer
    docs = [_row(i) for i in range(per_writer)]
    raw_rows = [(i + 1, 1.0, 1.0, codec.encode(docs[i % per_writer])) for i in range(total)]
    cpu: dict[str, list[float]] = {}  # process CPU seconds (every thread) per repetition
    wall: dict[str, list[float]] = {}  # seconds of the writes alone per repetition

    def raw_once() -> None:
        spent, used = _raw_executemany(_fresh(tmp, "raw.db"), raw_rows)
        wall.setdefault("raw", []).append(spent)
        cpu.setdefault("raw", []).append(used)

    naive_rows = raw_rows[: max(total // 20, 1000)]
    for _ in range(repeat + 1):  # the first is a warm-up
        raw_once()
        wall.setdefault("naive", []).append(_raw_per_row(_fresh(tmp, "naive.db"), naive_rows))
    raw = _summarise(wall["raw"][1:])
    naive = _summarise(wall["naive"][1:])

    def grouped(loop: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            async with open_store(f"sqlite:///{_fresh(tmp, 'store.db')}") as store:

                async def writer() -> None:
                    for doc in docs:
                        await store.add("logs", doc)

                await store.add("logs", docs[0])  # the table made and its id counter loaded
                t0, c0 = time.perf_counter(), time.process_time()
                await asyncio.gather(*(writer() for _ in range(writers)))
                wall.setdefault(loop, []).append(time.perf_counter() - t0)
                cpu.setdefault(loop, []).append(time.process_time() - c0)
                assert await store.count("logs") == total + 1

        return run

    results = []
    raw_rate = total / raw.median
    raw_cpu_rate = total / statistics.median(cpu["raw"][1:])
    for loop in ("asyncio", "uvloop"):
        time_async(grouped(loop), repeat=repeat, loop=loop)
        rate = total / statistics.median(wall[loop][1:])  # [0] is the warm-up
        results.append(_vs_raw(f"group commit add, {writers} writers x {per_writer} ({loop})", rate, raw_rate))
        results.append(
            Result(
                BENCH,
                f"same, rows per CPU-second, all threads ({loop})",
                total / statistics.median(cpu[loop][1:]),
                "rows/cpu-s",
                "raw executemany",
                raw_cpu_rate,
                note="CPU, not wall: less moved by other processes' load",
            )
        )
    loop_cpu: dict[str, list[float]] = {}  # event-loop thread CPU seconds per repetition
    for loop in ("asyncio", "uvloop"):
        with runner(loop) as r:
            samples = [
                r.run(_through_runs(tmp, writers, docs, loop_cpu.setdefault(loop, [])))
                for _ in range(repeat)
            ]
        rate = total / statistics.median(samples)
        results.append(_vs_raw(
            f"{writers} runs x {per_writer} add_record steps, through the engine ({loop})", rate, raw_rate,
            note=f"median of {repeat}; from the first trigger to the last outcome committed",
        ))  # fmt: skip
    for loop in ("asyncio", "uvloop"):
        results.append(
            Result(
                BENCH,
                f"same, event-loop thread CPU per row ({loop})",
                statistics.median(loop_cpu[loop]) / total * 1e6,
                "us/row",
                higher_is_better=False,
                note="diagnostic: the loop thread's share, less moved by other processes' load",
            )
        )
    results.append(
        Result(
            BENCH,
            "naive: one commit per row (raw sqlite3)",
            len(naive_rows) / naive.median,
            "rows/s",
            "raw executemany",
            raw_rate,
            note="for contrast",
        )
    )
    return results


async def _through_runs(
    tmp: str, runs: int, docs: list[dict], loop_cpu: list[float] | None = None
) -> float:
    """Seconds for ``runs`` runs at once of tasks whose stack adds every one of ``docs`` with
    ``add_record`` (each task's first run, which compiles its stack, before the clock); the
    event-loop thread's CPU seconds over the same span are appended to ``loop_cpu``."""
    from engine import Engine

    stack = [
        {"function": "create_variable", "name": "docs", "value": docs},
        {"function": "loop", "array": "{{ docs }}", "operations": [
            {"function": "add_record", "table": "logs", "data": "{{ item }}"},
        ]},
    ]  # fmt: skip
    defs = [{"name": f"writer_{i:03d}", "stack": stack, "request_history": {"enabled": False}}
            for i in range(min(runs, 100))]  # fmt: skip

    async with Engine.open(
        defs, database=f"sqlite:///{_fresh(tmp, 'engine.db')}", env={}
    ) as engine:
        names = engine.task_names()
        for name in names:
            await engine.trigger(name, wait=True)
        base_rows = await engine.store.count("logs")
        base_runs = sum(engine.runs_total.values())
        t0 = time.perf_counter()
        c0 = time.thread_time()
        await asyncio.gather(*(engine.trigger(names[i % len(names)]) for i in range(runs)))
        # the engine has no public "wait for every run"; a 1 ms poll is noise here
        while sum(engine.runs_total.values()) < base_runs + runs:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - t0
        if loop_cpu is not None:
            loop_cpu.append(time.thread_time() - c0)
        assert await engine.store.count("logs") == base_rows + runs * len(docs)
        assert await engine.store.count_runs(status="completed") == base_runs + runs
    return elapsed


def _fill(path: str, rows: int) -> None:
    """``rows`` records: ``ext`` has 10 records per value, ``status`` 1,000 (both indexed),
    ``plain`` the same values as ``ext`` without an index."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE items (id NOT NULL UNIQUE, created_at REAL NOT NULL, "
        "updated_at REAL NOT NULL, data TEXT NOT NULL)"
    )
    conn.execute("BEGIN")
    enc = codec.encode
    groups = rows // 10
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        (
            (
                i,
                1.0,
                1.0,
                enc(
                    {
                        "ext": f"e{i % groups}",
                        "status": f"s{i % 1000}",
                        "plain": f"e{i % groups}",
                        "n": i,
                    }
                ),
            )
            for i in range(1, rows + 1)
        ),
    )
    conn.execute("COMMIT")
    conn.close()


def bench_indexed_query(tmp: str, rows: int, queries: int) -> list[Result]:
    path = _fresh(tmp, "big.db")
    _fill(path, rows)
    groups = rows // 10

    async def measure() -> dict[str, float]:
        indexes = {"items": ["ext", "status"]}
        async with open_store(f"sqlite:///{path}", indexes=indexes) as store:

            async def median_ms(field: str, n: int, values: int, hits: int) -> float:
                samples = []
                for q in range(n):
                    value = f"{field[0]}{(q * 7919) % values}" if field != "plain" else f"e{q}"
                    t0 = time.perf_counter()
                    got = await store.query("items", filter={field: value})
                    samples.append(time.perf_counter() - t0)
                    assert len(got) == hits
                return statistics.median(samples) * 1000

            return {
                "ext": await median_ms("ext", queries, groups, 10),
                "status": await median_ms("status", queries // 4, 1000, rows // 1000),
                "plain": await median_ms("plain", 5, groups, 10),
            }

    ms = asyncio.run(measure())
    big = rows >= 1_000_000
    target = "< 5 ms median" if big else "< 5 ms at 1M rows"
    return [
        Result(
            BENCH,
            f"indexed equality query, {rows:,} rows, 10 hits",
            ms["ext"],
            "ms",
            "full scan",
            ms["plain"],
            target,
            ms["ext"] < 5.0 if big else None,
            higher_is_better=False,
        ),
        Result(
            BENCH,
            f"indexed equality query, {rows:,} rows, {rows // 1000:,} hits",
            ms["status"],
            "ms",
            "full scan",
            ms["plain"],
            higher_is_better=False,
            note="cost is decoding the records returned",
        ),
    ]


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-") as tmp:
        if quick:
            results = bench_group_commit(tmp, 200, 50, repeat=3)
            results += bench_indexed_query(tmp, 100_000, 100)
        else:
            results = bench_group_commit(tmp, 1000, 100, repeat=5)
            results += bench_indexed_query(tmp, 1_000_000, 200)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
