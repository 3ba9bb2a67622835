"""The store's error family, and the one place sqlite3 errors become it.

Two branches meet here. ``StoreError`` is what the engine sees when its own
bookkeeping (runs, traces, locks, schema) fails. ``RecordError`` is also a
``RunError``: a record step that fails inside a run must be catchable by a
stack's ``try_catch`` like any other step failure, with ``error.type`` naming
what went wrong (``RecordNotFound``, ``InvalidName``...).
"""

from __future__ import annotations

import sqlite3

from runtime import CronstackError, InternalError, RunError

__all__ = (
    "StoreError",
    "StoreLocked",
    "StoreCorrupt",
    "SchemaTooNew",
    "UnsupportedDatabase",
    "RunNotFound",
    "RecordError",
    "RecordNotFound",
    "DuplicateRecord",
    "InvalidName",
    "InvalidFilter",
    "InvalidRecord",
    "WriteFailed",
    "WriteOutcomeUnknown",
    "translate",
)


class StoreError(CronstackError):
    """The database could not do what the engine asked."""

    error_type = "StoreError"


class StoreLocked(StoreError):
    """Another engine process owns this SQLite file."""

    error_type = "StoreLocked"


class StoreCorrupt(StoreError):
    """The file is not an SQLite database, or SQLite reports it damaged."""

    error_type = "StoreCorrupt"


class SchemaTooNew(StoreError):
    """The database was written by a newer cronstack than this one."""

    error_type = "SchemaTooNew"


class UnsupportedDatabase(StoreError):
    """The URL names a database kind this build cannot open."""

    error_type = "UnsupportedDatabase"


class RunNotFound(StoreError, LookupError):
    """An engine-state call named a run id that is not stored."""

    error_type = "RunNotFound"


class RecordError(StoreError, RunError):
    """A record step failed; catchable in a stack by ``try_catch``."""

    error_type = "RecordError"


class RecordNotFound(RecordError, LookupError):
    """``edit`` named an id the table does not hold."""

    error_type = "RecordNotFound"


class DuplicateRecord(RecordError):
    """``add`` was given an id the table already holds."""

    error_type = "DuplicateRecord"


class InvalidName(RecordError, ValueError):
    """A table or field name is not an identifier (or is reserved)."""

    error_type = "InvalidName"


class InvalidFilter(RecordError, ValueError):
    """A filter, sort, limit or offset is malformed."""

    error_type = "InvalidFilter"


class InvalidRecord(RecordError, ValueError):
    """Record data that cannot be stored: a bad id, a value JSON cannot hold."""

    error_type = "InvalidRecord"


class WriteFailed(RecordError):
    """SQLite refused or could not commit a write (disk full, I/O error...)."""

    error_type = "WriteFailed"


class WriteOutcomeUnknown(RecordError):
    """The connection was lost while the database committed: the write may have been stored.

    (Raised by the PostgreSQL store: SQLite commits in-process, so it knows.)

    Not a ``WriteFailed``: the caller must not assume it failed (a blind retry
    of an add may store it twice); read back to find out. A ``RecordError``
    (catchable in a stack) for record steps, a ``StoreError`` for the engine.
    """

    error_type = "WriteOutcomeUnknown"


#: SQLite's words for a statement beyond its limits (expression depth, LIKE
#: pattern, bound variables, parser stack...): the query's shape, not the disk.
_TOO_BIG_STATEMENT = (
    "too large", "too complex", "too many sql variables", "too many terms",
    "too many arguments", "parser stack overflow",
)


def translate(
    exc: BaseException, what: str, *, record: bool = False, reading: bool = False
) -> CronstackError:
    """The cronstack error for ``exc``, raised while doing ``what``.

    Our own errors pass through; sqlite3 errors become store errors whose
    message keeps SQLite's text and says what to do; anything else is a defect.
    With ``record`` (a record step's call), a database error is always a
    ``RecordError``, so that a stack's ``try_catch`` can catch it; a statement
    SQLite finds too large or complex is then ``InvalidFilter`` (only a
    record call's filter makes statements grow). With ``reading`` (a read: a
    query, get or count), a failure is not a ``WriteFailed``: it is a
    ``RecordError`` (``StoreError`` without ``record``) saying SQLite could
    not read, and the advice fits the error rather than the disk.
    """
    err = _translate(exc, what, record, reading)
    if record and isinstance(exc, sqlite3.Error) and not isinstance(err, RunError):
        return RecordError(err.message, error_type=err.error_type)
    return err


def _advice(exc: sqlite3.Error, text: str) -> str:
    """What to do about a database error, from SQLite's result code."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "free disk space (SQLite also needs room for temporary files to sort)"
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return "make the database file and its directory writable by this process"
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return "check that the database file and its directory exist and that this process may use them"
    if name.startswith("SQLITE_IOERR") or "I/O error" in text:
        return "the disk or file system failed: check it, and that the database file is still in place"
    if name.startswith("SQLITE_NOMEM") or "out of memory" in text:
        return "the process ran out of memory: ask for less at once or give it more memory"
    if name.startswith("SQLITE_INTERRUPT"):
        return "the statement was interrupted: try again"
    return ""


def _translate(exc: BaseException, what: str, record: bool, reading: bool) -> CronstackError:
    if isinstance(exc, CronstackError):
        return exc
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        if "no such column" in text or "has no column named" in text:
            return RecordError(
                f"{what}: the table exists but was not created by cronstack ({text}); "
                "use another table name"
            )
        if isinstance(exc, sqlite3.DatabaseError) and (
            "malformed" in text or "not a database" in text
        ):
            return StoreCorrupt(
                f"{what}: SQLite reports the database damaged ({text}); "
                "restore it from a backup"
            )
        lower = text.lower()
        if any(words in lower for words in _TOO_BIG_STATEMENT):
            if record:
                return InvalidFilter(
                    f"{what}: the query is too large for SQLite ({text}); split it into "
                    "smaller queries: fewer $in values, fewer $and/$or terms, shorter patterns"
                )
            return StoreError(f"{what}: SQLite refused a statement as too large ({text})")
        failed: type[StoreError] = (RecordError if record else StoreError) if reading else WriteFailed
        if "locked" in text or "busy" in text:
            return failed(
                f"{what}: the database stayed locked by another connection ({text}); "
                "stop other programs writing to it"
            )
        advice = _advice(exc, text)
        if reading:
            return failed(
                f"{what}: SQLite could not read ({text}); "
                + (advice or "try again, and if it persists check the database file")
            )
        return failed(f"{what}: SQLite error: {text}; " + (advice or "check disk space and permissions"))
    return InternalError(
        f"{what}: unexpected {type(exc).__name__}: {exc}; please report this as a cronstack bug"
    )
