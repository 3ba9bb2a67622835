"""Seed conformance, run side: each seed stack runs in the engine against real tables and endpoints.

The engine opens the ``examples/`` project (the seed's stacks verbatim, plus
the functions they call) on an SQLite file in ``tmp_path``, under a
``FakeClock`` so the stacks' ``wait`` steps (60 s, 5 s, 2 s) take no real
time. A local aiohttp server on 127.0.0.1 stands in for n8n, the CRM /
inventory / support APIs and the alert webhook; ``env`` points there.

Where the seed's own logic is wrong the run must fail with an error naming the
step path and the expression -- never a Python traceback. docs/seed.md lists
those places.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from test_seed_compile import seed_stacks

from engine import Engine, FakeClock

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FINISHED = {"completed", "failed", "timed_out", "cancelled", "skipped", "crashed"}
#: 2025-01-16 05:00:00 UTC, the seed's date, an hour before its analytics fire
START = 1_737_003_600.0
DAY = 86_400


# -- a stand-in for the outside world ----------------------------------------------------


class FakeWorld:
    """n8n, the three source systems and the alert webhook, recording what they receive."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.system_records: dict[str, list[dict[str, Any]]] = {"crm": [], "inventory": [], "support": []}
        self.n8n_status = 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    def received(self, prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(prefix)]

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "json": json.loads(body) if body else None,
        }
        self.requests.append(entry)
        return entry

    async def n8n(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.n8n_status >= 400:
            return web.json_response({"message": "workflow is inactive"}, status=self.n8n_status)
        return web.json_response({"execution_id": "exec-42", "message": "Workflow was started"})

    async def export(self, request: web.Request) -> web.Response:
        await self._record(request)
        system = request.match_info["system"]
        return web.json_response({"records": self.system_records[system]})

    async def alert(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"ok": True})

    async def __aenter__(self) -> FakeWorld:
        app = web.Application()
        app.router.add_post("/n8n/xano-data-sync", self.n8n)
        app.router.add_get("/{system}/export/incremental", self.export)
        app.router.add_post("/alert", self.alert)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def env(self) -> dict[str, str]:
        env = {
            "N8N_WEBHOOK_URL": f"{self.url}/n8n",
            "N8N_API_KEY": "n8n-secret-key",
            "ALERT_WEBHOOK_URL": f"{self.url}/alert",
        }
        for system in self.system_records:
            env[f"{system.upper()}_API_URL"] = f"{self.url}/{system}"
            env[f"{system.upper()}_API_KEY"] = f"{system}-secret-key"
        return env


@pytest.fixture
async def world():
    async with FakeWorld() as w:
        yield w


@pytest.fixture
def clock():
    return FakeClock(start=START)


@pytest.fixture
async def engine(tmp_path, world, clock):
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'seed.db'}", env=world.env(), clock=clock) as eng:
        yield eng


# -- helpers ------------------------------------------------------------------------------


async def seed(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` through a stack (the public way in)."""
    await engine.run_stack(
        [{"function": "loop", "array": "{{ rows }}", "operations": [{"function": "add_record", "table": table, "data": "{{ item }}"}]}],
        {"rows": rows},
    )


async def rows(engine: Engine, table: str, sort: str = "id asc") -> list[dict[str, Any]]:
    return await engine.run_stack(
        [
            {"function": "query_all_records", "table": table, "sort": sort, "return_as": "found"},
            {"function": "return", "value": "{{ found }}"},
        ]
    )


async def drive(engine: Engine, clock: FakeClock, run_id: str, *, rounds: int = 50_000) -> dict[str, Any]:
    """Let run ``run_id`` (and the async runs it starts) finish, moving virtual time through waits.

    Timeouts are timers on the clock, not sleepers (``FakeClock.call_at``):
    when anything sleeps, some run sits in a ``wait`` step and time jumps to
    the earliest deadline (as real time would pass); otherwise runs are busy
    with real I/O and only real time passes.
    """
    for _ in range(rounds):
        run = await engine.run(run_id, trace=False)
        assert run is not None
        if run["status"] in FINISHED and engine.stats()["running"] == 0:
            return await engine.run(run_id)  # type: ignore[return-value]
        if clock.sleepers:  # a `wait` step
            await clock.advance_to(clock.next_deadline())
        else:
            await anyio.sleep(0.001)  # runs are busy with real I/O
    raise AssertionError(f"run {run_id} did not finish")


async def run_task(engine: Engine, clock: FakeClock, name: str) -> dict[str, Any]:
    run_id = await engine.trigger(name)
    assert isinstance(run_id, str)
    return await drive(engine, clock, run_id)


def assert_clear_failure(run: dict[str, Any], step: str, *needles: str) -> None:
    """Failed at ``step``, the message names what went wrong, and no Python traceback shows."""
    assert run["status"] == "failed", run
    error = run["error"]
    assert error["step"] == step, error
    text = json.dumps(error)
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])
    assert "Traceback" not in text and "File \"" not in text and "InternalError" not in text


# -- n8n: daily_data_sync -------------------------------------------------------------------


async def test_n8n_sync_sends_the_last_days_pending_items(engine, clock, world):
    await seed(engine, "pending_sync_items", [{"status": "pending", "reference": "too-old"}])
    await clock.advance(2 * DAY)
    await seed(engine, "pending_sync_items", [
        {"status": "pending", "reference": "a"},
        {"status": "pending", "reference": "b"},
        {"status": "synced", "reference": "c"},
    ])
    await clock.advance(60)
    run = await run_task(engine, clock, "daily_data_sync")
    assert run["status"] == "completed", run["error"]

    (sent,) = world.received("/n8n/")
    assert sent["method"] == "POST" and sent["path"] == "/n8n/xano-data-sync"
    assert sent["headers"]["Authorization"] == "Bearer n8n-secret-key"
    body = sent["json"]
    assert body["source"] == "xano_background_task" and body["task_id"] == "daily_data_sync"
    assert sorted(r["reference"] for r in body["data"]) == ["a", "b"]
    assert body["metadata"]["total_items"] == 2

    (log,) = await rows(engine, "task_execution_logs")
    assert log["task_name"] == "daily_data_sync" and log["status"] == "completed"
    summary = log["summary"]
    assert summary["n8n_workflow_triggered"] is True
    assert summary["n8n_execution_id"] == "exec-42"
    assert summary["records_sent"] == 2
    assert summary["records_processed"] == 0  # the seed never updates it
    assert summary["started_at"] == pytest.approx(START + 2 * DAY + 60)
    # the API key is a secret: the run's trace never shows it
    full = await engine.run(run["id"])
    assert "n8n-secret-key" not in json.dumps(full)


async def test_n8n_error_status_fails_the_run_with_status_and_body(engine, clock, world):
    world.n8n_status = 503
    run = await run_task(engine, clock, "daily_data_sync")
    assert run["status"] == "failed"
    assert run["error"]["step"] == "stack[2]"
    assert run["error"]["status"] == 503
    assert run["error"]["body"] == {"message": "workflow is inactive"}
    assert await rows(engine, "task_execution_logs") == []


async def test_tasks_needing_env_stay_inactive_without_it(tmp_path):
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'noenv.db'}", env={}, clock=FakeClock(START)) as eng:
        info = {t["name"]: t for t in await eng.tasks()}
    for name, missing in {
        "daily_data_sync": ["N8N_WEBHOOK_URL", "N8N_API_KEY"],
        "external_data_sync": ["CRM_API_URL", "CRM_API_KEY", "INVENTORY_API_URL", "INVENTORY_API_KEY", "SUPPORT_API_URL", "SUPPORT_API_KEY"],
        "data_processing_task": ["ALERT_WEBHOOK_URL"],
    }.items():
        assert info[name]["status"] == "inactive" and info[name]["active"] is False
        assert info[name]["missing_env"] == missing
        assert info[name]["next_execution"] is None
    for name in ("heartbeat", "daily_user_analytics", "weekly_newsletter", "data_cleanup", "process_pending_items"):
        assert info[name]["active"] is True and info[name]["next_execution"] is not None, name


async def test_env_activates_the_integration_tasks(engine):
    info = {t["name"]: t for t in await engine.tasks()}
    for name in ("daily_data_sync", "external_data_sync", "data_processing_task"):
        assert info[name]["active"] is True and info[name]["missing_env"] == []


# -- analytics: daily_user_analytics ---------------------------------------------------------


async def test_daily_analytics_counts_yesterday_and_mails_the_report(engine, clock):
    await seed(engine, "users", [{"name": "old"}])
    await clock.advance(2 * DAY)
    await seed(engine, "users", [{"name": "ada"}, {"name": "grace"}, {"name": "alan"}])
    await seed(engine, "user_sessions", [
        {"user_id": 2, "page": "/", "duration": 100},
        {"user_id": 2, "page": "/docs", "duration": 200},
        {"user_id": 3, "page": "/", "duration": 300},
        {"user_id": 4, "page": "/pricing", "duration": 400},
    ])
    await clock.advance(3600)
    run = await run_task(engine, clock, "daily_user_analytics")
    assert run["status"] == "completed", run["error"]

    (report,) = await rows(engine, "daily_analytics")
    assert report["date"] == "2025-01-18"  # START + 2 days + 1 h, in UTC
    assert report["new_users"] == 3
    assert report["total_sessions"] == 4
    assert report["unique_users"] == 3
    assert report["average_session_duration"] == 250
    pages = [(g["key"], g["count"]) for g in report["top_pages"]]
    assert pages == [("/", 2), ("/docs", 1), ("/pricing", 1)]  # group_by: order of first appearance

    # send_analytics_email ran as its own durable run (execution_mode async)
    children = [r for r in await engine.runs() if r["parent_id"] == run["id"]]
    assert [(c["task"], c["trigger"], c["status"]) for c in children] == [("send_analytics_email", "async_call", "completed")]
    mails = await rows(engine, "outbox")
    assert sorted(m["to"] for m in mails) == ["admin@company.com", "marketing@company.com"]
    assert all("New users: 3" in m["body"] and m["subject"] == "Daily analytics 2025-01-18" for m in mails)


async def test_daily_analytics_on_an_empty_day(engine, clock):
    run = await run_task(engine, clock, "daily_user_analytics")
    assert run["status"] == "completed", run["error"]
    (report,) = await rows(engine, "daily_analytics")
    assert report["new_users"] == 0 and report["total_sessions"] == 0
    assert report["average_session_duration"] is None  # average of no sessions
    assert report["top_pages"] == []


# -- newsletter: weekly_newsletter ------------------------------------------------------------


async def test_weekly_newsletter_sends_in_batches_with_a_minute_between(engine, clock):
    subscribers = [{"email": f"s{i}@example.com", "name": f"S{i}", "status": "active", "unsubscribed": False} for i in range(120)]
    subscribers += [
        {"email": "gone@example.com", "status": "active", "unsubscribed": True},
        {"email": "paused@example.com", "status": "paused", "unsubscribed": False},
    ]
    await seed(engine, "newsletter_subscribers", subscribers)
    await seed(engine, "daily_analytics", [{"date": "2025-01-15", "total_sessions": 7}, {"date": "2025-01-16", "total_sessions": 5}])
    await clock.advance(60)
    run = await run_task(engine, clock, "weekly_newsletter")
    assert run["status"] == "completed", run["error"]
    # two batches, each followed by the seed's 60 s wait, in virtual time
    assert run["finished_at"] - run["started_at"] >= 120

    (log,) = await rows(engine, "campaign_logs")
    assert log["campaign_name"] == "weekly_newsletter"
    assert log["recipients_count"] == 120 and log["batches_sent"] == 2 and log["status"] == "completed"

    deliveries = await rows(engine, "newsletter_deliveries")
    assert len(deliveries) == 120
    assert {d["to"] for d in deliveries} == {f"s{i}@example.com" for i in range(120)}
    assert {d["campaign_id"] for d in deliveries} == {"weekly_newsletter_2025-01-16"}
    assert all("12 sessions" in d["body"] for d in deliveries)
    children = [r for r in await engine.runs(limit=500) if r["parent_id"] == run["id"]]
    assert len(children) == 120 and {c["status"] for c in children} == {"completed"}
    stamped = [s for s in await rows(engine, "newsletter_subscribers") if s.get("last_campaign")]
    assert len(stamped) == 120


# -- multi-system sync: external_data_sync ----------------------------------------------------


async def test_external_sync_fails_on_item_parent_name_of_a_text(engine, clock, world):
    world.system_records["crm"] = [{"id": "c1", "name": "Acme"}, {"id": "c2", "name": "Globex"}]
    run = await run_task(engine, clock, "external_data_sync")
    assert_clear_failure(
        run,
        "stack[1].operations[1].true_branch[0].operations[0]",
        "item_parent.name",
        "text",
    )
    (call,) = world.received("/crm/")
    assert call["headers"]["Authorization"] == "Bearer crm-secret-key"
    assert call["headers"]["Accept"] == "application/json"
    assert call["query"]["format"] == "json"
    assert float(call["query"]["since"]) == pytest.approx(START - 3600)
    assert world.received("/inventory/") == [] and world.received("/support/") == []
    assert await rows(engine, "sync_logs") == []


async def test_external_sync_fails_on_the_sync_session_it_never_created(engine, clock, world):
    """With nothing to import the loop succeeds, then edit_record of sync_sessions finds no record."""
    run = await run_task(engine, clock, "external_data_sync")
    assert_clear_failure(run, "stack[2]")
    assert run["error"]["type"] == "RecordNotFound", run["error"]
    assert "sync_sessions" in run["error"]["message"]
    logs = await rows(engine, "sync_logs")
    assert [(log["system"], log["records_synced"], log["status"]) for log in logs] == [
        ("crm", 0, "completed"), ("inventory", 0, "completed"), ("support", 0, "completed"),
    ]
    assert len({log["session_id"] for log in logs}) == 1


async def test_external_sync_is_caught_by_try_catch_when_wrapped(engine, clock, world):
    """The failure is an ordinary run error: a stack can catch it and read error.step."""
    world.system_records["crm"] = [{"id": "c1"}]
    stack = seed_stacks()["external_data_sync"]
    result = await engine.run_stack([
        {"function": "try_catch", "try_block": stack, "catch_block": [{"function": "return", "value": "{{ error }}"}]},
    ])
    assert result["type"] == "ExpressionError"
    assert result["step"] == "stack[0].try_block[1].operations[1].true_branch[0].operations[0]"
    assert "item_parent.name" in result["message"]


# -- cleanup: data_cleanup --------------------------------------------------------------------


async def test_cleanup_fails_on_item_parent_name_once_there_is_something_to_delete(engine, clock):
    await seed(engine, "logs", [{"message": f"old {i}"} for i in range(3)])
    await clock.advance(91 * DAY)
    await seed(engine, "logs", [{"message": "recent"}])
    run = await run_task(engine, clock, "data_cleanup")
    assert_clear_failure(run, "stack[2].operations[1].operations[2].operations[0]", "item_parent.name", "text")
    assert len(await rows(engine, "logs")) == 4  # nothing was deleted
    assert await rows(engine, "cleanup_logs") == []


async def test_cleanup_with_nothing_old_logs_every_table(engine, clock):
    await seed(engine, "logs", [{"message": "recent"}])
    await clock.advance(DAY)
    run = await run_task(engine, clock, "data_cleanup")
    assert run["status"] == "completed", run["error"]
    logs = await rows(engine, "cleanup_logs")
    assert [(c["table_name"], c["records_deleted"], c["batches_processed"], c["retention_days"]) for c in logs] == [
        ("logs", 0, 0, 90), ("temp_files", 0, 0, 90), ("expired_sessions", 0, 0, 90), ("old_notifications", 0, 0, 90),
    ]
    assert len(await rows(engine, "logs")) == 1


# -- batch processing: process_pending_items --------------------------------------------------


async def test_batch_processing_prices_items_until_a_poison_one(engine, clock):
    items = [
        {"status": "pending", "priority": 2, "payload": {"quantity": 2, "unit_price": 1.25}},
        {"status": "pending", "priority": 1, "payload": {"quantity": 0, "unit_price": 9}},
        {"status": "pending", "priority": 1, "payload": {"quantity": 3, "unit_price": 2}},
        {"status": "pending", "priority": 0, "payload": {"poison": True}},
        {"status": "pending", "priority": 0, "payload": {"quantity": 1, "unit_price": 1}},
        {"status": "done", "priority": 9, "payload": {"quantity": 1, "unit_price": 1}},
    ]
    await seed(engine, "pending_processing_items", items)
    await clock.advance(1)
    run = await run_task(engine, clock, "process_pending_items")
    assert run["status"] == "completed", run["error"]
    got = {r["id"]: r for r in await rows(engine, "pending_processing_items")}
    assert got[1]["status"] == "completed" and got[1]["result"] == {"success": True, "total": 2.5, "reason": None}
    assert got[2]["status"] == "failed" and got[2]["result"]["reason"] == "quantity must be positive"
    assert got[3]["status"] == "completed" and got[3]["result"]["total"] == 6
    # the poison item throws; the seed's catch block counts the whole batch as failed and moves on
    assert got[4]["status"] == "pending" and "processed_at" not in got[4]
    assert got[5]["status"] == "pending"
    assert got[6]["status"] == "done" and "processed_at" not in got[6]
    assert await rows(engine, "processing_logs") == []  # the 240 s budget was not reached
    full = await engine.run(run["id"])
    caught = [e for e in full["trace"] if e["path"] == "stack[4].operations[1].catch_block[0]"]
    assert caught and caught[0]["output"]["failed_items"] == 5


# -- error handling: data_processing_task -----------------------------------------------------


async def test_error_handling_success_logs_the_result(engine, clock, world):
    await seed(engine, "pending_processing_items", [{"status": "failed"}, {"status": "failed"}, {"status": "pending"}])
    run = await run_task(engine, clock, "data_processing_task")
    assert run["status"] == "completed", run["error"]
    (log,) = await rows(engine, "task_execution_logs")
    assert log["task_name"] == "data_processing_task" and log["status"] == "completed"
    assert log["result"]["requeued"] == 2 and log["result"]["pending"] == 3
    assert log["result"]["execution_id"] == log["execution_id"]
    assert {r["status"] for r in await rows(engine, "pending_processing_items")} == {"pending"}
    assert await rows(engine, "task_retry_queue") == []
    assert world.received("/alert") == []


async def test_error_handling_failure_queues_a_retry_and_never_alerts(tmp_path, clock, world):
    """main_task_logic fails: the catch block records the error and queues a retry in 300 s.

    The alert branch needs retry_count >= max_retries, but the stack sets
    retry_count to 0 on every run, so the alert webhook is never called.
    """
    task = json.loads((EXAMPLES / "tasks" / "data_processing_task.json").read_text())
    failing = {"name": "main_task_logic", "inputs": {"execution_context": {}}, "stack": [
        {"function": "throw_error", "message": "upstream unavailable", "type": "Unavailable"}]}
    async with Engine.open([task, failing], database=f"sqlite:///{tmp_path / 'fail.db'}", env=world.env(), clock=clock) as eng:
        run = await run_task(eng, clock, "data_processing_task")
        assert run["status"] == "completed", run["error"]
        (retry,) = await rows(eng, "task_retry_queue")
        (log,) = await rows(eng, "task_execution_logs")
    assert retry["retry_count"] == 1 and retry["retry_at"] == pytest.approx(START + 300)
    assert retry["original_error"]["type"] == "Unavailable"
    assert retry["original_error"]["message"] == "upstream unavailable"
    assert retry["original_error"]["step"] == "stack[1].try_block[0] > stack[0]"
    assert log["status"] == "failed" and log["error"]["type"] == "Unavailable"
    assert log["execution_id"] == retry["execution_id"]
    assert world.received("/alert") == []
