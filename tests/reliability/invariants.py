"""Invariants of a database an engine has used, read straight from the file with sqlite3.

Each check returns a list of violations (empty when it holds) so a test can
print them all, with the seed, before failing. They read the file directly,
not through the engine, so they see what is on disk and nothing else.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ("Db", "check_all")


class Db:
    """Read-only view of a cronstack SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Db:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM cronstack_runs ORDER BY rowid")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def record_ids(self, table: str) -> set[Any]:
        try:
            return {r[0] for r in self.conn.execute(f'SELECT id FROM "{table}"')}
        except sqlite3.OperationalError:  # the table was never created
            return set()

    def records(self, table: str) -> list[dict[str, Any]]:
        try:
            rows = self.conn.execute(f'SELECT id, data FROM "{table}" ORDER BY rowid').fetchall()
        except sqlite3.OperationalError:
            return []
        return [{"id": i, **json.loads(d)} for i, d in rows]

    def integrity(self) -> list[str]:
        return [r[0] for r in self.conn.execute("PRAGMA integrity_check")]


def doubled_fires(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """No (task, scheduled_at) has two schedule/catchup runs."""
    seen: dict[tuple[Any, Any], str] = {}
    out = []
    for r in runs:
        if r["trigger"] in ("schedule", "catchup"):
            key = (r["task"], r["scheduled_at"])
            if key in seen:
                out.append(f"fire {key} has two runs: {seen[key]} and {r['id']}")
            seen[key] = r["id"]
    return out


def left_running(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """After a clean stop no run is left running."""
    return [f"run {r['id']} of {r['task']} is still running after a clean stop"
            for r in runs if r["status"] == "running"]


def retries_within_policy(runs: Iterable[Mapping[str, Any]], max_retries: Mapping[str, int]) -> list[str]:
    """No attempt past 1 + max_retries, and no attempt retried twice."""
    out = []
    children: dict[str, list[str]] = {}
    for r in runs:
        limit = max_retries.get(r["task"], 0) + 1
        if r["attempt"] > limit:
            out.append(f"run {r['id']} of {r['task']} is attempt {r['attempt']} > {limit}")
        if r["trigger"] == "retry":
            children.setdefault(r["parent_id"], []).append(r["id"])
    out += [f"run {p} was retried {len(c)} times: {c}" for p, c in children.items() if len(c) > 1]
    return out


def retryable_without_retry(runs: list[Mapping[str, Any]], max_retries: Mapping[str, int]) -> list[str]:
    """Every failed/timed_out/crashed attempt under its policy's limit has its retry row."""
    parents = {r["parent_id"] for r in runs if r["trigger"] == "retry"}
    return [
        f"run {r['id']} of {r['task']} ended {r['status']} at attempt {r['attempt']} "
        f"but no retry was stored (max_retries {max_retries.get(r['task'], 0)})"
        for r in runs
        if r["kind"] == "task" and r["status"] in ("failed", "timed_out", "crashed")
        and r["attempt"] <= max_retries.get(r["task"], 0) and r["id"] not in parents
    ]


def missing_records(db: Db, acked: Iterable[tuple[str, Any]]) -> list[str]:
    """Every record whose add returned (was acknowledged) is in the database."""
    by_table: dict[str, set[Any]] = {}
    out = []
    for table, rid in acked:
        ids = by_table.get(table)
        if ids is None:
            ids = by_table[table] = db.record_ids(table)
        if rid not in ids:
            out.append(f"record {table}/{rid} was acknowledged but is not in the database")
    return out


def check_all(path: str, *, max_retries: Mapping[str, int], clean_stop: bool,
              acked: Iterable[tuple[str, Any]] = ()) -> list[str]:
    """Every invariant that holds for any database, whatever happened to its engine."""
    with Db(path) as db:
        runs = db.runs()
        problems = [f"integrity_check: {line}" for line in db.integrity() if line != "ok"]
        problems += doubled_fires(runs)
        problems += retries_within_policy(runs, max_retries)
        problems += missing_records(db, acked)
        if clean_stop:
            problems += left_running(runs)
            problems += retryable_without_retry(runs, max_retries)
        return problems
