"""The admin API application: routes, middlewares (CORS, JSON errors, auth), start and stop.

Middlewares, outermost first: ``cors`` answers preflights and adds
``Access-Control-Allow-Origin`` for configured origins (errors included, so a
browser dashboard can read them); ``errors`` turns every failure into
``{"message": ...}`` with its status; ``auth`` checks the Bearer token with
``hmac.compare_digest``. Without a token the API answers only on loopback:
``start_api`` refuses any other address.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

from aiohttp import web

from engine._api.errors import ApiConfigError, ApiError
from engine._api.jsonio import json_response
from engine._api.metrics import METRICS, make_registry
from engine._api.routes import ENGINE, ROUTES
from runtime import CronstackError

__all__ = ("create_app", "start_api", "stop_api", "is_loopback", "MAX_BODY_BYTES")

log = logging.getLogger("cronstack.api")

#: the largest request body accepted (bytes); larger answers 413
MAX_BODY_BYTES = 1024 * 1024
_PUBLIC = frozenset(r.path for r in ROUTES if not r.auth)
_ALLOWED_HEADERS = "Authorization, Content-Type"
_ALLOWED_METHODS = "GET, POST, OPTIONS"
_TOKEN: web.AppKey[bytes | None] = web.AppKey("cronstack_token", object)  # type: ignore[arg-type]
_CORS: web.AppKey[frozenset[str]] = web.AppKey("cronstack_cors", frozenset)
_MAX_BODY: web.AppKey[int] = web.AppKey("cronstack_max_body", int)


def _route_status(request: web.Request) -> int | None:
    """The status aiohttp's router settled on (404/405) or None when a route matched."""
    exc = request.match_info.http_exception
    return None if exc is None else exc.status


def _origin_allowed(app: web.Application, origin: str | None) -> bool:
    allowed = app[_CORS]
    return origin is not None and (origin in allowed or "*" in allowed)


@web.middleware
async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    allowed = _origin_allowed(request.app, origin)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if _route_status(request) == 404:
            return _error(404, f"no route {request.path}; GET /api/openapi.json lists the routes")
        if not allowed:
            return _error(
                403,
                f"origin {origin!r} is not allowed; add it to [api] cors_origins in cronstack.toml",
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,  # type: ignore[dict-item]
                "Access-Control-Allow-Methods": _ALLOWED_METHODS,
                "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
    response = await handler(request)
    if allowed:
        response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
        response.headers["Vary"] = "Origin"
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"message": message}, status=status, headers=headers)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route {request.method} {request.path}; GET /api/openapi.json lists the routes"
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed on {request.path}; use {allow or 'another method'}"
    if exc.status == 413:
        return f"the request body is larger than the {request.app[_MAX_BODY]}-byte limit"
    return exc.text or exc.reason


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error(exc.status, _http_message(request, exc), headers)
    except LookupError as exc:
        if isinstance(exc, KeyError | IndexError):  # a defect, not an unknown name
            return _internal(request)
        return _error(404, str(exc.args[0] if exc.args else exc))  # engine.UnknownTask
    except CronstackError as exc:
        return _error(409, exc.message)
    except Exception:
        return _internal(request)


def _internal(request: web.Request) -> web.Response:
    log.exception("admin API: %s %s failed", request.method, request.path)
    return _error(500, f"internal error while serving {request.method} {request.path}; see the engine log")


@web.middleware
async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[_TOKEN]
    if token is None or (_route_status(request) is None and request.match_info.route.resource is not None
                         and request.match_info.route.resource.canonical in _PUBLIC):
        return await _limit_body(request, handler)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>' (the engine's CRONSTACK_TOKEN)",
            headers={"WWW-Authenticate": 'Bearer realm="cronstack"'},
        )
    if not hmac.compare_digest(given.strip().encode(), token):
        raise ApiError(403, "the bearer token is not valid for this engine")
    return await _limit_body(request, handler)


async def _limit_body(request: web.Request, handler: Any) -> web.StreamResponse:
    length = request.content_length
    if length is not None and length > request.app[_MAX_BODY]:
        raise web.HTTPRequestEntityTooLarge(max_size=request.app[_MAX_BODY], actual_size=length)
    return await handler(request)


def create_app(
    engine: Any,
    *,
    token: str | None,
    cors_origins: list[str] | tuple[str, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """The admin API for ``engine`` (an ``engine.Engine`` or anything with its facade).

    ``token``: the Bearer token every route but ``/healthz`` and
    ``/api/openapi.json`` requires; None disables the check (loopback only,
    which ``start_api`` enforces). ``cors_origins``: browser origins allowed to
    call the API (``"*"`` for any).
    """
    app = web.Application(middlewares=[cors, errors, auth], client_max_size=max_body_bytes)
    app[ENGINE] = engine
    app[_TOKEN] = token.encode() if token else None
    app[_CORS] = frozenset(cors_origins)
    app[_MAX_BODY] = max_body_bytes
    app[METRICS] = make_registry(engine)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    return app


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def start_api(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 7600,
    *,
    token: str | None,
    cors_origins: list[str] | tuple[str, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> tuple[web.AppRunner, int]:
    """Serve the admin API on ``host:port`` (0 = a free port); return the runner and the port.

    Stop it with ``await stop_api(runner)``. Refuses a non-loopback ``host``
    when there is no token: an open admin API could run any task.
    """
    if not token and not is_loopback(host):
        raise ApiConfigError(
            f"refusing to serve the admin API on {host}:{port} without a token; "
            "set CRONSTACK_TOKEN, or serve on 127.0.0.1"
        )
    app = create_app(engine, token=token, cors_origins=cors_origins, max_body_bytes=max_body_bytes)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ApiConfigError(
            f"cannot serve the admin API on {host}:{port}: {exc.strerror or exc}; "
            "choose another --port or stop what uses it"
        ) from exc
    actual = runner.addresses[0][1]
    if token:
        log.info("admin API on http://%s:%d (Bearer token required)", host, actual)
    else:
        log.warning(
            "admin API on http://%s:%d in loopback-only mode: no CRONSTACK_TOKEN set", host, actual
        )
    return runner, actual


async def stop_api(runner: web.AppRunner) -> None:
    """Close the listening socket and finish in-flight requests (5 s grace)."""
    await runner.cleanup()
