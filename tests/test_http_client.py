"""HttpClient against a real aiohttp server on 127.0.0.1 (random port), no other traffic.

Each test starts the server below; its handlers play the endpoints a stack
meets in the wild: JSON and text APIs, echoes, slow and hanging servers,
resets, error statuses, rate limits with Retry-After, broken JSON, huge and
compressed bodies, redirects and cookies.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from engine._http import (
    HttpClient,
    HttpConnectionError,
    HttpDNSError,
    HttpError,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpStatusError,
    HttpTimeout,
    HttpTLSError,
    HttpTooManyRedirects,
    InvalidResponse,
    ResponseTooLarge,
)
from engine._http.translate import translate
from runtime import HttpResponse, RunError

pytestmark = pytest.mark.anyio


class Recorder:
    """An injected ``sleep`` that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _app(state: dict) -> web.Application:
    routes = web.RouteTableDef()

    @routes.route("*", "/echo")
    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": [[k, v] for k, v in request.query.items()],
                "headers": dict(request.headers),
                "body": raw.decode("utf-8", "replace"),
                "has_body": bool(raw),
            }
        )

    @routes.get("/text")
    async def text(request: web.Request) -> web.Response:
        return web.Response(
            body="café".encode("latin-1"), content_type="text/plain", charset="latin-1"
        )

    @routes.get("/weird-charset")
    async def weird_charset(request: web.Request) -> web.Response:
        return web.Response(
            body="ok é".encode(), headers={"Content-Type": "text/plain; charset=no-such-codec"}
        )

    @routes.get("/problem")
    async def problem(request: web.Request) -> web.Response:
        return web.Response(text='{"title": "nope"}', content_type="application/problem+json")

    @routes.get("/empty")
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200, content_type="application/json")

    @routes.get("/no-content")
    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    @routes.get("/multi-header")
    async def multi_header(request: web.Request) -> web.Response:
        resp = web.json_response({})
        resp.headers.add("X-Thing", "a")
        resp.headers.add("X-Thing", "b")
        return resp

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if request.query.get("as") == "text":
            return web.Response(status=code, text=f"status {code}")
        return web.json_response({"code": code, "detail": "bad things"}, status=code)

    @routes.get("/badjson")
    async def badjson(request: web.Request) -> web.Response:
        status = int(request.query.get("status", "200"))
        return web.Response(
            status=status, text="{not json " + "x" * 5000, content_type="application/json"
        )

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["delay"]))
        return web.json_response({"slow": True})

    @routes.get("/slow-body")
    async def slow_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"start ")
        await asyncio.sleep(30)
        await resp.write(b"end")
        return resp

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.Response:
        state["hung"].set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    @routes.get("/reset")
    async def reset(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        return web.Response(text="never sent")

    @routes.get("/reset-mid-body")
    async def reset_mid_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        await asyncio.sleep(0.05)
        request.transport.abort()
        return resp

    @routes.get("/flaky")
    async def flaky(request: web.Request) -> web.Response:
        key = request.query["key"]
        state["calls"][key] = state["calls"].get(key, 0) + 1
        if state["calls"][key] <= int(request.query["fail"]):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.json_response(
                {"try": "later"}, status=int(request.query["status"]), headers=headers
            )
        return web.json_response({"calls": state["calls"][key]})

    @routes.post("/flaky")
    async def flaky_post(request: web.Request) -> web.Response:
        key = "post-" + request.query["key"]
        state["calls"][key] = state["calls"].get(key, 0) + 1
        if state["calls"][key] <= 1:
            return web.json_response({"try": "later"}, status=503)
        return web.json_response({"calls": state["calls"][key]})

    @routes.get("/big")
    async def big(request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        if request.query.get("length") == "1":
            return web.Response(body=b"a" * n, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        while sent < n:
            part = min(256, n - sent)
            await resp.write(b"a" * part)
            sent += part
        await resp.write_eof()
        return resp

    @routes.get("/bomb")
    async def bomb(request: web.Request) -> web.Response:
        payload = gzip.compress(b"\0" * 5_000_000)
        return web.Response(
            body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    @routes.get("/redirect/{n}")
    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.json_response({"arrived": True})
        raise web.HTTPFound(f"/redirect/{n - 1}")

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/to-ftp")
    async def to_ftp(request: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/secret?token=abc")

    @routes.get("/set-cookie")
    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.json_response({})
        resp.set_cookie("session", "s3cr3t")
        return resp

    @routes.get("/concurrency")
    async def concurrency(request: web.Request) -> web.Response:
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        await asyncio.sleep(0.05)
        state["active"] -= 1
        return web.json_response({})

    app = web.Application()
    app.add_routes(routes)
    return app


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def server():
    """Base URL and shared state of a fresh local server."""
    state = {"calls": {}, "hung": asyncio.Event(), "active": 0, "peak": 0}
    runner = web.AppRunner(_app(state), shutdown_timeout=0.1, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state["base"] = f"http://127.0.0.1:{port}"
    state["port"] = port
    yield state
    await runner.cleanup()


@pytest.fixture
async def client():
    sleep = Recorder()
    async with HttpClient(sleep=sleep) as http:
        http.recorded = sleep  # type: ignore[attr-defined]
        yield http


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- requests and responses ------------------------------------------------------------------


async def test_json_response_is_decoded(server, client):
    resp = await client.request("GET", server["base"] + "/echo")
    assert isinstance(resp, HttpResponse)
    assert resp.status == 200
    assert resp.body["method"] == "GET"
    assert resp.headers["content-type"].startswith("application/json")
    assert all(name == name.lower() for name in resp.headers)


async def test_query_values_become_text_lists_repeat_none_skipped(server, client):
    resp = await client.request(
        "GET",
        server["base"] + "/echo?fixed=1",
        query={
            "since": 1700000000.0,
            "rate": 2.5,
            "flag": True,
            "ids": [1, "b", None],
            "skip": None,
            "obj": {"a": 1},
        },
    )
    assert resp.body["query"] == [
        ["fixed", "1"],
        ["since", "1700000000"],
        ["rate", "2.5"],
        ["flag", "true"],
        ["ids", "1"],
        ["ids", "b"],
        ["obj", '{"a":1}'],
    ]


async def test_headers_values_become_text_none_skipped(server, client):
    resp = await client.request(
        "GET", server["base"] + "/echo", headers={"X-Count": 3, "X-On": False, "X-None": None}
    )
    sent = resp.body["headers"]
    assert sent["X-Count"] == "3"
    assert sent["X-On"] == "false"
    assert "X-None" not in sent
    assert sent["User-Agent"].startswith("cronstack/")


async def test_json_body_default_content_type(server, client):
    resp = await client.request("POST", server["base"] + "/echo", body={"a": [1, 2], "b": None})
    assert resp.body["body"] == '{"a":[1,2],"b":null}'
    assert resp.body["headers"]["Content-Type"] == "application/json"


async def test_caller_content_type_is_kept(server, client):
    resp = await client.request(
        "POST",
        server["base"] + "/echo",
        headers={"content-type": "application/vnd.api+json"},
        body={"a": 1},
    )
    assert resp.body["headers"]["Content-Type"] == "application/vnd.api+json"


async def test_form_body(server, client):
    resp = await client.request(
        "POST",
        server["base"] + "/echo",
        body={"name": "a b&c", "tag": ["x", "y"], "n": None},
        body_format="form",
    )
    assert resp.body["body"] == "name=a+b%26c&tag=x&tag=y"
    assert resp.body["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_text_and_raw_bodies_sent_as_is(server, client):
    resp = await client.request(
        "PUT", server["base"] + "/echo", body="héllo {{x}}", body_format="text"
    )
    assert resp.body["body"] == "héllo {{x}}"
    assert resp.body["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    resp = await client.request(
        "PATCH", server["base"] + "/echo", body=b"\x01\x02", body_format="raw"
    )
    assert resp.body["body"] == "\x01\x02"
    assert resp.body["headers"]["Content-Type"] == "application/octet-stream"


async def test_null_body_sends_nothing(server, client):
    resp = await client.request("POST", server["base"] + "/echo", body=None)
    assert resp.body["has_body"] is False
    assert resp.body["headers"].get("Content-Length", "0") == "0"


async def test_get_with_body_and_none_with_body_are_refused(server, client):
    with pytest.raises(HttpInvalidRequest, match="query"):
        await client.request("GET", server["base"] + "/echo", body={"a": 1})
    with pytest.raises(HttpInvalidRequest, match="none"):
        await client.request("POST", server["base"] + "/echo", body={"a": 1}, body_format="none")
    with pytest.raises(HttpInvalidRequest, match="body_format"):
        await client.request("POST", server["base"] + "/echo", body={"a": 1}, body_format="xml")


async def test_method_is_validated_and_normalised(server, client):
    resp = await client.request(" delete ", server["base"] + "/echo")
    assert resp.body["method"] == "DELETE"
    with pytest.raises(HttpInvalidRequest, match="FETCH"):
        await client.request("FETCH", server["base"] + "/echo")


async def test_header_injection_refused(server, client):
    with pytest.raises(HttpInvalidRequest, match="line break"):
        await client.request("GET", server["base"] + "/echo", headers={"X-A": "1\r\nX-B: 2"})


async def test_bad_timeout_and_retries_refused(server, client):
    with pytest.raises(HttpInvalidRequest, match="timeout"):
        await client.request("GET", server["base"] + "/echo", timeout=0)
    with pytest.raises(HttpInvalidRequest, match="retries"):
        await client.request("GET", server["base"] + "/echo", retries=11)


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "file:///etc/passwd", "/relative", "", "http://", "javascript:alert(1)"],
)
async def test_non_http_urls_refused(client, url):
    with pytest.raises(HttpInvalidUrl) as info:
        await client.request("GET", url)
    assert info.value.error_type == "HttpInvalidUrl"


async def test_text_response_decoded_by_charset(server, client):
    assert (await client.request("GET", server["base"] + "/text")).body == "café"
    assert (await client.request("GET", server["base"] + "/weird-charset")).body == "ok é"


async def test_plus_json_and_empty_bodies(server, client):
    assert (await client.request("GET", server["base"] + "/problem")).body == {"title": "nope"}
    assert (await client.request("GET", server["base"] + "/empty")).body is None
    resp = await client.request("GET", server["base"] + "/no-content")
    assert (resp.status, resp.body) == (204, None)
    head = await client.request("HEAD", server["base"] + "/echo")
    assert (head.status, head.body) == (200, None)


async def test_repeated_response_headers_are_joined(server, client):
    resp = await client.request("GET", server["base"] + "/multi-header")
    assert resp.headers["x-thing"] == "a, b"


# --- error statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 500])
async def test_error_status_carries_status_and_body(server, client, code):
    with pytest.raises(HttpStatusError) as info:
        await client.request("GET", server["base"] + f"/status/{code}?api_key=K1234")
    err = info.value
    assert isinstance(err, RunError)
    obj = err.to_object("stack[2]")
    assert obj["type"] == "HttpError"
    assert obj["status"] == code
    assert obj["body"] == {"code": code, "detail": "bad things"}
    assert obj["headers"]["content-type"].startswith("application/json")
    assert "K1234" not in err.message and "api_key=***" in err.message
    assert f"HTTP {code}" in err.message and "GET" in err.message


async def test_error_status_text_body(server, client):
    with pytest.raises(HttpStatusError) as info:
        await client.request("GET", server["base"] + "/status/404?as=text")
    assert info.value.extra["body"] == "status 404"


async def test_invalid_json_success_is_invalid_response(server, client):
    with pytest.raises(InvalidResponse) as info:
        await client.request("GET", server["base"] + "/badjson")
    err = info.value
    assert err.error_type == "HttpInvalidResponse"
    assert err.extra["status"] == 200
    assert err.extra["body"].startswith("{not json")
    assert len(err.extra["body"]) == 2000


async def test_invalid_json_error_page_keeps_status_error(server, client):
    with pytest.raises(HttpStatusError) as info:
        await client.request("GET", server["base"] + "/badjson?status=502")
    assert info.value.extra["status"] == 502
    assert info.value.extra["body"].startswith("{not json")


# --- network failures ------------------------------------------------------------------------


async def test_connection_refused(client):
    port = _closed_port()
    with pytest.raises(HttpConnectionError) as info:
        await client.request("GET", f"http://user:hunter22@127.0.0.1:{port}/x")
    err = info.value
    assert err.error_type == "HttpConnectionError"
    assert "could not connect" in err.message
    assert "hunter22" not in err.message and "user:***@" in err.message


async def test_connection_reset(server, client):
    with pytest.raises(HttpConnectionError) as info:
        await client.request("GET", server["base"] + "/reset")
    assert info.value.error_type == "HttpConnectionError"


async def test_connection_reset_mid_body(server, client):
    with pytest.raises(HttpConnectionError, match="connection broke"):
        await client.request("GET", server["base"] + "/reset-mid-body")


async def test_slow_endpoint_times_out(server, client):
    with pytest.raises(HttpTimeout) as info:
        await client.request("GET", server["base"] + "/slow?delay=5", timeout=0.2)
    assert info.value.error_type == "HttpTimeout"
    assert not isinstance(info.value, TimeoutError)  # never mistaken for the run's own timeout
    resp = await client.request("GET", server["base"] + "/slow?delay=0.01", timeout=5)
    assert resp.body == {"slow": True}


async def test_queue_for_a_pooled_connection_is_not_connecting(server, monkeypatch):
    """Waiting for a free pooled connection counts against the attempt's timeout only.

    With one connection and a short connect limit, the second request waits
    longer than that limit for the first to finish, and still succeeds.
    """
    monkeypatch.setattr("engine._http.client.CONNECT_TIMEOUT", 0.05)
    async with HttpClient(limit=1, limit_per_host=1) as http:
        first = asyncio.ensure_future(http.request("GET", server["base"] + "/slow?delay=0.3", timeout=5))
        await asyncio.sleep(0.05)  # the first holds the only connection
        second = await http.request("GET", server["base"] + "/slow?delay=0.01", timeout=5)
        assert second.body == {"slow": True}
        assert (await first).body == {"slow": True}


async def test_queued_request_still_times_out_in_all(server):
    async with HttpClient(limit=1, limit_per_host=1) as http:
        first = asyncio.ensure_future(http.request("GET", server["base"] + "/slow?delay=0.5", timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(HttpTimeout, match=r"after 0\.1 s"):
            await http.request("GET", server["base"] + "/slow?delay=0.01", timeout=0.1)
        await first


async def test_client_timeout_is_built_once_per_value(server, client):
    first = client._client_timeout(30.0)
    assert client._client_timeout(30.0) is first
    assert (first.total, first.sock_connect, first.connect) == (30.0, 10.0, None)
    short = client._client_timeout(0.5)
    assert short is not first and (short.total, short.sock_connect) == (0.5, 0.5)
    for n in range(1, 200):  # many distinct timeouts: the cache stays bounded
        assert client._client_timeout(float(n)).total == float(n)
    assert len(client._timeouts) <= 64


def test_connect_timeout_names_the_connect_limit():
    """A new connection that never opens reports its own limit and the attempt's."""
    timeout = aiohttp.ClientTimeout(total=30.0, sock_connect=10.0)
    err = translate(aiohttp.ConnectionTimeoutError("x"), "GET", URL("http://h.example/x"), timeout)
    assert isinstance(err, HttpTimeout)
    assert "timed out connecting (at most 10 s for a new connection, 30 s in all)" in err.message
    err = translate(aiohttp.ServerTimeoutError("x"), "GET", URL("http://h.example/x"), timeout)
    assert "timed out waiting after 30 s" in err.message


async def test_hanging_endpoint_and_stalled_body_time_out(server, client):
    with pytest.raises(HttpTimeout):
        await client.request("GET", server["base"] + "/hang", timeout=0.2)
    with pytest.raises(HttpTimeout):
        await client.request("GET", server["base"] + "/slow-body", timeout=0.2)


async def test_cancellation_is_not_swallowed(server, client):
    task = asyncio.ensure_future(client.request("GET", server["base"] + "/hang", timeout=30))
    await asyncio.wait_for(server["hung"].wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class _FailingResolver(aiohttp.abc.AbstractResolver):
    async def resolve(self, host, port=0, family=socket.AF_INET):
        raise OSError(-2, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_dns_failure():
    async with HttpClient(resolver=_FailingResolver()) as http:
        with pytest.raises(HttpDNSError) as info:
            await http.request("GET", "http://no-such-host.invalid/x")
    assert info.value.error_type == "HttpDNSError"
    assert "no-such-host.invalid" in info.value.message


async def test_tls_to_plain_http_port(server, client):
    with pytest.raises(HttpTLSError) as info:
        await client.request("GET", f"https://127.0.0.1:{server['port']}/echo")
    assert info.value.error_type == "HttpTLSError"


# --- size cap --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["0", "1"])
async def test_body_past_the_cap_is_refused(server, length):
    async with HttpClient(max_response_bytes=1000) as http:
        ok = await http.request("GET", server["base"] + f"/big?n=1000&length={length}")
        assert len(ok.body) == 1000
        with pytest.raises(ResponseTooLarge) as info:
            await http.request("GET", server["base"] + f"/big?n=1001&length={length}")
        assert info.value.extra["limit"] == 1000
        # the pool is still healthy after a refused body
        assert (await http.request("GET", server["base"] + "/echo")).status == 200


async def test_huge_streamed_body_refused_under_default_cap(server, client):
    with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
        await client.request("GET", server["base"] + "/big?n=11000000")


async def test_compressed_body_counted_after_decompression(server):
    async with HttpClient(max_response_bytes=1_000_000) as http:
        with pytest.raises(ResponseTooLarge):
            await http.request("GET", server["base"] + "/bomb")


# --- redirects and cookies ---------------------------------------------------------------------


async def test_redirects_followed(server, client):
    resp = await client.request("GET", server["base"] + "/redirect/3")
    assert resp.body == {"arrived": True}


async def test_too_many_redirects(server, client):
    with pytest.raises(HttpTooManyRedirects) as info:
        await client.request("GET", server["base"] + "/loop")
    assert info.value.error_type == "HttpTooManyRedirects"


async def test_redirect_not_followed_returns_the_3xx(server, client):
    resp = await client.request("GET", server["base"] + "/redirect/2", follow_redirects=False)
    assert resp.status == 302
    assert resp.headers["location"] == "/redirect/1"


async def test_redirect_to_non_http_refused_and_redacted(server, client):
    with pytest.raises(HttpInvalidUrl) as info:
        await client.request("GET", server["base"] + "/to-ftp")
    assert "token=abc" not in info.value.message


async def test_checked_url_is_reused_and_bounded(server, client):
    """A URL text is parsed and checked once; a query never changes the kept URL."""
    url = server["base"] + "/echo"
    await client.request("GET", url)
    kept = client._urls[url]
    resp = await client.request("GET", url, query={"page": 2})
    assert resp.body["query"] == [["page", "2"]]
    assert client._urls[url] is kept and kept.query_string == ""
    assert (await client.request("GET", url)).body["query"] == []
    for n in range(300):  # many distinct URLs: the cache stays bounded
        client._checked_url(f"{url}?n={n}")
    assert len(client._urls) <= 256


async def test_invalid_url_is_never_kept(client):
    for _ in range(2):
        with pytest.raises(HttpInvalidUrl, match="scheme"):
            await client.request("GET", "ftp://example.com/x")
    assert "ftp://example.com/x" not in client._urls


async def test_each_response_returns_its_connection_to_the_pool(server):
    """Without ``async with`` on the response the connection is still released, on
    success, on an error status, on a bad body and on a refused size."""
    async with HttpClient(limit=1, max_response_bytes=10_000) as http:
        base = server["base"]
        for _ in range(3):
            assert (await http.request("GET", base + "/echo")).status == 200
        with pytest.raises(HttpStatusError):
            await http.request("GET", base + "/status/500")
        with pytest.raises(InvalidResponse):
            await http.request("GET", base + "/badjson")
        for streamed in ("", "&length=1"):  # refused while streaming / by its declared length
            with pytest.raises(ResponseTooLarge):
                await http.request("GET", base + "/big?n=20000" + streamed)
        with pytest.raises(HttpTimeout):  # a body that stalls: timed out mid-read
            await http.request("GET", base + "/slow-body", timeout=0.2)
        task = asyncio.ensure_future(http.request("GET", base + "/slow-body"))
        await asyncio.sleep(0.1)  # cancelled mid-read, as a run's timeout does
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        connector = http._session.connector
        assert not connector._acquired  # nothing held after the last answer
        resp = await asyncio.wait_for(http.request("GET", base + "/echo"), 5)
        assert resp.status == 200


async def test_cookies_are_never_kept_between_requests(server, client):
    await client.request("GET", server["base"] + "/set-cookie")
    resp = await client.request("GET", server["base"] + "/echo")
    assert "Cookie" not in resp.body["headers"]


async def test_per_host_limit_bounds_concurrency(server):
    async with HttpClient(limit_per_host=2) as http:
        await asyncio.gather(
            *(http.request("GET", server["base"] + "/concurrency") for _ in range(6))
        )
    assert server["peak"] == 2


async def test_queued_requests_are_woken_only_for_a_free_connection(server, monkeypatch):
    """Sequential requests over a full pool: a queued request is woken when a
    connection is really free (its holder finished), not at each response."""
    wakes = []
    eager = aiohttp.BaseConnector._release_waiter

    def counting(self):
        before = sum(len(w) for w in self._waiters.values())
        eager(self)
        wakes.append(before - sum(len(w) for w in self._waiters.values()))

    monkeypatch.setattr(aiohttp.BaseConnector, "_release_waiter", counting)
    async with HttpClient(limit=2, limit_per_host=2) as http:

        async def worker() -> int:
            for _ in range(5):
                assert (await http.request("GET", server["base"] + "/echo")).status == 200
            return 5

        assert await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6))), 10) == [5] * 6
    # 4 workers queue at first; each is woken once a worker ends (eagerly: at each of ~30 responses)
    assert sum(wakes) <= 6


async def test_queued_requests_all_served_across_hosts_and_cancellations(server):
    """Two hosts behind one total limit, queued requests cancelled or timed out
    while they wait: every other request is still served."""
    port = server["port"]
    hosts = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
    async with HttpClient(limit=2, limit_per_host=1) as http:

        async def worker(n: int) -> int:
            done = 0
            for i in range(4):
                resp = await http.request("GET", hosts[(n + i) % 2] + "/echo")
                done += resp.status == 200
            return done

        doomed = [asyncio.ensure_future(http.request("GET", hosts[0] + "/slow?delay=0.05"))
                  for _ in range(3)]
        timed = asyncio.ensure_future(http.request("GET", hosts[1] + "/slow?delay=1", timeout=0.05))
        work = asyncio.ensure_future(asyncio.gather(*(worker(n) for n in range(8))))
        await asyncio.sleep(0)
        for task in doomed:
            task.cancel()
        assert await asyncio.wait_for(work, 10) == [4] * 8
        with pytest.raises(HttpTimeout):
            await timed
        assert not http._session.connector._acquired


async def test_closed_client_reopens(server):
    http = HttpClient()
    assert (await http.request("GET", server["base"] + "/echo")).status == 200
    await http.close()
    await http.close()
    assert (await http.request("GET", server["base"] + "/echo")).status == 200
    await http.close()


# --- retries ---------------------------------------------------------------------------------


async def test_503_retry_after_seconds_honoured(server, client):
    url = server["base"] + "/flaky?key=a&fail=2&status=503&retry_after=7"
    resp = await client.request("GET", url, retries=3)
    assert resp.body == {"calls": 3}
    assert client.recorded.delays == [7.0, 7.0]


async def test_429_retry_after_http_date_honoured_and_capped(server, client):
    date = formatdate(timeval=__import__("time").time() + 12, usegmt=True)
    url = server["base"] + "/flaky?key=b&fail=1&status=429"
    resp = await client.request("GET", url, retries=1, query={"retry_after": date})
    assert resp.status == 200
    [delay] = client.recorded.delays
    assert 9.0 <= delay <= 12.0
    url = server["base"] + "/flaky?key=c&fail=1&status=429&retry_after=3600"
    await client.request("GET", url, retries=1)
    assert client.recorded.delays[-1] == 30.0


async def test_500_backoff_grows_with_jitter_then_gives_up(server, client):
    url = server["base"] + "/flaky?key=d&fail=99&status=500"
    with pytest.raises(HttpStatusError) as info:
        await client.request("GET", url, retries=4)
    delays = client.recorded.delays
    assert len(delays) == 4
    for n, delay in enumerate(delays):
        step = 0.5 * 2**n
        assert step / 2 <= delay <= step
    assert info.value.extra["attempts"] == 5
    assert "gave up after 5 attempts" in info.value.message
    assert server["calls"]["d"] == 5


async def test_404_is_not_retried(server, client):
    with pytest.raises(HttpStatusError):
        await client.request("GET", server["base"] + "/status/404", retries=3)
    assert client.recorded.delays == []


async def test_post_retried_only_when_asked(server, client):
    with pytest.raises(HttpStatusError):
        await client.request("POST", server["base"] + "/flaky?key=e", body={"a": 1}, retries=2)
    assert client.recorded.delays == []
    assert server["calls"]["post-e"] == 1
    resp = await client.request(
        "POST", server["base"] + "/flaky?key=f", body={"a": 1}, retries=2, retry_non_idempotent=True
    )
    assert resp.body == {"calls": 2}
    assert len(client.recorded.delays) == 1


async def test_connection_refused_and_timeout_are_retried(server, client):
    port = _closed_port()
    with pytest.raises(HttpConnectionError) as info:
        await client.request("GET", f"http://127.0.0.1:{port}/", retries=2)
    assert len(client.recorded.delays) == 2
    assert info.value.extra["attempts"] == 3
    with pytest.raises(HttpTimeout):
        await client.request("GET", server["base"] + "/slow?delay=5", timeout=0.1, retries=1)
    assert len(client.recorded.delays) == 3


async def test_errors_are_all_http_errors(server, client):
    with pytest.raises(HttpError):
        await client.request("GET", server["base"] + "/status/418")
