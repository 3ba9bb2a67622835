"""cronstack's engine: schedules, runs and records background tasks.

Embed it in an async service::

    async with Engine.open("tasks/") as engine:
        run = await engine.trigger("daily_report", wait=True)

or run it standalone with ``cronstack run DIR``.
"""

from compiler import CompileError, Diagnostic
from engine._config import EngineConfig
from engine._engine import Engine, UnknownTask
from engine._schedule import FakeClock, RealClock, Schedule, ScheduleError
from runtime import CronstackError, RunError, RunFailed

__all__ = (
    "CompileError",
    "CronstackError",
    "Diagnostic",
    "Engine",
    "EngineConfig",
    "FakeClock",
    "RealClock",
    "RunError",
    "RunFailed",
    "Schedule",
    "ScheduleError",
    "UnknownTask",
)
