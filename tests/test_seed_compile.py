"""Seed conformance, compile side: every JSON stack of the seed compiles unchanged.

The seed (``/work/shared/seed/background-tasks.md``, or ``$CRONSTACK_SEED``)
writes its stacks in ```javascript blocks with ``//`` comments. Only the
comments are stripped -- a string-aware scan, so ``//`` inside a JSON string
would survive -- and the rest must parse as JSON and compile as it stands.
Each stack must also be present verbatim (as parsed JSON) in a task of
``examples/tasks/``, so the example project really runs the seed.

The helpers here (``seed_stacks``, ``seed_task_config``) are imported by
``test_seed_run.py``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compiler import compile_task, load_definitions, lower_stack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SEED = Path(os.environ.get("CRONSTACK_SEED", "/work/shared/seed/background-tasks.md"))

#: The first comment line of each seed stack -> the task of examples/ that runs it.
STACK_TASKS = {
    "n8n webhook integration from background task": "daily_data_sync",
    "Comprehensive analytics processing": "daily_user_analytics",
    "Automated email campaign processing": "weekly_newsletter",
    "Multi-system data synchronization": "external_data_sync",
    "Automated database maintenance": "data_cleanup",
    "Efficient batch processing pattern": "process_pending_items",
    "Error handling and recovery system": "data_processing_task",
}

_AFTER = datetime(2025, 1, 16, tzinfo=UTC)
_BLOCK = re.compile(r"```javascript\n(.*?)```", re.S)


def strip_comments(source: str) -> str:
    """Drop ``//`` comments (whole lines and trailing ones) outside JSON strings; nothing else."""
    out = []
    for line in source.splitlines():
        in_string = False
        i = 0
        cut = len(line)
        while i < len(line):
            c = line[i]
            if in_string:
                if c == "\\":
                    i += 2
                    continue
                if c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif line.startswith("//", i):
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


def _title(block: str) -> str:
    first = block.lstrip().splitlines()[0].strip()
    return first[2:].strip() if first.startswith("//") else ""


def seed_blocks() -> list[tuple[str, Any]]:
    """(title, parsed JSON) of every javascript block of the seed that is JSON once comments go."""
    text = SEED.read_text(encoding="utf-8")
    found = []
    for block in _BLOCK.findall(text):
        try:
            value = json.loads(strip_comments(block))
        except json.JSONDecodeError:
            continue  # the WeWeb monitor: JavaScript code, not a definition
        found.append((_title(block), value))
    return found


def _is_stack(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(s, dict) and "function" in s for s in value)


def seed_stacks() -> dict[str, list[Any]]:
    """Every seed stack, keyed by the name of the example task that runs it."""
    out = {}
    for title, value in seed_blocks():
        if _is_stack(value):
            out[STACK_TASKS[title]] = value
    return out


def seed_task_config() -> dict[str, Any]:
    """The seed's "Background task configuration" block (a task without a stack)."""
    for title, value in seed_blocks():
        if title == "Background task configuration":
            return value
    raise AssertionError("the seed has no task configuration block")


def example_tasks() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((EXAMPLES / "tasks").glob("*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        out[raw["name"]] = raw
    return out


pytestmark = pytest.mark.skipif(not SEED.is_file(), reason=f"seed document not found at {SEED}")


def test_the_seed_has_the_expected_blocks():
    blocks = seed_blocks()
    stacks = [title for title, value in blocks if _is_stack(value)]
    # Every stack block has a known title, and there are no stack blocks we do not map.
    assert sorted(stacks) == sorted(STACK_TASKS)
    assert len(seed_stacks()) == 7


def test_strip_comments_only_removes_comments():
    src = '{"url": "http://x//y", // trailing\n// whole line\n"a": "b\\"//c"}'
    assert json.loads(strip_comments(src)) == {"url": "http://x//y", "a": 'b"//c'}


@pytest.mark.parametrize("task_name", sorted(STACK_TASKS.values()))
def test_seed_stack_compiles_unchanged(task_name):
    stack = seed_stacks()[task_name]
    before = json.dumps(stack, sort_keys=True)
    low = lower_stack(stack, task_name)
    assert low.diagnostics == [], "\n".join(map(str, low.diagnostics))
    assert json.dumps(stack, sort_keys=True) == before  # compiling never rewrites the stack
    assert len(low.program.instrs) > len(stack)


def test_seed_task_configuration_compiles_as_a_task():
    config = seed_task_config()
    stack = seed_stacks()["daily_user_analytics"]
    task = compile_task({**config, "stack": stack})
    assert task.name == "daily_user_analytics"
    assert task.schedule == "0 6 * * *"
    assert task.timeout == 300
    assert task.retry_policy.max_retries == 3 and task.retry_policy.retry_delay == 60
    assert task.request_history.enabled and task.request_history.retention_days == 30
    assert task.data_source == "primary_database"
    assert task.tags == ("analytics", "reporting", "daily")


@pytest.mark.parametrize("task_name", sorted(STACK_TASKS.values()))
def test_seed_stack_is_in_examples_verbatim(task_name):
    tasks = example_tasks()
    assert task_name in tasks, f"examples/tasks/ has no task '{task_name}'"
    assert tasks[task_name]["stack"] == seed_stacks()[task_name]


def test_example_analytics_task_carries_the_seed_configuration():
    config = seed_task_config()
    task = example_tasks()["daily_user_analytics"]
    for key, value in config.items():
        assert task[key] == value, key


def test_seed_schedules_parse():
    """The cron reference block: every expression is accepted by the scheduler."""
    from engine import Schedule

    reference = next(v for t, v in seed_blocks() if t.startswith("Cron expression format"))
    exprs = [e for group in reference.values() for e in group.values()]
    assert len(exprs) == 13
    for expr in exprs:
        assert Schedule(expr).next_fires(_AFTER, 1), expr


def test_examples_project_compiles_with_the_seed_inside():
    defs = load_definitions(EXAMPLES)
    assert set(STACK_TASKS.values()) <= set(defs.tasks)
