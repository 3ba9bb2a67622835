"""The error family every part of cronstack raises, rooted in one class.

A run never shows a Python traceback to a user: anything raised while a step
executes is turned into an ``error`` object (``message``, ``type``, ``step`` and
extra fields) that ``try_catch`` can catch and that a failed run records.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "CronstackError",
    "RunError",
    "ExpressionError",
    "LimitExceeded",
    "ThrownError",
    "InternalError",
    "RunFailed",
)


class CronstackError(Exception):
    """Root of every error cronstack raises on purpose.

    ``error_type`` is the ``type`` a stack sees in ``error.type``; ``extra``
    holds further fields of the error object (``status``, ``body``...).
    """

    error_type = "CronstackError"

    def __init__(self, message: str, *, error_type: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type
        self.extra = extra

    def to_object(self, step: str | None = None) -> dict[str, Any]:
        """The ``error`` value a catch block or a failed run sees."""
        obj: dict[str, Any] = {"message": self.message, "type": self.error_type, "step": step}
        obj.update(self.extra)
        return obj


class RunError(CronstackError):
    """A failure while a run executes (a step, an expression, an effect)."""

    error_type = "RunError"


class ExpressionError(RunError):
    """An expression failed at run time: wrong types, division by zero..."""

    error_type = "ExpressionError"


class LimitExceeded(RunError):
    """A value grew past one of the sandbox limits in ``runtime.limits``."""

    error_type = "LimitExceeded"


class ThrownError(RunError):
    """Raised by a ``throw_error`` step; its type is the one the step names."""

    error_type = "ThrownError"


class InternalError(CronstackError):
    """A defect in cronstack itself; the message says what to report."""

    error_type = "InternalError"


class RunFailed(CronstackError):
    """A stack ended on an error no ``try_catch`` caught.

    ``error`` is the error object (``message``, ``type``, ``step``...) the run
    records and a caller can inspect.
    """

    error_type = "RunFailed"

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        step = error.get("step")
        super().__init__(f"{step}: {error.get('message')}" if step else str(error.get("message")))
        self.error_type = str(error.get("type") or "RunError")


def error_from_object(obj: dict[str, Any]) -> RunError:
    """Rebuild a raisable error from an error object (to re-raise after ``finally``)."""
    extra = {k: v for k, v in obj.items() if k not in ("message", "type", "step")}
    err = RunError(str(obj.get("message")), error_type=str(obj.get("type") or "RunError"), **extra)
    err.step = obj.get("step")  # type: ignore[attr-defined]
    return err
