"""Errors of the admin API: one that becomes an HTTP answer, one that refuses to start."""

from __future__ import annotations

from typing import Any

from runtime import CronstackError

__all__ = ("ApiError", "ApiConfigError")


class ApiError(CronstackError):
    """A request the API answers with ``status`` and ``{"message": ...}``.

    Raised by handlers; the error middleware turns it into the JSON response.
    ``headers`` are added to that response (``WWW-Authenticate`` on a 401).
    """

    error_type = "ApiError"

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.status = status
        self.headers = headers or {}


class ApiConfigError(CronstackError, ValueError):
    """The API cannot start as configured (e.g. a public address without a token)."""

    error_type = "ApiConfigError"
