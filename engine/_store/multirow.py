"""Many rows in few statements: one multi-row ``VALUES`` list per chunk.

``executemany`` releases and retakes the GIL around every row's
``sqlite3_step``, and while the event loop is busy resuming callers each
retake waits for it (up to the interpreter's switch interval). A statement
with many rows in its ``VALUES`` list is one step, so the writer thread
releases the GIL once per chunk and does its SQLite work while the loop runs.
Chunks are powers of two up to ``CHUNK_ROWS``, so each table sees a handful of
statement texts, which sqlite3 keeps prepared.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

__all__ = ("CHUNK_ROWS", "UPDATE_FROM", "execute_rows", "values_list")

#: rows per statement at most (with SQLite's limit of 32,766 parameters in mind)
CHUNK_ROWS = 256
#: ``UPDATE ... FROM (VALUES ...)`` is there (SQLite 3.33 and later)
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


def values_list(row: str, n: int) -> str:
    """``row`` (a parenthesised placeholder list) ``n`` times, comma-separated."""
    return ", ".join([row] * n)


def execute_rows(
    conn: sqlite3.Connection, sql_for: Callable[[int], str], params: list[Any], width: int
) -> int:
    """Run ``sql_for(size)`` over flat ``params`` (``width`` values a row), ``size`` rows at
    a time; the rows the statements changed, in all."""
    n = len(params) // width
    if n <= CHUNK_ROWS and n & (n - 1) == 0:  # a power of two: one statement, no copy
        return conn.execute(sql_for(n), params).rowcount
    changed = i = 0
    size = CHUNK_ROWS
    while i < n:
        while size > n - i:
            size //= 2
        changed += conn.execute(sql_for(size), params[i * width:(i + size) * width]).rowcount
        i += size
    return changed
