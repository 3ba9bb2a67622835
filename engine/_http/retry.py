"""When ``retries=N`` may try a request again, and how long it waits first.

Kept apart from the client so that the policy is a few pure functions a test
can pin down exactly: the client only asks "may I?" and "how long?", then
sleeps through its injected ``sleep``.
"""

from __future__ import annotations

import random
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = (
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "may_retry_method",
    "backoff_delay",
    "parse_retry_after",
)

#: Methods a retry cannot make happen twice (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: Statuses that mean "try again later": rate limited or a transient server fault.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: First backoff delay and the largest one (seconds); also caps ``Retry-After``.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


def may_retry_method(method: str, retry_non_idempotent: bool) -> bool:
    """True when ``method`` may be sent again; POST and PATCH only when asked."""
    return retry_non_idempotent or method in IDEMPOTENT_METHODS


def backoff_delay(
    retry_number: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 for the first).

    Exponential with "equal jitter": half of ``min(cap, base * 2**(n-1))`` is
    fixed and the other half random, so that clients that failed together do
    not come back together, yet each retry still waits at least half its step.
    """
    step = min(cap, base * 2.0 ** max(0, retry_number - 1))
    uniform = (rng or random).uniform
    return step / 2.0 + uniform(0.0, step / 2.0)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for, or None when absent or unreadable.

    Accepts delta-seconds (``"120"``, also fractional) and an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a date in the past means 0.
    The caller caps the result.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds < 0:  # NaN or negative: not a valid delay
            return None
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT even when the zone is missing
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
