"""Prometheus metrics of one engine, read from ``engine.stats()`` at scrape time.

A custom collector on a per-application ``CollectorRegistry`` (never the
process-global one) so that two engines in one process, or two test apps,
never share or collide on series. Nothing is counted twice: the engine keeps
the counts, a scrape only reads them.

``engine.stats()`` keys read here (absent keys are skipped, not invented):

* ``running``, ``queued`` (ints), ``scheduler_lag_seconds`` (float): gauges;
* ``runs_total``: ``{(task, status): n}`` -> counter ``cronstack_runs_total``;
* ``run_durations``: ``{task: {"count", "sum", "buckets": {le: cumulative}}}``
  -> histogram ``cronstack_run_duration_seconds``; ``DurationHistogram``
  below keeps exactly that shape for the engine.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ("METRICS", "DURATION_BUCKETS", "DurationHistogram", "EngineCollector", "make_registry", "render")

METRICS: web.AppKey[CollectorRegistry] = web.AppKey("cronstack_metrics", CollectorRegistry)

#: upper bounds (seconds) of the run duration histogram; +Inf is implied
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class DurationHistogram:
    """Run durations per task, in the shape ``EngineCollector`` reads.

    The engine calls ``observe(task, seconds)`` when a run finishes and puts
    ``snapshot()`` under ``stats()["run_durations"]``.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, list[float]] = {}

    def observe(self, task: str, seconds: float) -> None:
        row = self._data.get(task)
        if row is None:
            # per bucket (not cumulative) counts, then the +Inf bucket, then the sum
            row = self._data[task] = [0.0] * (len(DURATION_BUCKETS) + 2)
        row[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def snapshot(self) -> dict[str, dict[str, Any]]:
        out = {}
        for task, row in self._data.items():
            running = 0
            buckets = {}
            for le, n in zip((*DURATION_BUCKETS, math.inf), row[:-1]):
                running += int(n)
                buckets[le] = running
            out[task] = {"count": running, "sum": row[-1], "buckets": buckets}
        return out


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class EngineCollector(Collector):
    """Turns one ``engine.stats()`` call into metric families at each scrape."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        stats: Mapping[str, Any] = self._engine.stats()
        for key, name, doc in (
            ("running", "cronstack_running_runs", "Runs executing now."),
            ("queued", "cronstack_queued_runs", "Runs waiting to start (queue depth)."),
            ("scheduler_lag_seconds", "cronstack_scheduler_lag_seconds", "How late the scheduler fired its last due task."),
        ):
            if key in stats:
                yield GaugeMetricFamily(name, doc, value=float(stats[key]))
        runs_total = stats.get("runs_total")
        if runs_total is not None:
            counter = CounterMetricFamily(
                "cronstack_runs", "Runs finished or recorded, by task and status.", labels=("task", "status")
            )
            for (task, status), n in sorted(runs_total.items()):
                counter.add_metric((str(task), str(status)), float(n))
            yield counter
        durations = stats.get("run_durations")
        if durations is not None:
            hist = HistogramMetricFamily(
                "cronstack_run_duration_seconds", "Duration of finished runs, by task.", labels=("task",)
            )
            for task, h in sorted(durations.items()):
                buckets = sorted((float(le), int(n)) for le, n in h["buckets"].items())
                if not buckets or not math.isinf(buckets[-1][0]):
                    buckets.append((math.inf, int(h["count"])))
                hist.add_metric((str(task),), [(_le(le), n) for le, n in buckets], float(h["sum"]))
            yield hist


def make_registry(engine: Any) -> CollectorRegistry:
    """A registry of its own for one application, holding the engine's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
