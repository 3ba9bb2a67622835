"""The admin API end to end: a real Engine on an SQLite file, the app on aiohttp's test server."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine import Engine
from engine._api import create_app

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASH = "https://dash.example"

TASKS = {
    "hello": {
        "name": "hello",
        "description": "says three",
        "tags": ["demo"],
        "schedule": "*/5 * * * *",
        "stack": [
            {"function": "create_variable", "name": "x", "value": "{{ 1 + 2 }}"},
            {"function": "log", "message": "x is {{ x }}"},
            {"function": "return", "value": "{{ x }}"},
        ],
    },
    "slow": {"name": "slow", "stack": [{"function": "wait", "duration": 30}]},
    "boom": {"name": "boom", "stack": [{"function": "throw_error", "message": "no luck", "type": "Luck"}]},
    "off": {"name": "off", "schedule": "0 6 * * *", "active": False, "stack": []},
}


def write_project(root: Path) -> Path:
    proj = root / "proj"
    proj.mkdir()
    for name, defn in TASKS.items():
        (proj / f"{name}.json").write_text(json.dumps(defn))
    return proj


@asynccontextmanager
async def api(tmp_path: Path, *, token: str | None = TOKEN, **kwargs):
    proj = write_project(tmp_path)
    async with Engine.open(proj, database=f"sqlite:///{tmp_path / 'e.db'}") as engine:
        app = create_app(engine, token=token, cors_origins=[DASH], **kwargs)
        async with TestClient(TestServer(app)) as client:
            yield client, engine


async def wait_status(engine: Engine, run_id: str, statuses: set[str]) -> dict:
    with anyio.fail_after(10):
        while True:
            run = await engine.run(run_id, trace=False)
            if run and run["status"] in statuses:
                return run
            await anyio.sleep(0.01)


# --- the seed's monitor, with the exact requests its class sends -----------------------


async def test_seed_task_history(tmp_path):
    async with api(tmp_path) as (client, engine):
        first = (await engine.trigger("hello", wait=True))["id"]
        second = (await engine.trigger("hello", wait=True))["id"]
        headers = {**AUTH, "Content-Type": "application/json"}
        body = json.dumps({"task_name": "hello", "limit": 5, "sort": "executed_at desc"})
        resp = await client.post("/api/admin/task-history", data=body, headers=headers)
        assert resp.status == 200
        history = await resp.json()
        assert [h["id"] for h in history] == [second, first]
        entry = history[0]
        assert entry["status"] == "completed" and entry["task_name"] == "hello"
        assert entry["executed_at"].endswith("Z") and "T" in entry["executed_at"]
        assert entry["finished_at"] >= entry["executed_at"]
        assert entry["duration"] >= 0 and entry["error"] is None
        assert entry["trigger"] == "manual" and entry["attempt"] == 1
        asc = await client.post(
            "/api/admin/task-history",
            json={"task_name": "hello", "limit": 1, "sort": "executed_at asc"},
            headers=AUTH,
        )
        assert [h["id"] for h in await asc.json()] == [first]


async def test_seed_task_history_sorts_by_when_runs_ran(tmp_path):
    """A retry's row is made when its attempt fails, but it runs later: it is listed where it ran."""
    async with api(tmp_path) as (client, engine):
        store, now = engine.store, engine.clock.time()
        await store.insert_run({"id": "retry", "task": "hello", "trigger": "retry", "scheduled_at": now + 60})
        await store.insert_run({"id": "later", "task": "hello", "scheduled_at": now + 30})
        await store.claim_run("later", "elsewhere", now + 30)
        await store.claim_run("retry", "elsewhere", now + 60)
        for sort, ids in (("executed_at desc", ["retry", "later"]), ("executed_at asc", ["later", "retry"])):
            resp = await client.post("/api/admin/task-history", json={"task_name": "hello", "sort": sort},
                                     headers=AUTH)
            history = await resp.json()
            assert [h["id"] for h in history] == ids, sort
            assert [h["executed_at"] for h in history] == sorted((h["executed_at"] for h in history),
                                                                 reverse=sort.endswith("desc"))


async def test_seed_task_history_records_failures(tmp_path):
    async with api(tmp_path) as (client, engine):
        await engine.trigger("boom", wait=True)
        resp = await client.post("/api/admin/task-history", json={"task_name": "boom"}, headers=AUTH)
        (entry,) = await resp.json()
        assert entry["status"] == "failed"
        assert entry["error"]["message"] == "no luck" and entry["error"]["type"] == "Luck"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ('{"task_name": "hello", "sort": "name asc"}', 400, ["sort", "executed_at desc", "executed_at asc"]),
        ('{"task_name": "hello", "limit": "ten"}', 400, ["limit", "string"]),
        ('{"task_name": "hello", "limit": 0}', 400, ["limit", "from 1"]),
        ('{"limit": 5}', 400, ["task_name", "required"]),
        ('{"task_name": 7}', 400, ["task_name", "string"]),
        ('{"task_name": "hello",', 400, ["not valid JSON"]),
        ('["hello"]', 400, ["JSON object", "array"]),
        ("", 400, ["empty"]),
        ('{"task_name": "helo"}', 404, ["helo", "did you mean 'hello'"]),
    ],
)
async def test_task_history_rejects(tmp_path, body, status, words):
    async with api(tmp_path) as (client, _):
        resp = await client.post("/api/admin/task-history", data=body, headers=AUTH)
        assert resp.status == status
        assert resp.content_type == "application/json"
        message = (await resp.json())["message"]
        for word in words:
            assert word in message


async def test_seed_active_tasks(tmp_path):
    async with api(tmp_path) as (client, engine):
        await engine.trigger("hello", wait=True)
        resp = await client.get("/api/admin/active-tasks", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
        tasks = {t["name"]: t for t in await resp.json()}
        assert set(tasks) == set(TASKS)
        hello = tasks["hello"]
        assert hello["status"] == "idle" and hello["schedule"] == "*/5 * * * *"
        assert hello["next_execution"].startswith("20")
        assert hello["last_run"]["status"] == "completed" and hello["last_run"]["executed_at"].endswith("Z")
        assert tasks["off"]["status"] == "inactive" and tasks["off"]["next_execution"] is None
        assert tasks["slow"]["last_run"] is None and tasks["slow"]["next_execution"] is None


async def test_seed_trigger_task(tmp_path):
    async with api(tmp_path) as (client, engine):
        resp = await client.post(
            "/api/admin/trigger-task",
            data=json.dumps({"task_name": "hello", "trigger_source": "manual_dashboard"}),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert resp.status == 202 and resp.ok
        out = await resp.json()
        assert out["status"] == "queued" and out["task_name"] == "hello"
        assert out["run_id"] in out["message"]
        run = await wait_status(engine, out["run_id"], {"completed"})
        assert run["trigger"] == "manual" and run["result"] == 3
        missing = await client.post("/api/admin/trigger-task", json={"task_name": "nope"}, headers=AUTH)
        assert missing.status == 404 and "nope" in (await missing.json())["message"]
        bad = await client.post(
            "/api/admin/trigger-task", json={"task_name": "hello", "trigger_source": 3}, headers=AUTH
        )
        assert bad.status == 400 and "trigger_source" in (await bad.json())["message"]


# --- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/admin/active-tasks"),
        ("POST", "/api/admin/task-history"),
        ("POST", "/api/admin/trigger-task"),
        ("GET", "/api/tasks"),
        ("GET", "/api/tasks/hello"),
        ("GET", "/api/tasks/hello/runs"),
        ("POST", "/api/tasks/hello/trigger"),
        ("POST", "/api/tasks/hello/pause"),
        ("POST", "/api/tasks/hello/resume"),
        ("GET", "/api/runs"),
        ("GET", "/api/runs/abc"),
        ("POST", "/api/runs/abc/cancel"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ],
)
async def test_auth_required(tmp_path, method, path):
    async with api(tmp_path) as (client, engine):
        missing = await client.request(method, path)
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in (await missing.json())["message"]
        basic = await client.request(method, path, headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status == 401
        wrong = await client.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 403 and "not valid" in (await wrong.json())["message"]
        # nothing happened on the engine's side
        assert await engine.runs() == []
        assert (await engine.tasks())[0]["paused"] is False


async def test_public_routes_and_no_token_mode(tmp_path):
    async with api(tmp_path) as (client, _):
        health = await client.get("/healthz")
        assert health.status == 200
        assert (await health.json()) == {"status": "ok", "running": 0, "queued": 0, "scheduler_lag_seconds": 0.0}
        doc = await client.get("/api/openapi.json")
        assert doc.status == 200 and (await doc.json())["openapi"].startswith("3.")
    second = tmp_path / "second"
    second.mkdir()
    async with api(second, token=None) as (client, _):
        assert (await client.get("/api/tasks")).status == 200
        assert (await client.get("/metrics")).status == 200


# --- REST ------------------------------------------------------------------------------


async def test_rest_tasks(tmp_path):
    async with api(tmp_path) as (client, engine):
        run = await engine.trigger("hello", wait=True)
        listed = await (await client.get("/api/tasks", headers=AUTH)).json()
        assert [t["name"] for t in listed] == sorted(TASKS)
        assert listed[1]["last_run"]["id"] == run["id"]  # REST keeps the engine's run dict
        detail = await client.get("/api/tasks/hello", headers=AUTH)
        info = await detail.json()
        assert info["definition"] == TASKS["hello"]
        assert len(info["next_fires"]) == 5 and info["recent_runs"][0]["id"] == run["id"]
        missing = await client.get("/api/tasks/helo", headers=AUTH)
        assert missing.status == 404 and "did you mean 'hello'" in (await missing.json())["message"]


async def test_rest_runs_paging_and_filters(tmp_path):
    async with api(tmp_path) as (client, engine):
        ids = [(await engine.trigger("hello", wait=True))["id"] for _ in range(3)]
        await engine.trigger("boom", wait=True)
        runs = await (await client.get("/api/tasks/hello/runs", headers=AUTH)).json()
        assert [r["id"] for r in runs] == ids[::-1]
        page = await (await client.get("/api/tasks/hello/runs?limit=1&offset=1", headers=AUTH)).json()
        assert [r["id"] for r in page] == [ids[1]]
        oldest = await (await client.get("/api/tasks/hello/runs?order=asc&limit=1", headers=AUTH)).json()
        assert [r["id"] for r in oldest] == [ids[0]]
        failed = await (await client.get("/api/runs?status=failed", headers=AUTH)).json()
        assert [r["task"] for r in failed] == ["boom"]
        everything = await (await client.get("/api/runs", headers=AUTH)).json()
        assert len(everything) == 4
        only = await (await client.get("/api/runs?task=boom", headers=AUTH)).json()
        assert len(only) == 1
        for query, word in [
            ("status=bogus", "status"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("offset=-1", "offset"),
            ("order=sideways", "order"),
        ]:
            resp = await client.get(f"/api/tasks/hello/runs?{query}", headers=AUTH)
            assert resp.status == 400 and word in (await resp.json())["message"], query
        assert (await client.get("/api/tasks/nope/runs", headers=AUTH)).status == 404
        assert (await client.get("/api/runs?task=nope", headers=AUTH)).status == 404


async def test_rest_run_detail(tmp_path):
    async with api(tmp_path) as (client, engine):
        run_id = (await engine.trigger("hello", wait=True))["id"]
        run = await (await client.get(f"/api/runs/{run_id}", headers=AUTH)).json()
        assert run["result"] == 3 and run["status"] == "completed"
        assert [t["kind"] for t in run["trace"]] == ["create_variable", "log", "return"]
        assert [entry["output"] for entry in run["logs"]] == ["x is 3"]
        bare = await (await client.get(f"/api/runs/{run_id}?trace=false", headers=AUTH)).json()
        assert "trace" not in bare and bare["id"] == run_id
        assert (await client.get(f"/api/runs/{run_id}?trace=maybe", headers=AUTH)).status == 400
        missing = await client.get("/api/runs/nope", headers=AUTH)
        assert missing.status == 404 and "nope" in (await missing.json())["message"]


async def test_rest_trigger(tmp_path):
    async with api(tmp_path) as (client, engine):
        done = await client.post("/api/tasks/hello/trigger?wait=true", headers=AUTH)
        assert done.status == 200
        run = await done.json()
        assert run["status"] == "completed" and run["result"] == 3
        failed = await (await client.post("/api/tasks/boom/trigger?wait=1", headers=AUTH)).json()
        assert failed["status"] == "failed" and failed["error"]["message"] == "no luck"
        queued = await client.post("/api/tasks/hello/trigger", json={"source": "cli"}, headers=AUTH)
        assert queued.status == 202
        out = await queued.json()
        assert (await wait_status(engine, out["run_id"], {"completed"}))["result"] == 3
        assert (await client.post("/api/tasks/nope/trigger", headers=AUTH)).status == 404
        bad = await client.post("/api/tasks/hello/trigger", json={"source": 1}, headers=AUTH)
        assert bad.status == 400 and "source" in (await bad.json())["message"]


async def test_rest_pause_resume(tmp_path):
    async with api(tmp_path) as (client, _):
        paused = await client.post("/api/tasks/hello/pause", headers=AUTH)
        assert paused.status == 200 and (await paused.json())["paused"] is True
        info = await (await client.get("/api/tasks/hello", headers=AUTH)).json()
        assert info["status"] == "paused" and info["paused"] is True and info["next_execution"] is None
        resumed = await client.post("/api/tasks/hello/resume", headers=AUTH)
        assert (await resumed.json())["paused"] is False
        info = await (await client.get("/api/tasks/hello", headers=AUTH)).json()
        assert info["status"] == "idle" and info["next_execution"] is not None
        assert (await client.post("/api/tasks/nope/pause", headers=AUTH)).status == 404
        assert (await client.post("/api/tasks/nope/resume", headers=AUTH)).status == 404


async def test_rest_cancel(tmp_path):
    async with api(tmp_path) as (client, engine):
        run_id = await engine.trigger("slow")
        await wait_status(engine, run_id, {"running"})
        resp = await client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
        assert resp.status == 202 and (await resp.json())["cancelled"] is True
        assert (await wait_status(engine, run_id, {"cancelled"}))["status"] == "cancelled"
        again = await client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
        assert again.status == 409
        assert "cancelled" in (await again.json())["message"]
        missing = await client.post("/api/runs/nope/cancel", headers=AUTH)
        assert missing.status == 404


# --- errors ----------------------------------------------------------------------------


async def test_unknown_route_and_method(tmp_path):
    async with api(tmp_path) as (client, _):
        resp = await client.get("/api/nothing", headers=AUTH)
        assert resp.status == 404 and resp.content_type == "application/json"
        assert "/api/nothing" in (await resp.json())["message"]
        wrong = await client.get("/api/admin/trigger-task", headers=AUTH)
        assert wrong.status == 405 and wrong.headers["Allow"] == "POST"
        assert "POST" in (await wrong.json())["message"]


async def test_body_too_large(tmp_path):
    async with api(tmp_path, max_body_bytes=1000) as (client, _):
        big = json.dumps({"task_name": "hello", "pad": "x" * 5000})
        resp = await client.post("/api/admin/task-history", data=big, headers=AUTH)
        assert resp.status == 413
        assert "1000-byte limit" in (await resp.json())["message"]

        async def chunks():
            for _ in range(10):
                yield b"x" * 500

        streamed = await client.post("/api/admin/task-history", data=chunks(), headers=AUTH)
        assert streamed.status == 413 and "1000-byte" in (await streamed.json())["message"]
        small = await client.post("/api/admin/task-history", json={"task_name": "hello"}, headers=AUTH)
        assert small.status == 200


# --- CORS ------------------------------------------------------------------------------


async def test_cors(tmp_path):
    async with api(tmp_path) as (client, _):
        pre = await client.options(
            "/api/admin/trigger-task",
            headers={
                "Origin": DASH,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Origin"] == DASH
        allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        evil = await client.options(
            "/api/admin/trigger-task",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert evil.status == 403 and "Access-Control-Allow-Origin" not in evil.headers
        nowhere = await client.options(
            "/api/nowhere", headers={"Origin": DASH, "Access-Control-Request-Method": "GET"}
        )
        assert nowhere.status == 404
        got = await client.get("/api/admin/active-tasks", headers={**AUTH, "Origin": DASH})
        assert got.headers["Access-Control-Allow-Origin"] == DASH and got.headers["Vary"] == "Origin"
        denied = await client.get("/api/admin/active-tasks", headers={"Origin": DASH})
        assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == DASH
        other = await client.get("/api/admin/active-tasks", headers={**AUTH, "Origin": "https://evil.example"})
        assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers


async def test_engine_failures_become_json(tmp_path, caplog):
    from runtime import CronstackError

    async with api(tmp_path) as (client, engine):

        async def broken():
            raise KeyError("oops")

        async def refuse(name, **kwargs):
            raise CronstackError("the engine is stopping; try again once it restarted")

        engine.tasks = broken
        engine.trigger = refuse
        resp = await client.get("/api/tasks", headers=AUTH)
        assert resp.status == 500
        assert "internal error while serving GET /api/tasks" in (await resp.json())["message"]
        assert "KeyError" in caplog.text
        refused = await client.post("/api/admin/trigger-task", json={"task_name": "hello"}, headers=AUTH)
        assert refused.status == 409 and "stopping" in (await refused.json())["message"]
