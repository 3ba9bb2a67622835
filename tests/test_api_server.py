"""start_api/stop_api on a real socket, the loopback rule, and the Prometheus metrics."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_http import AUTH, TOKEN, write_project

import engine._api as api_pkg
from engine import Engine
from engine._api import (
    DURATION_BUCKETS,
    ApiConfigError,
    DurationHistogram,
    create_app,
    is_loopback,
    start_api,
    stop_api,
)
from engine._api.metrics import make_registry, render

pytestmark = pytest.mark.anyio


def test_public_surface_is_complete():
    public = {n for n in dir(api_pkg) if not n.startswith("_")} - {"app", "errors", "jsonio", "metrics", "openapi", "routes"}
    assert set(api_pkg.__all__) == public
    assert isinstance(api_pkg.__all__, tuple)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("", False), ("10.0.0.5", False), ("example.com", False), ("::", False)],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


async def test_start_api_refuses_public_host_without_token():
    with pytest.raises(ApiConfigError, match="CRONSTACK_TOKEN"):
        await start_api(object(), "0.0.0.0", 0, token=None)


async def test_start_and_stop_on_a_real_socket(tmp_path, caplog):
    proj = write_project(tmp_path)
    async with Engine.open(proj, database=f"sqlite:///{tmp_path / 'e.db'}") as engine:
        with caplog.at_level(logging.WARNING, logger="cronstack.api"):
            runner, port = await start_api(engine, "127.0.0.1", 0, token=None)
        assert port > 0
        assert "loopback-only" in caplog.text
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/api/admin/active-tasks") as resp:
                    assert resp.status == 200
                    assert {t["name"] for t in await resp.json()} == {"hello", "slow", "boom", "off"}
                # a second server on the same port is refused with a clear error
                with pytest.raises(ApiConfigError, match="another --port"):
                    await start_api(engine, "127.0.0.1", port, token=TOKEN)
        finally:
            await stop_api(runner)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"http://127.0.0.1:{port}/healthz")


async def test_start_with_token_on_any_host(tmp_path):
    proj = write_project(tmp_path)
    async with Engine.open(proj, database=f"sqlite:///{tmp_path / 'e.db'}") as engine:
        runner, port = await start_api(engine, "0.0.0.0", 0, token=TOKEN)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/api/tasks") as resp:
                    assert resp.status == 401
                async with session.get(f"http://127.0.0.1:{port}/api/tasks", headers=AUTH) as resp:
                    assert resp.status == 200
        finally:
            await stop_api(runner)


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_endpoint_reads_engine_stats(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    proj = write_project(tmp_path)
    async with Engine.open(proj, database=f"sqlite:///{tmp_path / 'e.db'}") as engine:
        await engine.trigger("hello", wait=True)
        await engine.trigger("hello", wait=True)
        await engine.trigger("boom", wait=True)
        async with TestClient(TestServer(create_app(engine, token=TOKEN))) as client:
            resp = await client.get("/metrics", headers=AUTH)
            assert resp.status == 200 and resp.content_type == "text/plain"
            fams = _families(await resp.text())
    runs = {(s.labels["task"], s.labels["status"]): s.value for s in fams["cronstack_runs"].samples
            if s.name == "cronstack_runs_total"}
    assert runs == {("hello", "completed"): 2.0, ("boom", "failed"): 1.0}
    assert fams["cronstack_running_runs"].samples[0].value == 0
    assert fams["cronstack_queued_runs"].samples[0].value == 0
    assert "cronstack_scheduler_lag_seconds" in fams


class _Stats:
    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        return self._stats


def test_duration_histogram_and_collector():
    hist = DurationHistogram()
    for seconds in (0.001, 0.2, 0.2, 7.0, 99_999.0):
        hist.observe("a", seconds)
    hist.observe("b", 0.05)
    snap = hist.snapshot()
    assert snap["a"]["count"] == 5 and snap["a"]["sum"] == pytest.approx(100_006.401)
    assert snap["a"]["buckets"][0.01] == 1 and snap["a"]["buckets"][0.5] == 3
    assert snap["a"]["buckets"][10.0] == 4 and snap["a"]["buckets"][float("inf")] == 5
    assert snap["b"]["buckets"][0.05] == 1  # bounds are inclusive (le)
    stats = {"running": 3, "queued": 7, "scheduler_lag_seconds": 0.25,
             "runs_total": {("a", "completed"): 5}, "run_durations": snap}
    text, ctype = render(make_registry(_Stats(stats)))
    assert ctype.startswith("text/plain")
    fams = _families(text.decode())
    assert fams["cronstack_running_runs"].samples[0].value == 3
    assert fams["cronstack_queued_runs"].samples[0].value == 7
    samples = fams["cronstack_run_duration_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket") and s.labels["task"] == "a"}
    assert len(buckets) == len(DURATION_BUCKETS) + 1 and buckets["+Inf"] == 5 and buckets["0.5"] == 3
    count = [s.value for s in samples if s.name.endswith("_count") and s.labels["task"] == "a"]
    assert count == [5]


def test_registries_are_per_app():
    one = render(make_registry(_Stats({"running": 1})))[0]
    two = render(make_registry(_Stats({"running": 2})))[0]
    assert b"cronstack_running_runs 1.0" in one and b"cronstack_running_runs 2.0" in two
    # absent keys are skipped, not invented
    assert b"cronstack_runs_total" not in one
