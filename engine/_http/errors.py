"""The errors an ``external_api_request`` step can raise, one class per cause.

Every class is a ``RunError`` so that a stack's ``try_catch`` sees it as an
``error`` object; ``error_type`` is the ``error.type`` a stack can branch on.
A status >= 400 is ``"HttpError"`` (with ``error.status``, ``error.headers``,
``error.body``); each network failure has its own type so that an alert can
tell "the CRM is down" from "the CRM said no".

None of these subclass the builtin ``TimeoutError`` or ``ConnectionError`` on
purpose: the engine stops a run that outlives its ``timeout`` with
``asyncio.timeout``/``except TimeoutError``, and an HTTP timeout inside a step
must not be mistaken for the run's own timeout.

Every error carries ``method`` and ``url`` (redacted) in ``extra`` and names
both in its message.
"""

from __future__ import annotations

from typing import Any

from runtime import RunError

__all__ = (
    "HttpError",
    "HttpStatusError",
    "HttpNetworkError",
    "HttpConnectionError",
    "HttpDNSError",
    "HttpTLSError",
    "HttpTimeout",
    "HttpTooManyRedirects",
    "HttpInvalidUrl",
    "HttpInvalidRequest",
    "ResponseTooLarge",
    "InvalidResponse",
    "ERROR_TYPES",
)


class HttpError(RunError):
    """Root of the HTTP family; also the ``error.type`` of a status >= 400.

    ``retryable`` says whether ``retries=N`` may try the request again after
    this error (status errors decide by their status instead).
    """

    error_type = "HttpError"
    retryable = False

    def __init__(self, message: str, *, method: str, url: str, **extra: Any) -> None:
        super().__init__(message, method=method, url=url, **extra)


class HttpStatusError(HttpError):
    """The server answered with a status >= 400.

    ``extra`` holds ``status``, ``headers`` (lower-cased names, secrets
    redacted) and ``body`` (decoded like a successful response's body).
    """

    error_type = "HttpError"

    @property
    def status(self) -> int:
        return int(self.extra["status"])


class HttpNetworkError(HttpError):
    """The exchange failed below HTTP; the specific causes subclass this."""

    error_type = "HttpNetworkError"
    retryable = True


class HttpConnectionError(HttpNetworkError):
    """Connection refused, reset, or closed by the server mid-response."""

    error_type = "HttpConnectionError"


class HttpDNSError(HttpConnectionError):
    """The host name did not resolve (retried: resolvers fail transiently)."""

    error_type = "HttpDNSError"


class HttpTLSError(HttpConnectionError):
    """TLS handshake or certificate verification failed (never retried)."""

    error_type = "HttpTLSError"
    retryable = False


class HttpTimeout(HttpNetworkError):
    """No complete response within the step's ``timeout`` (per attempt)."""

    error_type = "HttpTimeout"


class HttpTooManyRedirects(HttpError):
    """Redirects went on past the client's ``max_redirects``."""

    error_type = "HttpTooManyRedirects"


class HttpInvalidUrl(HttpError):
    """The URL (or a redirect's ``Location``) is not an absolute http(s) URL."""

    error_type = "HttpInvalidUrl"


class HttpInvalidRequest(HttpError):
    """The step asked for something that cannot be sent (method, body, header)."""

    error_type = "HttpInvalidRequest"


class ResponseTooLarge(HttpError):
    """The response body grew past ``max_response_bytes``; ``extra.limit`` says how far."""

    error_type = "HttpResponseTooLarge"


class InvalidResponse(HttpError):
    """The response says JSON but is not, or is not valid HTTP at all.

    ``extra`` holds ``status`` and ``body``: the raw text, cut to a bounded
    length so that a broken endpoint cannot flood the run's history.
    """

    error_type = "HttpInvalidResponse"


#: ``error.type`` strings a stack may see from an ``external_api_request`` step.
ERROR_TYPES: tuple[str, ...] = tuple(
    dict.fromkeys(
        cls.error_type
        for cls in (
            HttpStatusError,
            HttpNetworkError,
            HttpConnectionError,
            HttpDNSError,
            HttpTLSError,
            HttpTimeout,
            HttpTooManyRedirects,
            HttpInvalidUrl,
            HttpInvalidRequest,
            ResponseTooLarge,
            InvalidResponse,
        )
    )
)
