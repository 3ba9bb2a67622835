"""Compiling a project: 1,000 seed-like task files from disk with ``compiler.load_definitions``.

The files are generated into a temporary folder, each a realistic stack in
the seed's style (variables, a query, a loop with a conditional and record
writes, an HTTP call inside try/catch, a merge, a log-style insert), with
names and numbers varied so that no two expressions are identical. Figure:
seconds to load and compile them all (target < 1 s for 1,000, pro rata in quick mode with 250). Baseline in
the same run: reading the same files and ``json.loads`` of each (what any
loader must at least do). No event loop is involved.
Run: ``.venv/bin/python -m benchmarks.bench_compile [--quick] [--json PATH]``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import Result, parse_args, report, time_call
from compiler import load_definitions


def task_definition(i: int) -> dict[str, Any]:
    """A seed-like task (see seed/background-tasks.md), varied by ``i``."""
    return {
        "name": f"sync_task_{i:05d}",
        "description": f"Daily sync number {i}",
        "tags": ["sync", f"group_{i % 7}"],
        "schedule": f"{i % 60} {(i // 60) % 24} * * *",
        "timezone": ["UTC", "Europe/Paris", "America/New_York"][i % 3],
        "retry_policy": {"max_retries": i % 4, "retry_delay": 60, "backoff": 2.0},
        "stack": [
            {"function": "create_variable", "name": "summary", "value": {
                "task_name": f"sync_task_{i:05d}", "started_at": "{{ now }}", "records_processed": 0, "status": "running"}},
            {"function": "query_all_records", "table": f"pending_items_{i % 13}", "filter": {
                "status": "pending", "created_at": {"$gte": f"{{{{ now - {86400 + i} }}}}"}},
             "sort": "priority desc, created_at asc", "limit": 100 + i % 50, "return_as": "items"},
            {"function": "loop", "array": "{{ items }}", "operations": [
                {"function": "conditional", "condition": f"item.priority > {i % 5} and item.status == 'pending'",
                 "true_branch": [
                     {"function": "edit_record", "table": f"pending_items_{i % 13}", "id": "{{ item.id }}",
                      "data": {"status": "processed", "processed_at": "{{ now }}"}},
                     {"function": "update_variable", "name": "summary", "operation": "merge",
                      "value": {"records_processed": "{{ summary.records_processed + 1 }}"}}],
                 "false_branch": [
                     {"function": "add_record", "table": "skipped_items", "data": {
                         "item_id": "{{ item.id }}", "reason": f"{{{{ 'priority ' ~ item.priority ~ ' below {i % 5}' }}}}"}}]},
            ]},
            {"function": "try_catch", "try_block": [
                {"function": "external_api_request", "url": "{{ env.WEBHOOK_URL }}/" + f"sync-{i}", "method": "POST",
                 "headers": {"Authorization": "Bearer {{ env.API_KEY }}", "Content-Type": "application/json"},
                 "body": {"task_id": f"sync_task_{i:05d}", "count": "{{ items|length }}",
                          "ids": "{{ items|map(attribute='id')|limit(20) }}"},
                 "return_as": "response"}],
             "catch_block": [
                 {"function": "update_variable", "name": "summary", "operation": "merge",
                  "value": {"status": "webhook_failed", "error": "{{ error.message }}"}}]},
            {"function": "add_record", "table": "task_execution_logs", "data": {
                "task_name": f"sync_task_{i:05d}", "status": "{{ summary.status == 'running' ? 'completed' : summary.status }}",
                "summary": "{{ summary }}", "executed_at": "{{ now|date('Y-m-d H:i:s') }}"}},
        ],
    }  # fmt: skip


def write_project(folder: Path, count: int) -> int:
    """Write ``count`` task files into ``folder`` (ten sub-folders); total bytes written."""
    total = 0
    for i in range(count):
        sub = folder / f"group_{i % 10}"
        sub.mkdir(exist_ok=True)
        data = json.dumps(task_definition(i), indent=2)
        (sub / f"sync_task_{i:05d}.json").write_text(data)
        total += len(data)
    return total


def _json_only(folder: Path) -> int:
    n = 0
    for path in sorted(folder.rglob("*.json")):
        json.loads(path.read_bytes())
        n += 1
    return n


def run(quick: bool, *, count: int | None = None, repeat: int | None = None) -> list[Result]:
    count = count or (250 if quick else 1_000)
    repeat = repeat or (2 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="cronstack-bench-") as tmp:
        folder = Path(tmp)
        size = write_project(folder, count)
        defs = load_definitions(folder)
        if len(defs.tasks) != count or _json_only(folder) != count:
            raise AssertionError(f"loaded {len(defs.tasks)} tasks from {count} files")
        ours = time_call(lambda: load_definitions(folder), repeat=repeat)
        base = time_call(lambda: _json_only(folder), repeat=repeat)
    return [
        Result("compile", f"load_definitions, {count:,} files", ours.median, "s", "read + json.loads",
               base.median, f"< {count / 1_000:g} s", ours.median < 1.0 * count / 1_000, higher_is_better=False,
               note=f"{size / count / 1024:.1f} KB/file; spread {ours.low:.2f}-{ours.high:.2f} s; "
                    f"{count / ours.median:,.0f} files/s"),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
