"""Outgoing HTTP for the ``external_api_request`` step: client, errors, redaction.

``HttpClient`` implements ``runtime.Http`` on one pooled aiohttp session per
engine; the error classes are what a stack's ``try_catch`` sees as
``error.type``; ``redact_url`` / ``redact_headers`` / ``redact_text`` mask
secrets before anything reaches a trace or a message.
"""

from engine._http.client import DEFAULT_MAX_RESPONSE_BYTES, MAX_RETRIES, HttpClient
from engine._http.errors import (
    ERROR_TYPES,
    HttpConnectionError,
    HttpDNSError,
    HttpError,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpNetworkError,
    HttpStatusError,
    HttpTimeout,
    HttpTLSError,
    HttpTooManyRedirects,
    InvalidResponse,
    ResponseTooLarge,
)
from engine._http.redact import redact_headers, redact_text, redact_url

__all__ = (
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ERROR_TYPES",
    "HttpClient",
    "HttpConnectionError",
    "HttpDNSError",
    "HttpError",
    "HttpInvalidRequest",
    "HttpInvalidUrl",
    "HttpNetworkError",
    "HttpStatusError",
    "HttpTLSError",
    "HttpTimeout",
    "HttpTooManyRedirects",
    "InvalidResponse",
    "MAX_RETRIES",
    "ResponseTooLarge",
    "redact_headers",
    "redact_text",
    "redact_url",
)
