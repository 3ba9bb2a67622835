"""The PostgreSQL store's record writes and indexed reads, against asyncpg doing the same work directly.

Measured on a private server this script starts (``tests/pg_server.py``:
initdb into a temporary directory, ``fsync=off``, ``synchronous_commit=on``,
as a server's default), over loopback TCP, each figure against a baseline
taken in the same run on the same server:

- concurrent adds: W coroutines each awaiting M ``store.add`` calls (every
  caller resumes after its row's COMMIT), rows/s, against one asyncpg
  ``executemany`` of the same rows into a table of the same shape (JSON
  ``doc``, generated JSONB ``data``, the same expression index) in one
  transaction.
- sequential adds: one ``store.add`` after another, rows/s, against asyncpg
  inserting the same rows one transaction (autocommit statement) per row.
- indexed query: ``store.query`` on a declared field returning 50 records
  (decoded), queries/s, against the same indexed ``SELECT ... ORDER BY seq
  LIMIT 50`` through one asyncpg connection (rows fetched, not decoded).
- get by id: ``store.get(id=...)``, against the direct primary-key SELECT.

Opening the store and creating the tables are left out of every timing. When
no PostgreSQL binaries are found the module reports one skipped row saying so.
Run: ``.venv/bin/python -m benchmarks.bench_postgres [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import loops, runner  # noqa: E402
from benchmarks._harness import Result, parse_args, report  # noqa: E402

BENCH = "postgres"
#: records per value of the indexed field: what one indexed query returns
HITS = 50


def _doc(i: int, values: int) -> dict:
    """A ~200-byte record; ``status`` (indexed) has ``values`` distinct values."""
    return {
        "status": f"s{i % values}",
        "records_processed": i,
        "summary": {"started_at": 1_700_000_000.5 + i, "records_sent": i % 100, "ok": True},
        "message": f"processed batch number {i:08d} of the nightly synchronisation",
    }


def _raw_ddl(table: str) -> list[str]:
    from engine._store.postgres_schema import index_ddl, record_table_ddl

    return [f'DROP TABLE IF EXISTS "{table}"', record_table_ddl("public", table), index_ddl("public", table, "status")]


async def _raw_bulk(url: str, rows: list[tuple]) -> float:
    """Seconds of one ``executemany`` of ``rows`` in one transaction (connection and table made before)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for sql in _raw_ddl("raw_bulk"):
            await conn.execute(sql)
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.executemany(
                'INSERT INTO raw_bulk (id, created_at, updated_at, doc) VALUES ($1::jsonb, $2, $3, $4::json)', rows)
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def _raw_each(url: str, rows: list[tuple]) -> float:
    """Seconds of one autocommit INSERT per row (a commit each)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for sql in _raw_ddl("raw_each"):
            await conn.execute(sql)
        t0 = time.perf_counter()
        for row in rows:
            await conn.execute(
                'INSERT INTO raw_each (id, created_at, updated_at, doc) VALUES ($1::jsonb, $2, $3, $4::json)', *row)
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def _measure(url: str, writers: int, per_writer: int, sequential: int, queries: int) -> dict[str, float]:
    import asyncpg

    from engine._store import codec, open_store

    total = writers * per_writer
    values = max(total // HITS, 1)
    docs = [_doc(i, values) for i in range(total)]
    out: dict[str, float] = {}
    async with open_store(url, indexes={"items": ["status"], "seq_items": ["status"]}) as store:
        await store.add("items", {"status": "warm-up"})  # the table made, its counter row in place
        await store.add("seq_items", {"status": "warm-up"})

        async def writer(w: int) -> None:
            for j in range(per_writer):
                await store.add("items", docs[w * per_writer + j])

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        out["concurrent"] = total / (time.perf_counter() - t0)
        assert await store.count("items") == total + 1

        t0 = time.perf_counter()
        for doc in docs[:sequential]:
            await store.add("seq_items", doc)
        out["sequential"] = sequential / (time.perf_counter() - t0)

        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ANALYZE items")
            keys = [f"s{(q * 7919) % values}" for q in range(queries)]
            for key in keys[:20]:  # warm-up: statements prepared, pages cached
                assert len(await store.query("items", filter={"status": key}, limit=HITS)) == HITS
            t0 = time.perf_counter()
            for key in keys:
                await store.query("items", filter={"status": key}, limit=HITS)
            out["query"] = queries / (time.perf_counter() - t0)

            direct = "SELECT id, created_at, updated_at, doc FROM items WHERE (data #> '{status}') = $1::jsonb " \
                     f"ORDER BY seq LIMIT {HITS}"
            jkeys = [codec.encode(k) for k in keys]
            for key in jkeys[:20]:
                assert len(await conn.fetch(direct, key)) == HITS
            t0 = time.perf_counter()
            for key in jkeys:
                await conn.fetch(direct, key)
            out["query_raw"] = queries / (time.perf_counter() - t0)

            ids = [(q * 7919) % total + 1 for q in range(queries)]
            for rid in ids[:20]:
                assert (await store.get("items", id=rid))["id"] == rid
            t0 = time.perf_counter()
            for rid in ids:
                await store.get("items", id=rid)
            out["get"] = queries / (time.perf_counter() - t0)
            by_id = "SELECT id, created_at, updated_at, doc FROM items WHERE id = $1::jsonb"
            for rid in ids[:20]:
                assert await conn.fetchrow(by_id, str(rid)) is not None
            t0 = time.perf_counter()
            for rid in ids:
                await conn.fetchrow(by_id, str(rid))
            out["get_raw"] = queries / (time.perf_counter() - t0)
        finally:
            await conn.close()

    raw_rows = [(str(i + 1), 1.0, 1.0, codec.encode(d)) for i, d in enumerate(docs)]
    out["bulk_raw"] = total / await _raw_bulk(url, raw_rows)
    out["each_raw"] = sequential / await _raw_each(url, raw_rows[:sequential])
    return out


def _skipped(reason: str) -> list[Result]:
    return [Result(BENCH, "skipped", 0.0, "-", note=f"skipped: {reason}")]


def run(quick: bool) -> list[Result]:
    try:
        from tests.pg_server import PgServer, skip_reason
    except ImportError as exc:
        return _skipped(f"tests/pg_server.py cannot be imported ({exc})")
    reason = skip_reason()
    if reason:
        return _skipped(reason)
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return _skipped("asyncpg is not installed: pip install 'cronstack[postgres]'")
    writers, per_writer, sequential, queries, repeat = (50, 100, 1000, 1000, 3) if quick else (100, 200, 3000, 5000, 5)
    server = PgServer().start(settings={"synchronous_commit": "on"})
    results: list[Result] = []
    try:
        for loop in loops():
            samples: dict[str, list[float]] = {}
            for _ in range(repeat):
                with runner(loop) as r:
                    got = r.run(_measure(server.new_database(), writers, per_writer, sequential, queries))
                for k, v in got.items():
                    samples.setdefault(k, []).append(v)
            m = {k: statistics.median(v) for k, v in samples.items()}
            note = f"median of {repeat} runs, each on a fresh database"
            results += [
                Result(BENCH, f"concurrent add, {writers} writers x {per_writer} ({loop})", m["concurrent"], "rows/s",
                       "asyncpg executemany, 1 txn", m["bulk_raw"], note=note),
                Result(BENCH, f"sequential add ({loop})", m["sequential"], "rows/s",
                       "asyncpg INSERT, 1 txn/row", m["each_raw"], note=note),
                Result(BENCH, f"indexed query, {HITS} records ({loop})", m["query"], "queries/s",
                       "asyncpg SELECT, same plan", m["query_raw"], note=note + "; store figure decodes the records"),
                Result(BENCH, f"get by id ({loop})", m["get"], "queries/s",
                       "asyncpg SELECT by id", m["get_raw"], note=note),
            ]  # fmt: skip
    finally:
        server.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
