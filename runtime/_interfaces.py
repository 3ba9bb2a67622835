"""What a run needs from the outside world, declared by the runtime.

The VM never imports the engine: the engine (or a test) hands it objects that
satisfy these protocols. Every method is a coroutine unless said otherwise;
failures are raised as ``CronstackError`` subclasses so that a stack can catch
them by ``error.type``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = (
    "Records",
    "Http",
    "HttpResponse",
    "Functions",
    "Tracer",
    "Clock",
    "RunContext",
)


@runtime_checkable
class Records(Protocol):
    """Table storage for the record steps of SPEC section 3.

    Records are dicts with ``id``, ``created_at`` and ``updated_at`` plus free
    fields. ``filter`` is the filter language (``{"field": value}``,
    ``{"field": {"$gte": 3}}``, ``$and``/``$or``/``$not``); ``sort`` is a text
    like ``"priority desc, created_at asc"`` or a list of such parts.
    A table that was never written reads as empty.
    """

    async def query(
        self,
        table: str,
        *,
        filter: Mapping[str, Any] | None = None,
        sort: str | list[Any] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[dict[str, Any]]: ...

    async def get(
        self, table: str, *, id: Any = None, filter: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None: ...

    async def count(self, table: str, *, filter: Mapping[str, Any] | None = None) -> int: ...

    async def add(self, table: str, data: Mapping[str, Any]) -> dict[str, Any]: ...

    async def edit(self, table: str, id: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``data`` into the record; a missing id raises ``RecordNotFound``."""
        ...

    async def delete(self, table: str, id: Any) -> bool:
        """True when a record was deleted; a missing id is not an error."""
        ...

    async def upsert(
        self, table: str, data: Mapping[str, Any], identifier: str
    ) -> dict[str, Any]: ...

    async def delete_many(self, table: str, filter: Mapping[str, Any]) -> int: ...

    async def edit_many(
        self, table: str, filter: Mapping[str, Any], data: Mapping[str, Any]
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    #: decoded body: JSON value when the response says JSON, else text
    body: Any


class Http(Protocol):
    """Outgoing HTTP for ``external_api_request``.

    A status >= 400 raises an error whose extra fields carry ``status``,
    ``headers`` and ``body``; network failures raise distinct error types.
    """

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        body_format: str = "json",
        timeout: float = 30.0,
        retries: int = 0,
        follow_redirects: bool = True,
    ) -> HttpResponse: ...


class Functions(Protocol):
    """Calls of ``custom_function`` steps and of registered Python functions."""

    async def call(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """Run function ``name`` to its result, inside the calling run."""
        ...

    async def start(self, name: str, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """Start ``name`` as a separate durable run; return its run id at once."""
        ...


class Tracer(Protocol):
    """Receives one entry per executed step when request history is on."""

    def step(
        self,
        path: str,
        kind: str,
        started: float,
        duration: float,
        inputs: Any,
        output: Any,
        error: dict[str, Any] | None,
    ) -> None: ...

    def log(self, path: str, level: str, message: Any) -> None: ...


class Clock(Protocol):
    """Time as the run sees it: injectable so tests can run in virtual time."""

    def time(self) -> float:
        """Unix time in seconds."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """An awaitable that resumes after ``seconds`` (an ``async def`` method is one)."""
        ...


@dataclass(slots=True)
class RunContext:
    """Everything one run (or one function call inside it) can reach.

    ``task`` is the mapping stacks see as ``task`` (name, run_id, attempt,
    scheduled_at, trigger); ``depth`` counts nested function calls.
    """

    records: Records | None = None
    http: Http | None = None
    functions: Functions | None = None
    tracer: Tracer | None = None
    clock: Clock | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    depth: int = 0
