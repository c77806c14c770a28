"""What a step says about its hours as it goes: a progress line for long runs (hours done, rows,
request rate against the limit, time left), and per-hour lines gathered into few messages."""

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


class HourLines:
    """A step's line per hour (`add`), logged together: one message once `every_s` seconds have
    passed since the last, and the rest at `flush`. Each log message is an event Dagster stores
    (1-11 ms in a SQLite instance, dagster_event_log.py): a message per hour and step made a 90-day run store 4,300 of
    them. A message lists at most `most` lines (the first and last halves) and counts the others;
    every hour's figures are in its own observation too."""

    def __init__(self, emit: Callable[[str], None], every_s: float = 10.0, most: int = 24):
        self.emit, self.every_s, self.most = emit, every_s, most
        self._lines: list[str] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            if time.monotonic() - self._last >= self.every_s:
                self._emit()

    def flush(self) -> None:
        """Log what is gathered (also `close`: `contextlib.closing` flushes on the way out)."""
        with self._lock:
            if self._lines:
                self._emit()

    def _emit(self) -> None:
        lines, half = self._lines, self.most // 2
        if len(lines) > self.most:
            lines = [*lines[:half], f"... {len(lines) - 2 * half} more hour(s) ...", *lines[-half:]]
        self.emit("\n".join(lines))
        self._lines, self._last = [], time.monotonic()

    close = flush
