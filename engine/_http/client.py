"""``HttpClient``: the engine's outgoing HTTP, what ``external_api_request`` calls.

One pooled ``aiohttp.ClientSession`` per engine, created lazily inside the
running loop (a session must belong to the loop that uses it). Each request is
built by ``message``, sent, its body read under a size cap while it streams,
decoded, and every aiohttp failure is translated here, at the boundary, into
the ``errors`` family (``raise ... from``) so that a stack sees ``error.type``
strings and never a library traceback. ``CancelledError`` is never caught: a
run stopped by its timeout or by shutdown stops its request at once.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from engine._http import message
from engine._http.errors import (
    HttpError,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpStatusError,
    InvalidResponse,
    ResponseTooLarge,
)
from engine._http.redact import redact_headers, redact_url
from engine._http.retry import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    RETRY_STATUSES,
    backoff_delay,
    may_retry_method,
    parse_retry_after,
)
from engine._http.translate import translate
from runtime import HttpResponse, InternalError

__all__ = ("HttpClient", "DEFAULT_MAX_RESPONSE_BYTES", "MAX_RETRIES", "MAX_ERROR_TEXT")

#: Largest response body read by default (10 MiB, after decompression).
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
#: Most retries one request may ask for.
MAX_RETRIES = 10
#: Longest raw text an ``InvalidResponse`` error keeps (characters).
MAX_ERROR_TEXT = 2_000
#: Longest wait for a new connection (TCP and TLS) inside one attempt's timeout.
CONNECT_TIMEOUT = 10.0
#: Distinct step timeouts whose ``aiohttp.ClientTimeout`` is kept for reuse.
_TIMEOUT_CACHE_SIZE = 64
#: Distinct URL texts whose checked ``yarl.URL`` is kept for reuse.
_URL_CACHE_SIZE = 256

Sleep = Callable[[float], Awaitable[Any]]


class _PoolConnector(aiohttp.TCPConnector):
    """aiohttp's connector, waking a queued request only when a connection is still free.

    When a response ends, aiohttp frees its connection and at once wakes the
    next request queued for one. But the task whose response ended usually
    runs first and sends its next request on that same pooled connection, so
    the woken request finds no free slot and queues again. With 1,000 runs of
    sequential requests over 100 connections that was 0.8 useless wake-ups
    per request, each resuming the queued run's whole chain of coroutines
    (run, VM, step, client, aiohttp) only to suspend it again. Here the wake
    waits until the tasks woken by the same I/O have run (two turns of the
    loop's ready queue), then wakes one queued request per freed connection
    that is still free. Who gets a connection, in what order, and the limits
    are aiohttp's own; only wake-ups that could not succeed are skipped.
    """

    _pending_wakes = 0
    _wake_scheduled = False

    def _release_waiter(self) -> None:
        if not self._waiters:
            return
        self._pending_wakes += 1
        if not self._wake_scheduled:
            self._wake_scheduled = True
            loop = self._loop
            loop.call_soon(loop.call_soon, self._wake_waiters)

    def _wake_waiters(self) -> None:
        self._wake_scheduled = False
        pending, self._pending_wakes = self._pending_wakes, 0
        if self._closed:
            return
        # a woken request has not taken its slot yet: never wake more than are free
        free = self._limit - len(self._acquired) if self._limit else pending
        for _ in range(min(pending, free)):
            super()._release_waiter()


class HttpClient:
    """Outgoing HTTP implementing ``runtime.Http``; share one per engine.

    ``limit`` and ``limit_per_host`` bound pooled connections (all hosts / one
    host); ``max_response_bytes`` caps each body; ``max_redirects`` bounds
    redirect chains; ``sleep`` waits between retries (inject a recorder in
    tests); ``rng`` draws the backoff jitter; ``retry_after_cap`` bounds a
    server's ``Retry-After``; ``ssl`` is passed to aiohttp (False disables
    verification, for test servers only); ``resolver`` replaces DNS resolution
    (an aiohttp resolver: pinning, or refusing private addresses). Use ``async with HttpClient() as
    http`` or call ``await http.close()``; a closed client reopens on next use.
    """

    def __init__(
        self,
        *,
        limit: int = 100,
        limit_per_host: int = 20,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_redirects: int = 10,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        retry_after_cap: float = BACKOFF_CAP,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        user_agent: str = "cronstack/0.1",
        ssl: ssl.SSLContext | bool = True,
        trust_env: bool = False,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        if limit < 0 or limit_per_host < 0:
            raise ValueError("limit and limit_per_host must be >= 0 (0 means unbounded)")
        if max_response_bytes <= 0 or max_redirects < 0:
            raise ValueError("max_response_bytes must be > 0 and max_redirects >= 0")
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._max_bytes = max_response_bytes
        self._max_redirects = max_redirects
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._rng = rng
        self._user_agent = user_agent
        self._ssl = ssl
        self._trust_env = trust_env
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> HttpClient:
        self._get_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections; safe to call twice."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None and not session.closed:
            if self._loop is not loop:
                raise InternalError(
                    "this HttpClient was opened on another event loop; "
                    "create one HttpClient per engine and loop, and close it before the loop ends"
                )
            return session
        connector = _PoolConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            ssl=self._ssl,
            resolver=self._resolver,
        )
        # A dummy cookie jar: runs of different tasks must never share cookies.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self._user_agent},
            trust_env=self._trust_env,
        )
        self._loop = loop
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        body_format: str = "json",
        timeout: float = 30.0,  # noqa: ASYNC109 -- per attempt, part of runtime.Http
        retries: int = 0,
        follow_redirects: bool = True,
        retry_non_idempotent: bool = False,
    ) -> HttpResponse:
        """Send one request (retried up to ``retries`` times) and decode its answer.

        Returns the response for statuses < 400 (a 3xx too when
        ``follow_redirects`` is false); raises ``HttpStatusError`` for >= 400
        and the other ``errors`` classes for every other failure.
        ``timeout`` applies to each attempt.
        """
        verb = method.strip().upper() if isinstance(method, str) else method
        try:
            if verb not in message.METHODS:
                raise message.BadValue(
                    f"{verb!r:.40} is not an HTTP method this step can send; "
                    f"use one of {', '.join(sorted(message.METHODS))}"
                )
            target = self._urls.get(url) if isinstance(url, str) else None
            if target is None:
                target = self._checked_url(url)
            if query:
                target = message.add_query(target, query)
            hdrs = message.build_headers(headers)
            payload, content_type = message.encode_body(verb, body, body_format)
        except message.BadValue as exc:
            # The URL is redacted only on this error path: it costs a parse per call.
            shown_url = redact_url(url) if isinstance(url, str) else repr(url)[:200]
            cls = HttpInvalidUrl if isinstance(exc, message.BadUrl) else HttpInvalidRequest
            raise cls(f"{verb} {shown_url}: {exc}", method=str(verb), url=shown_url) from exc
        if content_type is not None and not message.has_header(hdrs, "Content-Type"):
            hdrs["Content-Type"] = content_type
        given = timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            timeout = math.nan
        if not (0 < timeout < math.inf):
            shown_url = redact_url(str(target))
            raise HttpInvalidRequest(
                f"{verb} {shown_url}: timeout must be a positive number of seconds, got {given!r:.40}",
                method=verb,
                url=shown_url,
            )
        if (
            isinstance(retries, bool)
            or not isinstance(retries, int)
            or not 0 <= retries <= MAX_RETRIES
        ):
            shown_url = redact_url(str(target))
            raise HttpInvalidRequest(
                f"{verb} {shown_url}: retries must be a whole number from 0 to {MAX_RETRIES}, "
                f"got {retries!r:.40}",
                method=verb,
                url=shown_url,
            )
        client_timeout = self._timeouts.get(timeout) or self._client_timeout(timeout)
        can_retry = retries > 0 and may_retry_method(verb, retry_non_idempotent)
        attempt = 0
        # The attempt is written out here rather than in a helper coroutine, and the
        # response is awaited rather than entered with ``async with``: every time the
        # request's task wakes (a pooled connection freed, the answer arriving) Python
        # resumes each coroutine frame between the task and aiohttp, and a run already
        # stacks several (run task, VM, step handler) on top of this one.
        while True:
            attempt += 1
            try:
                session = self._get_session()
                try:
                    resp = await session.request(
                        verb,
                        target,
                        headers=hdrs,
                        data=payload,
                        timeout=client_timeout,
                        allow_redirects=follow_redirects,
                        max_redirects=self._max_redirects,
                    )
                    try:
                        length = resp.content_length
                        if (
                            length is not None
                            and length <= self._max_bytes
                            and verb != "HEAD"
                            and resp.headers.get("Content-Encoding", "identity").lower()
                            == "identity"
                        ):
                            raw = await resp.read()  # declared, uncompressed, within the cap
                        else:
                            raw = await self._read_body(resp, verb, target)
                        status = resp.status
                        reason = resp.reason or ""
                        mimetype = resp.content_type
                        charset = resp.charset
                        response_headers: dict[str, str] = {}
                        for name, value in resp.headers.items():
                            key = name.lower()
                            if key in response_headers:
                                response_headers[key] = f"{response_headers[key]}, {value}"
                            else:
                                response_headers[key] = value
                    finally:
                        # what ``async with`` on the response does on the way out
                        resp.release()
                        await resp.wait_for_close()
                except HttpError:
                    raise
                except Exception as exc:
                    raise translate(exc, verb, target, client_timeout) from exc
                return self._response(verb, target, status, reason, response_headers, raw, mimetype, charset)
            except HttpError as exc:
                delay = (
                    self._retry_delay(exc, attempt) if can_retry and attempt <= retries else None
                )
                if delay is None:
                    if attempt > 1:
                        exc.message = f"{exc.message} (gave up after {attempt} attempts)"
                        exc.args = (exc.message,)
                        exc.extra["attempts"] = attempt
                    raise
            await self._sleep(delay)

    def _checked_url(self, url: Any) -> URL:
        """``url`` parsed and checked (``message.build_url``), kept for the next request.

        A stack calls the same few endpoints over and over: the checked
        ``yarl.URL`` (immutable) is kept per URL text, so a repeated call skips
        the parse and the scheme and host checks. Only valid URLs are kept; the
        cache is emptied when it is full (a stack building URLs from data).
        """
        target = message.build_url(url, None)
        if isinstance(url, str):
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[url] = target
        return target

    def _client_timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        """The aiohttp timeout of one attempt, built once per distinct step timeout.

        ``total`` bounds the whole attempt, the wait for a free pooled
        connection included; ``sock_connect`` bounds opening a new connection
        (TCP and TLS). Not ``connect``: aiohttp starts that timer around the
        wait for a pool slot as well, so under load (more runs than pooled
        connections) a request queued for 10 s failed as "timed out
        connecting" to a healthy server, and every queued request paid for a
        timer. A ``ClientTimeout`` is immutable, so one object serves every
        request with the same timeout.
        """
        cached = self._timeouts.get(seconds)
        if cached is None:
            if len(self._timeouts) >= _TIMEOUT_CACHE_SIZE:
                self._timeouts.clear()
            cached = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=seconds, sock_connect=min(seconds, CONNECT_TIMEOUT)
            )
        return cached

    def _retry_delay(self, exc: HttpError, attempt: int) -> float | None:
        """Seconds to wait before retrying after ``exc``, or None to give up."""
        if isinstance(exc, HttpStatusError):
            if exc.status not in RETRY_STATUSES:
                return None
            headers = exc.extra.get("headers") or {}
            asked = parse_retry_after(headers.get("retry-after"))
            if asked is not None:
                return min(asked, self._retry_after_cap)
        elif not exc.retryable:
            return None
        return backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)

    def _response(
        self,
        verb: str,
        target: URL,
        status: int,
        reason: str,
        headers: dict[str, str],
        raw: bytes,
        mimetype: str,
        charset: str | None,
    ) -> HttpResponse:
        """The decoded answer of one attempt, or the error a stack sees for it."""
        try:
            decoded = message.decode_body(raw, mimetype, charset)
        except message.BadJson as exc:
            if status < 400:
                shown = redact_url(str(target))
                raise InvalidResponse(
                    f"{verb} {shown} answered {status} with a {mimetype} body that is not "
                    f"valid JSON ({exc}); the raw text is in error.body",
                    method=verb,
                    url=shown,
                    status=status,
                    headers=redact_headers(headers),
                    body=exc.text[:MAX_ERROR_TEXT],
                ) from exc
            decoded = exc.text  # an error page that claims JSON: keep it as text
        if status >= 400:
            shown = redact_url(str(target))
            raise HttpStatusError(
                f"{verb} {shown} answered HTTP {status} {reason}".rstrip()
                + "; the response is in error.status and error.body",
                method=verb,
                url=shown,
                status=status,
                headers=redact_headers(headers),
                body=decoded,
            )
        return HttpResponse(status, headers, decoded)

    async def _read_body(self, resp: aiohttp.ClientResponse, verb: str, target: URL) -> bytes:
        """The body, refused as soon as it is known to exceed ``max_response_bytes``."""
        limit = self._max_bytes
        length = resp.content_length
        if length is not None and length > limit:
            resp.close()
            raise self._too_large(verb, target, resp.status, f"declares {length:,} bytes")
        if verb == "HEAD":
            return b""
        encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
        if length is not None and not encoded:
            return await resp.read()
        # Unknown or compressed length: count decompressed bytes as they stream.
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                resp.close()
                raise self._too_large(verb, target, resp.status, f"passed {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, verb: str, target: URL, status: int, what: str) -> ResponseTooLarge:
        shown = redact_url(str(target))
        return ResponseTooLarge(
            f"{verb} {shown}: the response body {what}, over the limit of "
            f"{self._max_bytes:,} bytes; ask the API for less (paging, filters) "
            "or raise max_response_bytes",
            method=verb,
            url=shown,
            status=status,
            limit=self._max_bytes,
        )
