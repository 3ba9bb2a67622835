"""The package surface: ``__all__`` is complete and every store error sits in its family."""

from __future__ import annotations

import inspect

import engine._store as store_pkg
from engine._store import errors
from engine._store.base import Store
from engine._store.sqlite import SQLiteStore
from runtime import CronstackError, Records, RunError


def test_all_lists_every_public_name_and_only_real_ones():
    assert isinstance(store_pkg.__all__, tuple)
    for name in store_pkg.__all__:
        assert hasattr(store_pkg, name), name
    public_errors = {n for n in errors.__all__ if n != "translate"}
    assert public_errors <= set(store_pkg.__all__)


def test_error_families():
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, errors.StoreError) and issubclass(obj, CronstackError)
            assert obj.error_type == name
    for cls in (errors.RecordNotFound, errors.DuplicateRecord, errors.InvalidName,
                errors.InvalidFilter, errors.InvalidRecord, errors.WriteFailed):
        assert issubclass(cls, errors.RecordError) and issubclass(cls, RunError)
    assert not issubclass(errors.StoreLocked, RunError)


def test_sqlite_store_implements_the_whole_interface():
    assert not inspect.isabstract(SQLiteStore)
    assert issubclass(SQLiteStore, Store)
    for name in ("query", "get", "count", "add", "edit", "delete", "upsert", "delete_many",
                 "edit_many"):
        assert inspect.signature(getattr(SQLiteStore, name)) == inspect.signature(
            getattr(Records, name)
        ), name


def test_database_errors_in_record_calls_are_run_errors():
    import sqlite3

    from engine._store.errors import RecordError, StoreCorrupt, translate

    damaged = sqlite3.DatabaseError("database disk image is malformed")
    assert isinstance(translate(damaged, "reading"), StoreCorrupt)
    as_record = translate(damaged, "reading", record=True)
    assert isinstance(as_record, RecordError) and isinstance(as_record, RunError)
    assert as_record.error_type == "StoreCorrupt" and "backup" in as_record.message
