"""Shared measuring and reporting for the benchmark scripts.

Every figure is paired with a baseline measured in the same run, because
absolute numbers drift 10-20% between runs on this machine; the ratio is what
a target is checked against.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

__all__ = ("Result", "Timing", "time_call", "time_async", "parse_args", "report")


@dataclass(frozen=True, slots=True)
class Timing:
    """Median and spread (min, max) of several repetitions, in seconds."""

    median: float
    low: float
    high: float
    reps: int


@dataclass(slots=True)
class Result:
    """One row of a benchmark table.

    ``value`` and ``baseline`` are in ``unit`` (higher is better when
    ``higher_is_better``); ``target`` is a human-readable goal and ``met`` is
    whether the measured figure reaches it (None when there is no target).
    """

    bench: str
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    target: str | None = None
    met: bool | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.baseline or not self.value:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


def _summarise(samples: Sequence[float]) -> Timing:
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


def time_call(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1) -> Timing:
    """Time ``fn()`` ``repeat`` times after ``warmup`` calls (GC collected before each)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _summarise(samples)


def time_async(
    make: Callable[[], object], *, repeat: int = 5, warmup: int = 1, loop: str = "asyncio"
) -> Timing:
    """Time ``await make()`` on a fresh event loop per repetition (``loop``: asyncio|uvloop)."""
    import asyncio

    def one() -> float:
        if loop == "uvloop":
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            runner = asyncio.Runner()
        with runner:

            async def timed() -> float:
                t0 = time.perf_counter()
                await make()  # type: ignore[misc]
                return time.perf_counter() - t0

            gc.collect()
            return runner.run(timed())

    for _ in range(warmup):
        one()
    return _summarise([one() for _ in range(repeat)])


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser.parse_args(argv)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def report(results: Sequence[Result], json_path: str | None = None, out=None) -> None:
    """Print ``results`` as a table; write them to ``json_path`` when given."""
    out = out or sys.stdout
    header = ("benchmark", "figure", "value", "unit", "baseline", "ratio", "target", "met")
    rows = [header]
    for r in results:
        ratio = r.ratio
        rows.append(
            (
                r.bench,
                r.name,
                _fmt(r.value),
                r.unit,
                f"{r.baseline_name}: {_fmt(r.baseline)}" if r.baseline_name else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                r.target or "-",
                {True: "yes", False: "NO", None: "-"}[r.met],
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    if json_path:
        payload = {
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "results": [asdict(r) | {"ratio": r.ratio} for r in results],
        }
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=2)
