"""A client-side rate limiter shared by every fetch in the process.

StackOne allows 1000 requests per minute per API key and answers 429 beyond it. Rather than
bursting into 429s, requests are paced evenly (one every window/limit seconds, a 2% margin
for clock and network jitter), so a backfill runs at the limit whatever the server's window
algorithm is. One limiter per (base URL, key, limit) is shared by all threads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

SAFETY_MARGIN = 1.02


class RateLimiter:
    def __init__(
        self,
        per_window: float,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_window <= 0:
            raise ValueError("rate limit must be positive")
        self.per_window = per_window
        self.window_s = window_s
        self.interval = window_s / per_window * SAFETY_MARGIN
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next = 0.0  # earliest time the next request may start

    def acquire(self) -> float:
        """Block until this caller may send one request; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def pause(self, seconds: float) -> None:
        """The server said 429 + Retry-After: hold every thread back, not just the one told."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


_shared: dict[tuple, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(base_url: str, api_key: str, per_minute: float, window_s: float = 60.0) -> RateLimiter:
    # The key is hashed so the registry never holds it in a form that could be logged.
    key = (base_url, hashlib.sha256(api_key.encode()).hexdigest()[:16], per_minute, window_s)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = RateLimiter(per_minute, window_s)
        return _shared[key]
