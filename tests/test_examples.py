"""The example project that ``make run`` serves: it compiles, its schedules parse, and it runs offline.

This is ``cronstack check examples`` in test form, plus the promise of the
README: with no network and no environment variables, runs complete within a
minute of starting (the heartbeat every 10 s, demo data every 30 s).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from compiler import check_calls, load_definitions, lower_stack
from engine import Engine, FakeClock, RunFailed, Schedule
from engine._config import load_config

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
START = 1_737_003_600.0  # 2025-01-16 05:00:00 UTC
FINISHED = {"completed", "failed", "timed_out", "cancelled", "skipped", "crashed"}


def test_examples_compile_and_every_call_resolves():
    defs = load_definitions(EXAMPLES)
    assert len(defs.tasks) == 9 and len(defs.functions) == 5
    assert check_calls(defs) == []
    for fn in defs.functions.values():
        assert fn.description, f"function {fn.name} needs a description"
    for task in defs.tasks.values():
        assert task.description, f"task {task.name} needs a description"


def test_every_schedule_parses_and_fires():
    defs = load_definitions(EXAMPLES)
    after = datetime.fromtimestamp(START, UTC)
    for task in defs.tasks.values():
        assert task.schedule is not None, f"{task.name} has no schedule"
        fires = Schedule(task.schedule, task.timezone, task.cron_day_match).next_fires(after, 3)
        assert len(fires) == 3 and fires[0] > after and fires == sorted(fires), task.name


def test_heartbeat_is_six_field_every_ten_seconds():
    task = load_definitions(EXAMPLES).tasks["heartbeat"]
    fires = Schedule(task.schedule).next_fires(datetime(2025, 1, 16, 5, 0, 3, tzinfo=UTC), 3)
    assert [f.second for f in fires] == [10, 20, 30]


def test_config_declares_the_api_and_indexes():
    cfg = load_config(EXAMPLES)
    assert (cfg.api_host, cfg.api_port) == ("127.0.0.1", 7600)
    for table, field in [
        ("users", "created_at"),
        ("user_sessions", "created_at"),
        ("pending_sync_items", "status"),
        ("newsletter_subscribers", "status"),
        ("pending_processing_items", "status"),
        ("logs", "created_at"),
    ]:
        assert field in cfg.indexes[table], (table, field)


async def test_heartbeat_runs_to_completion(tmp_path):
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'ex.db'}", env={}) as engine:
        first = await engine.trigger("heartbeat", wait=True)
        second = await engine.trigger("heartbeat", wait=True)
    assert first["status"] == "completed", first["error"]
    assert first["result"]["beats_last_hour"] == 1 and first["result"]["pruned"] == 0
    assert second["result"]["beats_last_hour"] == 2


async def _finish(engine: Engine, clock: FakeClock, run_id: str) -> dict:
    for _ in range(50_000):
        run = await engine.run(run_id, trace=False)
        if run["status"] in FINISHED and engine.stats()["running"] == 0:
            return run
        if clock.sleepers:  # a run sits in a `wait` step (timeouts are timers, not sleepers)
            await clock.advance_to(clock.next_deadline())
        else:
            await anyio.sleep(0.001)  # runs are busy with real I/O
    raise AssertionError(f"run {run_id} did not finish")


async def test_demo_data_feeds_the_seed_tasks_offline(tmp_path):
    """With no env set, the seed tasks that need no outside system complete on the demo data."""
    clock = FakeClock(START)
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'ex.db'}", env={}, clock=clock) as engine:
        for _ in range(2):
            run = await _finish(engine, clock, await engine.trigger("generate_demo_data"))
            assert run["status"] == "completed", run["error"]
            await clock.advance(30)
        results = {}
        for name in ("daily_user_analytics", "weekly_newsletter", "process_pending_items", "data_cleanup"):
            results[name] = await _finish(engine, clock, await engine.trigger(name))
        counts = await engine.run_stack([
            {"function": "count_records", "table": "daily_analytics", "return_as": "analytics"},
            {"function": "count_records", "table": "newsletter_deliveries", "return_as": "deliveries"},
            {"function": "count_records", "table": "pending_processing_items", "filter": {"status": "pending"}, "return_as": "pending"},
            {"function": "count_records", "table": "newsletter_subscribers", "return_as": "subscribers"},
            {"function": "return", "value": {"analytics": "{{ analytics }}", "deliveries": "{{ deliveries }}",
                                              "pending": "{{ pending }}", "subscribers": "{{ subscribers }}"}},
        ])
    for name, run in results.items():
        assert run["status"] == "completed", (name, run["error"])
    assert counts["analytics"] == 1
    assert counts["subscribers"] == 5 and counts["deliveries"] == 5
    assert counts["pending"] < 6  # the batch run processed some of the six demo items


async def test_serving_fires_the_heartbeat_on_schedule(tmp_path):
    """What `make run` shows: the scheduler fires the 10-second heartbeat by itself."""
    clock = FakeClock(START)
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'ex.db'}", env={}, clock=clock) as engine:
        await engine.serve(api=False)
        done = []
        for _ in range(2000):
            done = [r for r in await engine.runs("heartbeat") if r["status"] == "completed"]
            if len(done) >= 2:
                break
            nxt = clock.next_deadline()
            if nxt is not None and engine.stats()["running"] == 0:
                await clock.advance_to(nxt)  # idle: jump to the scheduler's next fire
            else:
                await anyio.sleep(0.001)
        await engine.stop()
    assert len(done) >= 2
    assert {r["trigger"] for r in done} == {"schedule"}
    assert all(r["scheduled_at"] % 10 == 0 for r in done)


# -- docs/steps.md and docs/tasks.md: the examples compile and run ----------------------------

DOCS = EXAMPLES.parent / "docs"
_JSON_BLOCK = re.compile(r"```json\n(.*?)```(?:\s*\nResult: `(.*?)`)?", re.S)


def doc_examples(name: str) -> list[tuple[int, Any, Any]]:
    """(line, parsed JSON, documented result or _NO_RESULT) of every ```json block of docs/NAME."""
    text = (DOCS / name).read_text(encoding="utf-8")
    out = []
    for m in _JSON_BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        result = json.loads(m.group(2)) if m.group(2) is not None else _NO_RESULT
        out.append((line, json.loads(m.group(1)), result))
    return out


_NO_RESULT = object()
_STEP_KINDS_NEEDING_NETWORK = {"external_api_request"}


def _is_stack(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, dict) and "function" in s for s in value)


def _kinds(steps: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, dict):
                found.add(step.get("function"))
                for value in step.values():
                    found |= _kinds(value)
                    if isinstance(value, dict):
                        for branch in value.values():
                            found |= _kinds(branch)
    return found


def test_steps_doc_covers_every_step_kind_with_an_example():
    from compiler._steps import STEPS

    stacks = [value for _line, value, _r in doc_examples("steps.md") if _is_stack(value)]
    assert len(stacks) >= 20
    shown = set().union(*(_kinds(s) for s in stacks))
    assert set(STEPS) <= shown, f"no example for {sorted(set(STEPS) - shown)}"
    text = (DOCS / "steps.md").read_text(encoding="utf-8")
    for kind in STEPS:
        assert f"### {kind}" in text or f"### {kind} and" in text or f"and {kind}" in text, kind


@pytest.mark.parametrize("doc", ["steps.md", "tasks.md"])
def test_doc_examples_compile(doc):
    from compiler import compile_definition

    functions = load_definitions(EXAMPLES).functions
    checked = 0
    for line, value, _result in doc_examples(doc):
        if _is_stack(value):
            low = lower_stack(value, "doc_example")
            assert low.diagnostics == [], f"docs/{doc} line {line}: {low.diagnostics}"
            for fn, path in low.calls:
                assert fn in functions, f"docs/{doc} line {line}: {path} calls unknown function {fn}"
            checked += 1
        elif isinstance(value, dict) and "stack" in value:
            compile_definition(value)
            checked += 1
    assert checked >= (20 if doc == "steps.md" else 2)


async def test_steps_doc_examples_run_and_give_the_documented_results(tmp_path):
    """Every example without network access runs; those with a `Result:` line give exactly it."""
    async with Engine.open(EXAMPLES, database=f"sqlite:///{tmp_path / 'docs.db'}", env={}) as engine:
        for line, value, expected in doc_examples("steps.md"):
            if not _is_stack(value) or _kinds(value) & _STEP_KINDS_NEEDING_NETWORK:
                continue
            try:
                result = await engine.run_stack(value)
            except RunFailed as exc:
                raise AssertionError(f"docs/steps.md line {line}: {exc.error}") from None
            if expected is not _NO_RESULT:
                assert result == expected, f"docs/steps.md line {line}"


def test_cronstack_check_accepts_the_examples_with_every_seed_stack(capsys):
    """`cronstack check examples` compiles every seed stack as shipped and prints each task's next fires."""
    from engine._cli import EXIT_OK, main

    assert main(["check", str(EXAMPLES)]) == EXIT_OK
    out = capsys.readouterr().out
    for name in ("daily_user_analytics", "daily_data_sync", "weekly_newsletter", "external_data_sync",
                 "data_cleanup", "process_pending_items", "data_processing_task"):
        assert name in out
    assert "ok: 9 tasks, 5 functions" in out
