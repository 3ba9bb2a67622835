"""A store wrapper that injects failures, latency and crashes at seeded points.

``FaultStore`` wraps a real ``engine._store.Store`` and counts every call it
forwards. A ``FaultPlan`` decides, from a seeded ``random.Random``, which calls
fail (with the error the real store raises for that kind of failure), which
are delayed, and at which call the process "crashes": the committed state of
the database is copied at that instant with SQLite's backup API (run on the
writer thread, between batches, so it is exactly what a SIGKILL would have
left on disk), and from then on every write is refused, so nothing the dying
engine does afterwards reaches the snapshot. The test then reopens the
snapshot on the original path.

Install it with ``install(monkeypatch, plan)``: ``Engine.open`` then wraps
every store it opens.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine._store import RecordError, StoreError, WriteFailed

__all__ = ("FaultPlan", "FaultStore", "install", "RECORD_WRITES", "STATE_WRITES", "SimulatedCrash")

RECORD_WRITES = frozenset({"add", "edit", "delete", "upsert", "delete_many", "edit_many"})
RECORD_READS = frozenset({"query", "get", "count"})
STATE_WRITES = frozenset({
    "insert_run", "claim_fire", "claim_fires", "update_run", "finish_run", "claim_run", "add_trace",
    "set_task_state", "prune_history",
})
STATE_READS = frozenset({"get_run", "list_runs", "due_runs", "get_task_state", "last_runs",
                         "count_runs", "all_task_states", "get_trace"})
FORWARDED = RECORD_WRITES | RECORD_READS | STATE_WRITES | STATE_READS | {"recover_running"}

DISK_FULL = "database or disk is full"


class SimulatedCrash(StoreError):
    """The process this store belongs to has 'died': nothing more is written."""

    error_type = "SimulatedCrash"


@dataclass
class FaultPlan:
    """What to inject, drawn from ``seed``; every decision is logged in ``events``."""

    seed: int
    fail_rate: float = 0.0           # chance that an eligible call fails
    fail_ops: frozenset[str] = RECORD_WRITES | STATE_WRITES
    delay_rate: float = 0.0          # chance that a call is delayed first
    max_delay: float = 0.005         # real seconds
    crash_at: int | None = None      # the call number at which the process dies
    message: str = DISK_FULL         # SQLite's text for the injected failure
    rng: random.Random = field(init=False)
    calls: int = 0
    failures: int = 0
    delays: int = 0
    events: list[str] = field(default_factory=list)
    crashed: bool = False
    snapshot: str | None = None      # where the committed state was copied at the crash
    acked_records: list[tuple[str, Any]] = field(default_factory=list)
    acked_at_crash: list[tuple[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class FaultStore:
    """Forwards the ``Store`` interface to ``inner``, injecting what ``plan`` says."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self._inner = inner
        self.plan = plan
        self.url = inner.url
        self.path = getattr(inner, "path", None)

    def __getattr__(self, name: str) -> Any:
        inner = object.__getattribute__(self, "_inner")
        attr = getattr(inner, name)
        if name not in FORWARDED:
            return attr
        return self._wrap(name, attr)

    def _wrap(self, name: str, fn: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            plan = self.plan
            plan.calls += 1
            n = plan.calls
            if plan.crash_at is not None and n >= plan.crash_at and not plan.crashed:
                await self._crash(n, name)
            if plan.crashed and name in RECORD_WRITES | STATE_WRITES | {"recover_running"}:
                raise (RecordError if name in RECORD_WRITES else SimulatedCrash)(
                    f"{name}: the process has crashed (simulated); nothing more is written")
            if plan.delay_rate and plan.rng.random() < plan.delay_rate:
                plan.delays += 1
                await anyio.sleep(plan.rng.random() * plan.max_delay)
            if name in plan.fail_ops and plan.fail_rate and plan.rng.random() < plan.fail_rate:
                plan.failures += 1
                plan.events.append(f"#{n} {name}: {plan.message}")
                raise _error(name, plan.message)
            result = await fn(*args, **kwargs)
            if name == "add" and isinstance(result, dict):
                plan.acked_records.append((args[0], result.get("id")))
            return result

        return call

    async def _crash(self, n: int, name: str) -> None:
        """Copy the committed state now (as a SIGKILL would leave it), then refuse writes."""
        plan = self.plan
        plan.crashed = True
        plan.events.append(f"#{n} {name}: crash")
        plan.acked_at_crash = list(plan.acked_records)
        inner = self._inner
        target = inner.path + ".crash"
        plan.snapshot = target

        def backup() -> None:
            dest = sqlite3.connect(target)
            try:
                inner._conn.backup(dest)
            finally:
                dest.close()

        await inner._writer.call(backup)


def _error(name: str, message: str) -> Exception:
    """What the real store raises when SQLite fails that call with ``message``."""
    exc = sqlite3.OperationalError(message)
    if name in RECORD_WRITES or name in RECORD_READS:
        return RecordError(f"{name}: SQLite error: {exc}; check disk space and permissions",
                           error_type="WriteFailed")
    return WriteFailed(f"{name}: SQLite error: {exc}; check disk space and permissions")


def install(monkeypatch: Any, plan: FaultPlan) -> list[FaultStore]:
    """Make ``Engine.open`` wrap every store it opens in a ``FaultStore`` for ``plan``."""
    import engine._engine as engine_module

    real = engine_module.open_store
    opened: list[FaultStore] = []

    async def open_wrapped(url: str, **kwargs: Any) -> FaultStore:
        store = FaultStore(await real(url, **kwargs), plan)
        opened.append(store)
        return store

    monkeypatch.setattr(engine_module, "open_store", open_wrapped)
    return opened
