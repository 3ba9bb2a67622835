"""The admin HTTP API of a running engine (aiohttp): the seed's monitor endpoints, REST, metrics.

``start_api(engine, host, port, token=..., cors_origins=...)`` serves it and
returns ``(runner, port)``; ``stop_api(runner)`` stops it; ``create_app``
builds the application alone (for tests or to mount it elsewhere).
"""

from engine._api.app import MAX_BODY_BYTES, create_app, is_loopback, start_api, stop_api
from engine._api.errors import ApiConfigError, ApiError
from engine._api.metrics import DURATION_BUCKETS, DurationHistogram
from engine._api.openapi import build_openapi
from engine._api.routes import ROUTES

__all__ = (
    "DURATION_BUCKETS",
    "MAX_BODY_BYTES",
    "ROUTES",
    "ApiConfigError",
    "ApiError",
    "DurationHistogram",
    "build_openapi",
    "create_app",
    "is_loopback",
    "start_api",
    "stop_api",
)
