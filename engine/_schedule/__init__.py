"""Cron schedules and the timing core of the scheduler.

``Schedule`` computes fire times (the same code ``cronstack check`` prints and
the scheduler uses); ``RealClock``/``FakeClock`` are the engine's clocks (the
fake one runs tests in virtual time); ``Timer`` is the heap of next fires and
``wait_next`` sleeps a scheduler loop until the next one is due or it is woken.
"""

from engine._schedule.clock import FakeClock, RealClock
from engine._schedule.errors import ScheduleError
from engine._schedule.schedule import Schedule
from engine._schedule.timer import Timer, wait_next

__all__ = ("FakeClock", "RealClock", "Schedule", "ScheduleError", "Timer", "wait_next")
