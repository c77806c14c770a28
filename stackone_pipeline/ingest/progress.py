"""A progress line for long runs: hours done, rows, request rate against the limit, time left."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .hour import HourResult


class Progress:
    """Hours done of total, rows, requests/minute against the limit, estimated time left."""

    def __init__(self, total_hours: int, limit_per_minute: int, emit: Callable[[str], None], every_s: float = 2.0):
        self.total, self.limit, self.emit, self.every_s = total_hours, limit_per_minute, emit, every_s
        self.started = self._last = time.monotonic()
        self.hours = self.rows = self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, res: HourResult) -> None:
        with self._lock:
            self.hours += 1
            self.rows += res.rows
            self.requests += res.requests
            now = time.monotonic()
            if now - self._last < self.every_s and self.hours < self.total:
                return
            self._last = now
            elapsed = max(now - self.started, 1e-6)
            rpm = self.requests / elapsed * 60
            eta = elapsed / self.hours * (self.total - self.hours)
            self.emit(
                f"{self.hours}/{self.total} hours, {self.rows:,} rows, {rpm:,.0f} requests/min "
                f"(limit {self.limit:,}), {eta:,.0f}s left"
            )
