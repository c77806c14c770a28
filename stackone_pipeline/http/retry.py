"""When to try an HTTP request again, and how long to wait first: one policy for every caller.

Backoff is exponential with "equal jitter" (at least half the cap, so no retry comes at once;
at most the cap, so threads that failed together spread out), and a server's `Retry-After`
wins over it because the server knows best.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, within how long (seconds from the first), and how far apart."""

    max_attempts: int = 6
    deadline_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rand: Callable[[float, float], float] = random.uniform
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:  # a little jitter still spreads threads told the same time
            return retry_after + rand(0, 0.1)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return rand(cap / 2, cap)
