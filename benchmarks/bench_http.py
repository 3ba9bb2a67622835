"""Requests/s through ``HttpClient.request`` against a plain aiohttp loop doing the same.

Workload: N concurrent coroutines (1,000; 100 with --quick) each send 10
requests one after another to a local aiohttp server: a GET of a small JSON
object, and a POST of a small JSON body that the server echoes back. The
baseline is the same work written directly on an ``aiohttp.ClientSession``
(``session.get/post`` + ``await resp.json()`` + a status check), with the same
connection limits (100 total and per host) and a fresh session per repetition
on both sides. Target: HttpClient >= 80% of the plain loop's requests/s.

A third row runs the same GET workload end to end through the engine: N runs
of a task whose stack loops 10 times over an ``external_api_request`` step
(history off, so the figure is the step's cost, not the trace's), against the
same plain loop. A fourth row (added 2026-11-29) runs the same stack N times
with ``runtime.execute`` and an ``HttpClient`` but no engine, to split the
gap between the step and the runs; the three are measured in turn in each
round.

Is the plain loop the same work as the step? Checked 2026-11-29: same server,
same requests, same concurrency (N coroutines of 10 sequential requests),
same pool limits, a fresh session per repetition on both sides, the status
checked and the JSON body decoded on both (``resp.json()`` with the stdlib
``json``, slower than the client's msgspec). The step does a little more, all
of it documented (docs/http.md): response headers lower-cased into a dict,
the size cap, URL and field checks; the runs row also times ``Engine.open``
and ``close`` (about 10-30 ms of 2-4 s). No change to the baseline was called
for.

The server runs in a separate process by default (``--server subprocess``,
on uvloop) so that, on this 2-core machine, client and server each get a core
and the figure is the client's cost; ``--server inprocess`` shares the loop
and the core with the client instead (both are reported when asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from benchmarks._harness import Result, parse_args, report, time_async  # noqa: E402
from engine._http import HttpClient  # noqa: E402

REQUESTS_PER_WORKER = 10
LIMIT = 100
PAYLOAD = {"source": "xano_background_task", "task_id": "daily_data_sync", "items": list(range(20))}


def _app() -> web.Application:
    item = {"id": 42, "name": "widget", "tags": ["a", "b"], "price": 9.5, "active": True}

    async def get_item(request: web.Request) -> web.Response:
        return web.json_response(item)

    async def post_echo(request: web.Request) -> web.Response:
        return web.json_response({"received": await request.json()})

    app = web.Application()
    app.router.add_get("/item", get_item)
    app.router.add_post("/echo", post_echo)
    return app


async def _serve_forever() -> None:
    runner = web.AppRunner(_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


def _start_server_process() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


async def _through_client(base: str, workers: int, method: str) -> None:
    async with HttpClient(limit=LIMIT, limit_per_host=LIMIT) as http:

        async def worker() -> None:
            for _ in range(REQUESTS_PER_WORKER):
                if method == "GET":
                    resp = await http.request("GET", base + "/item")
                else:
                    resp = await http.request("POST", base + "/echo", body=PAYLOAD)
                assert resp.body

        await asyncio.gather(*(worker() for _ in range(workers)))


async def _plain(base: str, workers: int, method: str) -> None:
    connector = aiohttp.TCPConnector(limit=LIMIT, limit_per_host=LIMIT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in range(REQUESTS_PER_WORKER):
                if method == "GET":
                    cm = session.get(base + "/item")
                else:
                    cm = session.post(base + "/echo", json=PAYLOAD)
                async with cm as resp:
                    if resp.status >= 400:
                        raise RuntimeError(resp.status)
                    assert await resp.json()

        await asyncio.gather(*(worker() for _ in range(workers)))


RUN_STACK = [
    {"function": "loop", "times": REQUESTS_PER_WORKER, "operations": [
        {"function": "external_api_request", "url": "{{ base }}/item", "method": "GET", "return_as": "r"},
        {"function": "conditional", "condition": "{{ r == null }}", "true_branch": [
            {"function": "throw_error", "message": "empty body"}]},
    ]},
]  # fmt: skip


async def _through_steps(base: str, workers: int, method: str) -> None:
    """The same stack run ``workers`` times by ``runtime.execute``: the step without the runs.

    No engine: no run rows, no run task, no run timeout, no store thread. Its
    distance to the runs row is the runs' share of the cost, its distance to
    the plain loop the step's (VM loop, field checks, HttpClient).
    """
    from compiler import load_definitions
    from runtime import RunContext, execute

    stack = [{"function": "create_variable", "name": "base", "value": base}, *RUN_STACK]
    defs = load_definitions([{"name": "fetch", "stack": stack, "request_history": {"enabled": False}}])
    program = defs.tasks["fetch"].program
    async with HttpClient(limit=LIMIT, limit_per_host=LIMIT) as http:
        ctx = RunContext(http=http)
        await asyncio.gather(*(execute(program, ctx) for _ in range(workers)))


async def _through_runs(base: str, workers: int, method: str) -> None:
    """``workers`` runs, each making 10 requests with the external_api_request step."""
    from engine import Engine, EngineConfig

    stack = [{"function": "create_variable", "name": "base", "value": base}, *RUN_STACK]
    defs = [{"name": "fetch", "stack": stack, "overlap": "allow", "request_history": {"enabled": False}}]
    config = EngineConfig(tune_gc=False, http_connections=LIMIT, http_connections_per_host=LIMIT)
    async with Engine.open(defs, env={}, config=config) as engine:
        runs = await asyncio.gather(*(engine.trigger("fetch", wait=True) for _ in range(workers)))
        failed = [r for r in runs if r["status"] != "completed"]
        if failed:
            raise RuntimeError(f"{len(failed)} runs failed: {failed[0]['error']}")


def _measure(base: str | None, workers: int, method: str, loop: str, repeat: int, client: bool | str):
    fn = {"runs": _through_runs, "steps": _through_steps, True: _through_client, False: _plain}[client]

    async def once() -> None:
        if base is not None:
            await fn(base, workers, method)
            return
        runner = web.AppRunner(_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        try:
            await fn(f"http://127.0.0.1:{runner.addresses[0][1]}", workers, method)
        finally:
            await runner.cleanup()

    return lambda: time_async(once, repeat=1, warmup=0, loop=loop).median


def _paired(base, workers, method, loop, repeat) -> tuple[float, float]:
    """Median seconds of (plain, HttpClient), measured alternately.

    Alternating the two sides spreads the machine's drift (other processes on
    the shared cores) evenly over both instead of biasing the ratio.
    """
    plain = _measure(base, workers, method, loop, repeat, client=False)
    ours = _measure(base, workers, method, loop, repeat, client=True)
    plain(), ours()  # warm-up: connections, imports, caches
    pairs = [(plain(), ours()) for _ in range(repeat)]
    return statistics.median(p for p, _ in pairs), statistics.median(o for _, o in pairs)


def run(quick: bool = False, server: str = "subprocess") -> list[Result]:
    workers = 100 if quick else 1_000
    repeat = 3 if quick else 5
    total = workers * REQUESTS_PER_WORKER
    proc, base = _start_server_process() if server == "subprocess" else (None, None)
    results = []
    try:
        for method in ("GET", "POST"):
            for loop in ("asyncio", "uvloop"):
                plain, ours = _paired(base, workers, method, loop, repeat)
                value, baseline = total / ours, total / plain
                results.append(
                    Result(
                        bench="http",
                        name=f"{method} JSON, {workers}x{REQUESTS_PER_WORKER}, {loop}, server {server}",
                        value=value,
                        unit="req/s",
                        baseline_name="plain aiohttp",
                        baseline=baseline,
                        target=">= 0.80x plain",
                        met=value >= 0.8 * baseline,
                    )
                )
        if base is not None:
            results.extend(_end_to_end(base, workers, repeat))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    return results


def _end_to_end(base: str, workers: int, repeat: int) -> list[Result]:
    """The step through runs (the target) and without them, each paired with the plain loop.

    The three are measured in turn within each repetition (plain, steps,
    runs), so the machine's drift spreads over all of them.
    """
    total = workers * REQUESTS_PER_WORKER
    sides = [_measure(base, workers, "GET", "uvloop", repeat, client=c) for c in (False, "steps", "runs")]
    for side in sides:
        side()  # warm-up
    rounds = [tuple(side() for side in sides) for _ in range(repeat)]
    plain, steps, runs = (statistics.median(r[i] for r in rounds) for i in range(3))
    ratios = ", ".join(f"{p / r:.2f}" for p, _, r in rounds)
    return [
        Result(
            bench="http", name=f"GET through {workers} runs x {REQUESTS_PER_WORKER} external_api_request, uvloop",
            value=total / runs, unit="req/s", baseline_name="plain aiohttp", baseline=total / plain,
            target=">= 0.80x plain", met=total / runs >= 0.8 * total / plain,
            note=f"each run: VM loop, step, HTTP client, run rows written; ratio per round {ratios}",
        ),
        Result(
            bench="http", name=f"GET through the step without runs ({workers} x runtime.execute), uvloop",
            value=total / steps, unit="req/s", baseline_name="plain aiohttp", baseline=total / plain,
            note="the same stack and client, no engine: the runs' share is the gap to the row above",
        ),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--serve"]:
        import uvloop

        uvloop.run(_serve_forever())
        return 0
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument(
        "--server", choices=("subprocess", "inprocess", "both"), default="subprocess"
    )
    known, rest = extra.parse_known_args(argv)
    args = parse_args(rest, __doc__.splitlines()[0])
    modes = ("subprocess", "inprocess") if known.server == "both" else (known.server,)
    results = [r for mode in modes for r in run(args.quick, mode)]
    report(results, args.json)
    return 0 if all(r.met is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
