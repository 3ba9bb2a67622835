"""A local aiohttp server whose endpoints misbehave on purpose, and a ledger of acknowledged ids.

Endpoints: ``/ok`` (JSON), ``/hang`` (never answers), ``/reset`` (drops the
connection), ``/500``, ``/429`` (with ``Retry-After``), ``/badjson`` (says JSON,
is not), ``/big`` (a body past any sane cap), ``/ack`` (records ``?id=`` in
``acked``: a task calls it only after its write returned, so every id here must
be in the database). Counters per path let a test check retries.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

__all__ = ("FaultServer", "fault_server")


class FaultServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.acked: list[str] = []
        self.url = ""
        self.big_bytes = 4 * 1024 * 1024

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_route("*", "/ok", self.ok)
        r.add_route("*", "/hang", self.hang)
        r.add_route("*", "/reset", self.reset)
        r.add_route("*", "/500", self.status500)
        r.add_route("*", "/429", self.status429)
        r.add_route("*", "/badjson", self.badjson)
        r.add_route("*", "/big", self.big)
        r.add_route("*", "/ack", self.ack)
        return app

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] += 1

    async def ok(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response({"ok": True})

    async def hang(self, request: web.Request) -> web.Response:
        self._hit(request)
        await asyncio.sleep(3600)
        return web.json_response({})

    async def reset(self, request: web.Request) -> web.Response:
        self._hit(request)
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.json_response({})

    async def status500(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response({"error": "boom"}, status=500)

    async def status429(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})

    async def badjson(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=b'{"half": ', content_type="application/json")

    async def big(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        return web.Response(body=b"x" * self.big_bytes, content_type="text/plain")

    async def ack(self, request: web.Request) -> web.Response:
        self._hit(request)
        self.acked.append(request.query.get("id", ""))
        return web.json_response({"acked": True})


@asynccontextmanager
async def fault_server(port: int = 0) -> AsyncIterator[FaultServer]:
    """Serve a ``FaultServer`` on 127.0.0.1 (a free port unless given)."""
    server = FaultServer()
    runner = web.AppRunner(server.app(), handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield server
    finally:
        await runner.cleanup()
