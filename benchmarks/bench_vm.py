"""The VM against plain Python: a compute-only stack run by ``runtime.execute``.

The stack sums the squares of the even numbers below N and counts them
(variables, expressions, a ``times`` loop, a conditional, update_variable).
Baseline, in the same run: the same logic as a plain ``async def`` with
locals, the honest ceiling. Figure: loop iterations per second; the ratio is
coroutine / VM, target within 3x. Second pair: a ``wait 0`` step in every
iteration against ``await asyncio.sleep(0)`` in the coroutine, where the
event loop matters, so both pairs are measured on asyncio and on uvloop.
Run: ``.venv/bin/python -m benchmarks.bench_vm [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from benchmarks import loops
from benchmarks._harness import Result, parse_args, report, time_async
from compiler import CompileError, lower_stack
from runtime import Program, execute


def _stack(with_wait: bool) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = [
        {"function": "conditional", "condition": "index % 2 == 0", "true_branch": [
            {"function": "update_variable", "name": "total", "operation": "increment", "value": "{{ index * index }}"},
            {"function": "update_variable", "name": "count", "operation": "increment", "value": 1},
        ]},
    ]  # fmt: skip
    if with_wait:
        body.append({"function": "wait", "duration": 0})
    return [
        {"function": "create_variable", "name": "total", "value": 0},
        {"function": "create_variable", "name": "count", "value": 0},
        {"function": "loop", "times": "{{ n }}", "operations": body},
        {"function": "return", "value": "{{ {total: total, count: count} }}"},
    ]


def compile_stack(with_wait: bool = False) -> Program:
    """The benchmark's stack, compiled (raises CompileError if the compiler refuses it)."""
    low = lower_stack(_stack(with_wait), "bench_vm", extra_names=frozenset({"n"}))
    if low.diagnostics:
        raise CompileError(low.diagnostics)
    return low.program


async def coroutine(n: int) -> dict[str, int]:
    """The same computation written by hand: the ceiling the VM is compared with."""
    total = 0
    count = 0
    for index in range(n):
        if index % 2 == 0:
            total += index * index
            count += 1
    return {"total": total, "count": count}


async def coroutine_wait(n: int) -> dict[str, int]:
    total = 0
    count = 0
    for index in range(n):
        if index % 2 == 0:
            total += index * index
            count += 1
        await asyncio.sleep(0)
    return {"total": total, "count": count}


async def vm(program: Program, n: int) -> Any:
    return await execute(program, None, {"n": n})


def check(n: int) -> dict[str, int]:
    """Run both forms (with and without waits) once; raise unless they agree. Returns the result."""
    plain, waiting = compile_stack(False), compile_stack(True)

    async def both() -> list[Any]:
        return [await vm(plain, n), await coroutine(n), await vm(waiting, n), await coroutine_wait(n)]

    got = asyncio.run(both())
    if not got[0] == got[1] == got[2] == got[3]:
        raise AssertionError(f"the VM and the coroutine disagree: {got}")
    return got[1]


def run(quick: bool, *, n: int | None = None, n_wait: int | None = None, repeat: int | None = None) -> list[Result]:
    n = n or (50_000 if quick else 300_000)
    n_wait = n_wait or (20_000 if quick else 100_000)
    repeat = repeat or (3 if quick else 7)
    check(min(n, 1_000))
    plain, waiting = compile_stack(False), compile_stack(True)
    results: list[Result] = []
    for loop in loops():
        t_vm = time_async(lambda: vm(plain, n), repeat=repeat, loop=loop)
        # the coroutine is ~40x faster: give it 10x the iterations so its timing is not all noise
        t_py = time_async(lambda: coroutine(10 * n), repeat=repeat, loop=loop)
        t_py = type(t_py)(t_py.median / 10, t_py.low / 10, t_py.high / 10, t_py.reps)
        ratio = t_vm.median / t_py.median
        results.append(Result(
            "vm", f"compute loop, {loop}", n / t_vm.median, "iter/s", "python coroutine", n / t_py.median,
            "<= 3x slower", ratio <= 3.0, note=f"VM is {ratio:.1f}x slower; spread {n / t_vm.high:,.0f}-{n / t_vm.low:,.0f}",
        ))  # fmt: skip
        t_vm = time_async(lambda: vm(waiting, n_wait), repeat=repeat, loop=loop)
        t_py = time_async(lambda: coroutine_wait(n_wait), repeat=repeat, loop=loop)
        ratio = t_vm.median / t_py.median
        results.append(Result(
            "vm", f"loop + wait 0, {loop}", n_wait / t_vm.median, "iter/s", "coroutine + sleep(0)",
            n_wait / t_py.median, "<= 3x slower", ratio <= 3.0,
            note=f"VM is {ratio:.1f}x slower; spread {n_wait / t_vm.high:,.0f}-{n_wait / t_vm.low:,.0f}",
        ))  # fmt: skip
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    report(run(args.quick), args.json)


if __name__ == "__main__":
    main()
