"""The store interface every backend implements (SQLite today).

One object serves both sides of the engine: it *is* a ``runtime.Records``
(the record steps of a run) and it keeps the engine's own state (runs,
traces, schedule state). Every method is a coroutine. A write is committed
(durable) when its coroutine returns, and visible to any read issued after.
The contract test suite in ``tests/test_store_contract.py`` is the executable
form of this page; a new backend passes it unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

from engine._store import codec

__all__ = ("Store",)


class Store(abc.ABC):
    """Records plus engine state, on one database."""

    #: the URL the store was opened with
    url: str

    # -- records (runtime.Records) -------------------------------------------

    @abc.abstractmethod
    async def query(
        self,
        table: str,
        *,
        filter: Mapping[str, Any] | None = None,
        sort: str | list[Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching ``filter`` in ``sort`` order (insertion order on ties)."""

    @abc.abstractmethod
    async def get(
        self, table: str, *, id: Any = None, filter: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The record with ``id``, else the first matching ``filter``; None if none."""

    @abc.abstractmethod
    async def count(self, table: str, *, filter: Mapping[str, Any] | None = None) -> int:
        """How many records match."""

    @abc.abstractmethod
    async def add(self, table: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Insert; the full record (with id, created_at, updated_at) is returned."""

    @abc.abstractmethod
    async def edit(self, table: str, id: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``data`` into record ``id``; ``RecordNotFound`` if missing."""

    @abc.abstractmethod
    async def delete(self, table: str, id: Any) -> bool:
        """True when a record was deleted; a missing id returns False."""

    @abc.abstractmethod
    async def upsert(self, table: str, data: Mapping[str, Any], identifier: str) -> dict[str, Any]:
        """Merge into the first record whose ``identifier`` equals data's, else insert."""

    @abc.abstractmethod
    async def delete_many(self, table: str, filter: Mapping[str, Any]) -> int:
        """Delete every matching record; the count deleted."""

    @abc.abstractmethod
    async def edit_many(
        self, table: str, filter: Mapping[str, Any], data: Mapping[str, Any]
    ) -> int:
        """Shallow-merge ``data`` into every matching record; the count edited."""

    # -- runs -----------------------------------------------------------------

    @abc.abstractmethod
    async def insert_run(self, row: dict[str, Any]) -> None:
        """Store a new run (``id`` and ``task`` required; see docs/store.md for defaults)."""

    @abc.abstractmethod
    async def claim_fire(self, task: str, scheduled_at: float, run_row: dict[str, Any]) -> bool:
        """Insert the run of a scheduled fire unless that fire already has one."""

    async def claim_fires(self, rows: list[dict[str, Any]]) -> list[bool]:
        """``claim_fire`` for every row of a wave (each has ``task`` and ``scheduled_at``), in one write.

        Per row, whether its fire was new. The scheduler claims the fires due
        at one instant this way: one durable write instead of one per task.
        This default claims them one by one; a backend overrides it with one
        transaction.
        """
        return [await self.claim_fire(r["task"], r["scheduled_at"], r) for r in rows]

    @abc.abstractmethod
    async def update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        """Set ``fields`` of run ``run_id``; ``RunNotFound`` if it is not stored."""

    async def finish_run(
        self, run_id: str, fields: dict[str, Any], trace: str | list[dict[str, Any]] | None = None
    ) -> None:
        """A run's outcome (``update_run``) and its trace entries (``add_trace``), as one write.

        ``trace`` is the entries, or their JSON text (a list) as
        ``RunTrace.export_json`` makes it: the engine hands over the text it
        encoded in one pass, which a backend stores as it is.
        ``RunNotFound`` (and no trace) if the run is not stored. This default
        makes two writes; a backend overrides it with one transaction, so
        that finishing a run costs one commit.
        """
        await self.update_run(run_id, fields)
        if trace:
            await self.add_trace(run_id, codec.decode(trace) if isinstance(trace, str) else trace)

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run row (JSON columns decoded), or None."""

    @abc.abstractmethod
    async def list_runs(
        self,
        task: str | None = None,
        *,
        status: str | Iterable[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        by: str = "created_at",
    ) -> list[dict[str, Any]]:
        """Runs by creation time (``by="executed_at"``: by start time, else scheduled
        time), optionally of one task and some statuses."""

    @abc.abstractmethod
    async def count_runs(
        self, task: str | None = None, status: str | Iterable[str] | None = None
    ) -> int:
        """How many runs match."""

    @abc.abstractmethod
    async def due_runs(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """Queued runs with ``not_before <= now``, oldest ``not_before`` first."""

    @abc.abstractmethod
    async def claim_run(self, run_id: str, engine_id: str, started_at: float) -> bool:
        """Atomically move a queued run to running; False if it was not queued."""

    async def cancel_queued(self, run_id: str, finished_at: float, error: dict[str, Any]) -> bool:
        """Atomically move a queued run to ``cancelled``; False if it was not queued.

        One conditional write (``claim_run``'s condition): the row gets
        ``status = 'cancelled'``, no ``started_at``, ``finished_at`` and
        ``error``. A run claimed meanwhile (by this engine's queue or another
        engine) is left as it is. Both backends override this default, which
        makes two writes (a claim, then the outcome): a crash between them
        leaves the run ``running`` until recovery marks it crashed.
        """
        if not await self.claim_run(run_id, "", finished_at):
            return False
        await self.update_run(run_id, {"status": "cancelled", "started_at": None,
                                       "finished_at": finished_at, "error": error})
        return True

    async def claim_fires_checked(
        self, rows: list[dict[str, Any]], limits: list[int | None]
    ) -> list[str]:
        """``claim_fires`` that also reads, in the same transaction, the task's stored state.

        For engines sharing a database, whose in-memory view of a task covers
        only their own runs. Per row, in order:

        - ``"paused"``: the task's stored state is paused; nothing is stored.
        - ``"taken"``: the fire already has a row (another engine's); nothing stored.
        - ``"skipped"``: ``limits[i]`` is a number and at least that many runs of
          the task are ``running`` in the store (any engine's): the row is stored
          with ``status = 'skipped'``, no ``started_at``, ``finished_at`` now
          and a ``Skipped`` error, instead of as given.
        - ``"claimed"``: the row is stored as given (a ``running`` one then
          counts for the following rows of its task).

        ``limits[i]`` None: no count (the row is claimed as ``claim_fires``
        would). Claims of different engines are serialised (PostgreSQL: a
        transaction-level advisory lock), so two of them cannot both count a
        task idle. SQLite implements it as one write too (one engine per file
        needs it only for the contract: its engine decides from memory).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement claim_fires_checked")

    @abc.abstractmethod
    async def recover_running(self, engine_id: str) -> list[dict[str, Any]]:
        """Mark runs left running by another (dead) engine crashed; return them."""

    @abc.abstractmethod
    async def last_runs(self) -> dict[str, dict[str, Any]]:
        """The most recently created run of every task."""

    # -- engines sharing one database (additive: backends that share override) --

    #: whether several engines may serve one database at once (PostgreSQL). The
    #: engine then checks periodically for runs left ``running`` by engines that
    #: died (``recover_running``), not only when it starts.
    shared: bool = False

    async def register_engine(self, engine_id: str) -> None:
        """Mark engine ``engine_id`` alive on this store until ``close``.

        An engine calls it once, before it claims any run. On a shared
        database ``recover_running`` never takes the runs of an engine that is
        registered and alive (PostgreSQL: a session-level advisory lock, see
        docs/store.md). SQLite needs nothing: one engine owns the file, under
        its file lock. This default does nothing.
        """
        return None

    # -- traces, schedule state, retention ------------------------------------

    @abc.abstractmethod
    async def add_trace(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        """Append trace entries (path, kind, started, duration, inputs, output, error)."""

    @abc.abstractmethod
    async def get_trace(self, run_id: str) -> list[dict[str, Any]]:
        """Every entry of the run's trace, in the order added."""

    @abc.abstractmethod
    async def get_task_state(self, task: str) -> dict[str, Any] | None:
        """``{task, last_fire, paused, updated_at, ...extra}`` or None."""

    @abc.abstractmethod
    async def all_task_states(self) -> dict[str, dict[str, Any]]:
        """Every task's state, by task name."""

    @abc.abstractmethod
    async def set_task_state(self, task: str, **fields: Any) -> None:
        """Merge ``fields`` (``last_fire``, ``paused``, or any JSON extra) into the state."""

    @abc.abstractmethod
    async def prune_history(self, task: str | None, before: float) -> int:
        """Delete finished runs (and their traces) created before ``before``; the count."""

    # -- lifetime -------------------------------------------------------------

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit pending writes, close connections, release the lock."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
