"""docs/http.md and docs/steps.md against what a stack really gets from `external_api_request`.

Every row of the "Errors a stack can catch" table is read from docs/http.md and
provoked through a stack (a try_catch returns `error`) against a local aiohttp
server: the documented `error.type` and extra fields must be what the step
gives. The redirect, `timeout` and `method` statements are checked the same way.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from engine import Engine
from engine._http import HttpClient
from engine._http.message import METHODS
from engine._http.translate import translate

pytestmark = pytest.mark.anyio
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def error_table() -> dict[str, list[str]]:
    """``{error.type: [extra fields]}`` from the table of docs/http.md."""
    text = (DOCS / "http.md").read_text()
    section = text.split("## Errors a stack can catch", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) == 4 else None
        if m and m.group(1) != "error.type":
            rows[m.group(1)] = re.findall(r"`(\w+)`", cells[2])
    return rows


class _FailingResolver(aiohttp.abc.AbstractResolver):
    async def resolve(self, host, port=0, family=socket.AF_INET):
        raise OSError(-2, "Name or service not known")

    async def close(self) -> None:
        return None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def site():
    state: dict[str, Any] = {"flaky": 0}
    app = web.Application()

    async def ok(request):
        return web.json_response({"method": request.method})

    async def slow(request):
        await asyncio.sleep(2)
        return web.json_response({})

    async def flaky(request):  # 0.25 s per answer: a 503 first, then 200
        state["flaky"] += 1
        await asyncio.sleep(0.25)
        return web.json_response({"n": state["flaky"]}, status=503 if state["flaky"] == 1 else 200)

    async def big(request):
        return web.Response(body=b"x" * (11 * 1024 * 1024), content_type="text/plain")

    async def badjson(request):
        return web.Response(text="{nope", content_type="application/json")

    async def status500(request):
        return web.json_response({"why": "down"}, status=500)

    async def loop(request):
        raise web.HTTPFound("/loop")

    async def ftp(request):
        raise web.HTTPFound("ftp://example.com/x")

    async def found(request):
        raise web.HTTPFound("/ok")

    async def moved_json(request):
        return web.json_response({"to": "/ok"}, status=301, headers={"Location": "/ok"})

    for path, handler in [("/ok", ok), ("/slow", slow), ("/flaky", flaky), ("/big", big), ("/badjson", badjson),
                          ("/500", status500), ("/loop", loop), ("/ftp", ftp), ("/found", found),
                          ("/moved_json", moved_json)]:
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]

    async def garbage(reader, writer):
        await reader.read(100)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    junk = await asyncio.start_server(garbage, "127.0.0.1", 0)
    state.update(base=f"http://127.0.0.1:{port}", port=port, junk=f"http://127.0.0.1:{junk.sockets[0].getsockname()[1]}/")
    async with Engine.open([]) as engine:
        state["engine"] = engine
        yield state
    junk.close()
    await runner.cleanup()


async def run_step(engine: Engine, **fields: Any) -> Any:
    """The step's result, or the `error` object a catch block sees."""
    stack = [{"function": "try_catch",
              "try_block": [{"function": "external_api_request", "return_as": "r", **fields},
                            {"function": "return", "value": "{{ {'result': r} }}"}],
              "catch_block": [{"function": "return", "value": "{{ {'error': error} }}"}]}]
    return await engine.run_stack(stack)


# error.type -> ways to provoke it through a stack (fields of the step; "{base}" is the server)
CASES: dict[str, list[dict[str, Any]]] = {
    "HttpError": [{"url": "{base}/500"}],
    "HttpConnectionError": [{"url": "http://127.0.0.1:{closed}/x"}],
    "HttpDNSError": [{"url": "http://no-such-host.invalid/x", "_client": "dns"}],
    "HttpTLSError": [{"url": "https://127.0.0.1:{port}/ok"}],
    "HttpTimeout": [{"url": "{base}/slow", "timeout": 0.3}],
    "HttpNetworkError": [{"_translate": aiohttp.ClientError("something else")}],
    "HttpTooManyRedirects": [{"url": "{base}/loop"}],
    "HttpInvalidUrl": [{"url": "ftp://example.com/x"}, {"url": "/relative"}, {"url": "http:///x"},
                       {"url": "{base}/ftp"}],
    "HttpInvalidRequest": [{"url": "{base}/ok", "method": "FETCH"},
                           {"url": "{base}/ok", "headers": {"X-A": "a\r\nX-B: b"}},
                           {"url": "{base}/ok", "headers": {"X:Y": "v"}},
                           {"url": "{base}/ok", "headers": {"": "v"}},
                           {"url": "{base}/ok", "headers": {"X Bad": "v"}},
                           {"url": "{base}/ok", "headers": {"X(y)": "v"}},
                           {"url": "{base}/ok", "body": {"a": 1}},
                           {"url": "{base}/ok", "method": "HEAD", "body": {"a": 1}},
                           {"url": "{base}/ok", "method": "POST", "body": 1, "body_format": "none"},
                           {"url": "{base}/ok", "retries": 11}],
    "InvalidInput": [{"url": 5}, {"url": "{base}/ok", "method": 5}, {"url": "{base}/ok", "headers": [1]},
                     {"url": "{base}/ok", "query": "a=1"}, {"url": "{base}/ok", "timeout": "abc"},
                     {"url": "{base}/ok", "timeout": 0}, {"url": "{base}/ok", "retries": -1},
                     {"url": "{base}/ok", "retries": 1.5}, {"url": "{base}/ok", "follow_redirects": "false"}],
    "HttpResponseTooLarge": [{"url": "{base}/big"}],
    "HttpInvalidResponse": [{"url": "{base}/badjson"}, {"url": "{junk}"}],
}


def test_every_documented_error_type_has_a_case():
    assert set(error_table()) == set(CASES)
    # a bad `timeout` from a stack is InvalidInput (the step checks it), not HttpInvalidRequest
    row = next(ln for ln in (DOCS / "http.md").read_text().splitlines() if ln.startswith("| `HttpInvalidRequest`"))
    assert "`timeout`" not in row


@pytest.mark.parametrize("error_type", sorted(CASES))
async def test_documented_error_type_and_fields(site, error_type):
    extra = error_table()[error_type]
    engine = site["engine"]
    for case in CASES[error_type]:
        case = dict(case)
        if "_translate" in case:  # a transport failure no local server produces
            exc = translate(case["_translate"], "GET", URL(site["base"]), aiohttp.ClientTimeout(total=1))
            error = exc.to_object("stack[0]")
        else:
            fields = {k: v.format(closed=_closed_port(), **site) if isinstance(v, str) else v
                      for k, v in case.items() if not k.startswith("_")}
            if case.get("_client") == "dns":
                shared, engine.http = engine.http, HttpClient(resolver=_FailingResolver())
                try:
                    out = await run_step(engine, **fields)
                finally:
                    await engine.http.close()
                    engine.http = shared
            else:
                out = await run_step(engine, **fields)
            assert "error" in out, (case, out)
            error = out["error"]
        assert error["type"] == error_type, (case, error)
        assert error["message"] and error["step"], error
        for name in extra:
            assert name in error, (case, name, error)
        if error_type == "InvalidInput":
            assert "method" not in error and "url" not in error
        else:
            assert error["method"] and error["url"], error


async def test_error_details_the_table_states(site):
    engine = site["engine"]
    bad_json = (await run_step(engine, url=site["base"] + "/badjson"))["error"]
    assert bad_json["status"] == 200 and bad_json["body"] == "{nope" and "headers" in bad_json
    junk = (await run_step(engine, url=site["junk"]))["error"]
    assert junk["body"] is None and junk["status"] is None
    assert (await run_step(engine, url=site["base"] + "/slow", timeout=0.3))["error"]["timeout"] == 0.3
    too_large = (await run_step(engine, url=site["base"] + "/big"))["error"]
    assert too_large["status"] == 200 and too_large["limit"] == 10 * 1024 * 1024


async def test_body_format_is_checked_when_the_stack_compiles(site):
    from engine import CompileError

    with pytest.raises(CompileError, match="body_format"):
        await run_step(site["engine"], url=site["base"] + "/ok", method="POST", body=1, body_format="xml")


async def test_a_header_name_http_does_not_allow_is_refused_before_sending(site):
    for name in ("Bad Name", "X(y)", 'a"b', "x:y", "é"):
        error = (await run_step(site["engine"], url=site["base"] + "/ok", headers={name: "v"}))["error"]
        assert error["type"] == "HttpInvalidRequest" and "not a valid header name" in error["message"], error
    ok = await run_step(site["engine"], url=site["base"] + "/ok", headers={"X-Odd_Name.1!#$%&'*+^`|~": "v"})
    assert ok == {"result": {"method": "GET"}}


async def test_follow_redirects_false_gives_the_3xx_body_only(site):
    engine, base = site["engine"], site["base"]
    # aiohttp's default redirect body: text; no status, no Location for the stack
    assert await run_step(engine, url=base + "/found", follow_redirects=False) == {"result": "302: Found"}
    assert await run_step(engine, url=base + "/found", follow_redirects=False, method="HEAD") == {"result": None}
    assert await run_step(engine, url=base + "/moved_json", follow_redirects=False) == {"result": {"to": "/ok"}}
    # followed (the default), the stack gets the final answer
    assert await run_step(engine, url=base + "/found") == {"result": {"method": "GET"}}
    docs = (DOCS / "http.md").read_text()
    assert "**decoded body of the 3xx answer only**" in docs and "`\"302:\n  Found\"`" in docs
    assert "the `location` header says\n  where" not in docs


async def test_timeout_is_per_attempt(site):
    engine, base = site["engine"], site["base"]
    started = time.monotonic()
    # each answer takes 0.25 s: two attempts and a backoff wait (>= 0.25 s) exceed 0.4 s in all
    out = await run_step(engine, url=base + "/flaky", timeout=0.4, retries=1)
    assert out == {"result": {"n": 2}}
    assert time.monotonic() - started > 0.4
    steps = (DOCS / "steps.md").read_text()
    assert "seconds for **each attempt**" in steps and "the whole exchange" not in steps


async def test_documented_methods_are_the_accepted_ones(site):
    row = next(ln for ln in (DOCS / "steps.md").read_text().splitlines() if ln.startswith("| `method` |"))
    listed = set(re.search(r"one of `([A-Z ]+)`", row).group(1).split())
    assert listed == set(METHODS)
    assert "any HTTP method" not in row
    for method in sorted(listed - {"HEAD"}):
        out = await run_step(site["engine"], url=site["base"] + "/ok", method=method.lower())
        assert out == {"result": {"method": method}}
    assert await run_step(site["engine"], url=site["base"] + "/ok", method="head") == {"result": None}
