"""asyncpg's exceptions become the project's store errors (``errors.py``); none leaks.

Connection failures name the server and say what to check; SQL errors are
classified by SQLSTATE. ``record`` and ``reading`` mean what they mean for
``errors.translate``: a record step's failure is a ``RecordError`` (catchable
in a stack), a read is never ``WriteFailed``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncpg

from engine._store.errors import (
    InvalidFilter,
    InvalidRecord,
    RecordError,
    StoreError,
    WriteFailed,
    WriteOutcomeUnknown,
)
from runtime import CronstackError, InternalError

__all__ = ("translate_pg", "connect_error", "is_pg_error", "commit_error")


def is_pg_error(exc: BaseException) -> bool:
    return isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError))


def connect_error(exc: BaseException, where: str) -> StoreError:
    """The error for a failed connection to ``where`` (host, port and database, never the password)."""
    if isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        return StoreError(f"PostgreSQL at {where} refused the login ({exc}); check the user and password in the URL")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreError(f"PostgreSQL at {where}: {exc}; create the database first (cronstack never creates databases)")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StoreError(f"PostgreSQL at {where}: {exc}; grant this user access to the database")
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return StoreError(f"PostgreSQL at {where} has no connection left ({exc}); raise max_connections or close some")
    if isinstance(exc, socket.gaierror):
        return StoreError(f"PostgreSQL at {where}: the host name does not resolve ({exc}); check the URL")
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError)):
        return StoreError(
            f"PostgreSQL at {where} is unreachable ({type(exc).__name__}: {exc}); check that the server runs "
            "and that the host and port in the URL are right"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(f"PostgreSQL at {where} refused the connection: {exc}")
    if isinstance(exc, asyncpg.InterfaceError):
        return StoreError(f"database URL for {where}: {exc}")
    return InternalError(f"connecting to {where}: unexpected {type(exc).__name__}: {exc}; please report this as a cronstack bug")


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the session ended (or its reply was lost), not that a statement was refused."""
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", "") or ""
        return code.startswith(("08", "57P"))
    return isinstance(exc, (asyncpg.InterfaceError, OSError, asyncio.TimeoutError, ConnectionError))


async def roll_back(conn: Any, tr: Any) -> None:
    """Roll ``tr`` back after a failure inside it, unless its connection is already gone
    (then nothing of the transaction stayed, and a rollback would only raise again)."""
    if not conn.is_closed():
        try:
            await tr.rollback()
        except Exception:  # the connection went meanwhile: nothing stays of it
            pass


def commit_error(exc: BaseException, what: str, *, record: bool = False) -> CronstackError:
    """The error for ``exc`` raised by COMMIT. A refused commit (a conflict, a deferred check) is a
    failure, translated as any; a lost connection is ``WriteOutcomeUnknown``: the server may have
    committed before the session ended (a failover while COMMIT waited for a synchronous standby,
    the reply lost on the network), so the caller must not take the write as not done."""
    if isinstance(exc, CronstackError) or not _connection_lost(exc):
        return translate_pg(exc, what, record=record)
    return WriteOutcomeUnknown(
        f"{what}: the connection to PostgreSQL was lost while the transaction committed "
        f"({type(exc).__name__}: {exc}); the write may or may not be stored: read it back before "
        "writing it again (the store reconnects on the next call)")


def translate_pg(exc: BaseException, what: str, *, record: bool = False, reading: bool = False) -> CronstackError:
    if isinstance(exc, CronstackError):
        return exc
    failed: type[StoreError] = (RecordError if record else StoreError) if reading else (
        WriteFailed if record else StoreError)
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", "") or ""
        text = str(exc)
        if code == "42703":
            return (RecordError if record else StoreError)(
                f"{what}: the table exists but was not created by cronstack ({text}); use another table name")
        if code in ("22P05", "22021", "22P02") and record and not reading:
            return InvalidRecord(f"{what}: PostgreSQL cannot store this value ({text})")
        if code == "54000" or code.startswith("54"):
            if record and reading:
                return InvalidFilter(f"{what}: the query is too large for PostgreSQL ({text}); split it into smaller queries")
            return failed(f"{what}: PostgreSQL refused a statement as too large ({text})")
        if code.startswith("53"):
            return failed(f"{what}: the PostgreSQL server is out of resources ({text}); free disk space or memory on it")
        if code.startswith("08") or code.startswith("57"):
            return failed(f"{what}: the PostgreSQL server went away or cancelled the statement ({text}); try again")
        if code in ("40001", "40P01"):
            return failed(f"{what}: PostgreSQL aborted the transaction to resolve a conflict ({text}); try again")
        if code == "25006":
            return failed(f"{what}: the PostgreSQL server is read-only ({text}); connect to the primary")
        return failed(f"{what}: PostgreSQL error {code}: {text}")
    if isinstance(exc, (asyncpg.InterfaceError, OSError, asyncio.TimeoutError)):
        return failed(f"{what}: lost the connection to PostgreSQL ({type(exc).__name__}: {exc}); "
                      "check that the server runs; the store reconnects on the next call")
    return InternalError(f"{what}: unexpected {type(exc).__name__}: {exc}; please report this as a cronstack bug")
