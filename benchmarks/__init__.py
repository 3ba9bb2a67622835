"""cronstack's benchmarks: standalone scripts, each measuring a figure against a baseline in the same run.

Run them all with ``python -m benchmarks [--quick]`` (see ``benchmarks/README.md``)
or one with ``python -m benchmarks.bench_vm``. The helpers here are the few
things the engine-level benchmarks share beyond ``benchmarks._harness``: which
event loops to measure on, and percentiles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

__all__ = ("LOOPS_ENV", "loops", "percentile", "runner")

#: the runner's ``--loop`` choice reaches the bench subprocesses through this variable
LOOPS_ENV = "CRONSTACK_BENCH_LOOPS"


def loops() -> tuple[str, ...]:
    """Event loops to measure on: ``asyncio`` and ``uvloop`` unless the runner narrowed it."""
    chosen = tuple(x for x in os.environ.get(LOOPS_ENV, "asyncio,uvloop").split(",") if x)
    unknown = set(chosen) - {"asyncio", "uvloop"}
    if unknown:
        raise ValueError(f"{LOOPS_ENV} names unknown loops {sorted(unknown)}; use asyncio and/or uvloop")
    return chosen or ("asyncio",)


def runner(loop: str):
    """An ``asyncio.Runner`` on ``loop`` (``asyncio`` or ``uvloop``)."""
    import asyncio

    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, nearest-rank on the sorted values."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
