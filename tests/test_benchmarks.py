"""Smoke tests of the benchmark suite: every module imports, and the cheap paths compute the right thing.

These check correctness only (the VM and the hand-written coroutine agree,
the runner reports a broken module as a failed row), never time.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as runner_main  # noqa: E402
from benchmarks import loops, percentile  # noqa: E402
from benchmarks._harness import Result  # noqa: E402


def test_every_bench_module_imports_and_exposes_run_and_main() -> None:
    names = runner_main.discover()
    assert {"bench_vm", "bench_runs", "bench_fire", "bench_concurrency", "bench_compile", "bench_peer"} <= set(names)
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        assert callable(mod.run), name
        assert callable(mod.main), name
        assert mod.__doc__ and mod.__doc__.strip(), f"{name} needs a docstring saying what it measures"


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
def test_vm_and_coroutine_compute_the_same_number(n: int) -> None:
    from benchmarks import bench_vm

    expected = {"total": sum(i * i for i in range(n) if i % 2 == 0), "count": (n + 1) // 2}
    assert bench_vm.check(n) == expected


def test_bench_vm_run_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import bench_vm

    monkeypatch.setenv("CRONSTACK_BENCH_LOOPS", "asyncio")
    rows = bench_vm.run(True, n=200, n_wait=50, repeat=1)
    assert [r.name for r in rows] == ["compute loop, asyncio", "loop + wait 0, asyncio"]
    assert all(r.value > 0 and r.baseline and r.baseline > 0 for r in rows)
    assert all(isinstance(r.met, bool) for r in rows)


def test_python_work_matches_the_ten_step_stack() -> None:
    import asyncio

    from benchmarks.bench_runs import STACK10, python_work
    from compiler import lower_stack
    from runtime import RunContext, execute

    program = lower_stack(STACK10, "t").program
    got = asyncio.run(execute(program, RunContext(task={"name": "task_00001"})))
    assert got == python_work("task_00001")


def test_compile_bench_files_are_valid_definitions(tmp_path: Path) -> None:
    from benchmarks.bench_compile import write_project
    from compiler import load_definitions

    write_project(tmp_path, 5)
    defs = load_definitions(tmp_path)
    assert sorted(defs.tasks) == [f"sync_task_{i:05d}" for i in range(5)]


def test_percentile_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_loops_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONSTACK_BENCH_LOOPS", "uvloop")
    assert loops() == ("uvloop",)
    monkeypatch.setenv("CRONSTACK_BENCH_LOOPS", "asyncio,trio")
    with pytest.raises(ValueError, match="trio"):
        loops()


def test_runner_selects_by_short_or_full_name() -> None:
    names = ["bench_compile", "bench_vm"]
    assert runner_main.select(names, ["vm"]) == ["bench_vm"]
    assert runner_main.select(names, ["bench_compile", "vm"]) == names
    with pytest.raises(SystemExit, match="no benchmark named bench_nope"):
        runner_main.select(names, ["nope"])


def test_runner_reports_a_failing_module_as_a_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = ROOT / "benchmarks" / "bench_zz_smoke_broken.py"
    broken.write_text("def run(quick):\n    raise RuntimeError('boom from the smoke test')\n")
    try:
        rows, _ = runner_main.run_module("bench_zz_smoke_broken", True, "asyncio", timeout=60)
    finally:
        broken.unlink()
    assert len(rows) == 1 and rows[0].name == "FAILED" and rows[0].met is False
    assert "boom from the smoke test" in rows[0].note


def test_runner_end_to_end_writes_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_rows = [Result("vm", "compute loop, asyncio", 10.0, "iter/s", "python coroutine", 20.0, "<= 3x slower", True)]
    monkeypatch.setattr(runner_main, "discover", lambda: ["bench_vm"])
    monkeypatch.setattr(runner_main, "run_module", lambda name, quick, loops, timeout=None: (fake_rows, 0.1))
    out = tmp_path / "bench.json"
    assert runner_main.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["loops"] == ["asyncio"]
    assert data["results"][0]["ratio"] == pytest.approx(0.5)
