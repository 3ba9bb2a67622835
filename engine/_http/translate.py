"""Translates what aiohttp (or the socket under it) raised into the ``errors`` family.

The one place that knows aiohttp's exception tree; order matters because its
classes overlap (``ServerTimeoutError`` is both a ``TimeoutError`` and a
connection error, ``TooManyRedirects`` is a ``ClientResponseError``). Messages
name the method and the redacted URL, and never echo an exception's own text
where that text may contain the unredacted URL.
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from engine._http.errors import (
    HttpConnectionError,
    HttpDNSError,
    HttpError,
    HttpInvalidUrl,
    HttpNetworkError,
    HttpTimeout,
    HttpTLSError,
    HttpTooManyRedirects,
    InvalidResponse,
)
from engine._http.redact import redact_url
from runtime import InternalError

__all__ = ("translate",)


def translate(
    exc: Exception, verb: str, target: URL, client_timeout: aiohttp.ClientTimeout
) -> HttpError | InternalError:
    """The ``errors`` class for an exception aiohttp (or the socket) raised."""
    shown = redact_url(str(target))
    where = f"{verb} {shown}"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return HttpTooManyRedirects(
            f"{where}: more than the allowed redirects; check the URL, "
            "or pass follow_redirects=false to see the first redirect",
            method=verb,
            url=shown,
        )
    if isinstance(exc, aiohttp.RedirectClientError):
        return HttpInvalidUrl(
            f"{where}: the server redirected to {_bad_url(exc)}, which cannot be followed; "
            "only http(s) redirects are followed",
            method=verb,
            url=shown,
        )
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return HttpInvalidUrl(
            f"{where}: the URL {_bad_url(exc)} is not valid", method=verb, url=shown
        )
    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            # a new connection's own limit, or the attempt's while queued for a pooled one
            phase = (
                f"connecting (at most {client_timeout.sock_connect:g} s for a new connection, "
                f"{client_timeout.total:g} s in all)"
            )
        else:
            phase = f"waiting after {client_timeout.total:g} s"
        return HttpTimeout(
            f"{where}: timed out {phase}; the server is slow or "
            "unreachable (raise the step's timeout, or add retries)",
            method=verb,
            url=shown,
            timeout=client_timeout.total,
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return HttpDNSError(
            f"{where}: the host name {target.host!r} did not resolve; check the URL "
            "(an env variable may be unset)",
            method=verb,
            url=shown,
        )
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch, ssl.SSLError)):
        return HttpTLSError(
            f"{where}: TLS failed ({exc}); the server's certificate is not trusted "
            "or the server does not speak HTTPS on this port",
            method=verb,
            url=shown,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return HttpConnectionError(
            f"{where}: could not connect to {target.host}:{target.port} ({exc.os_error}); "
            "is the service up and the port right?",
            method=verb,
            url=shown,
        )
    if isinstance(
        exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
    ):
        return HttpConnectionError(
            f"{where}: the connection broke before a complete response "
            f"({type(exc).__name__}: {exc}); the server closed or reset it",
            method=verb,
            url=shown,
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return InvalidResponse(
            f"{where}: the server's answer is not valid HTTP ({exc.message})",
            method=verb,
            url=shown,
            status=None,  # no valid status line arrived (aiohttp's 400 is its parser's, not the server's)
            body=None,
        )
    if isinstance(exc, aiohttp.ClientError):
        return HttpNetworkError(
            f"{where}: request failed ({type(exc).__name__}: {exc})", method=verb, url=shown
        )
    return InternalError(
        f"{where}: unexpected {type(exc).__name__} while sending the request: {exc}; "
        "please report this as a cronstack bug"
    )


def _bad_url(exc: Exception) -> str:
    """The (redacted) URL an aiohttp URL error names: its text may hold secrets."""
    url = getattr(exc, "url", None) or (exc.args[0] if exc.args else "")
    description = getattr(exc, "description", None)
    shown = redact_url(str(url))
    return f"{shown} ({description})" if description else shown
