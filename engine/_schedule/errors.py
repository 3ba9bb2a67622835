"""The one error a schedule raises: an expression, time zone or option that is invalid."""

from __future__ import annotations

from runtime import CronstackError

__all__ = ("ScheduleError",)


class ScheduleError(CronstackError, ValueError):
    """An invalid cron expression, time zone or ``day_match``.

    The message names the field (``cron field 'hour' (second of 5): 25 is out
    of range 0-23``) and says what to write instead; ``extra`` carries
    ``expression`` and, when one field is at fault, ``field``.
    """

    error_type = "ScheduleError"
