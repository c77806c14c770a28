"""One hour of request logs -> the guide's Prometheus series, on a fixed time grid.

    stackone_requests_total{provider, status_code}    counter; status_code "timeout" for a null
                                                      status with success=false ("unknown" otherwise)
    stackone_request_duration_bucket{provider, le}    histogram in milliseconds, + _sum and _count

Every series of an hour is a per-hour counter sampled every `step_s`: 0 at hh:00:00.001, then at
each step boundary the number of the hour's events before it; the last sample, at the next
hh:00:00, is the hour's total. The next hour starts again from 0 one millisecond later, a counter
reset that rate()/increase() handle. So `rate(x[5m])` and `increase(x[1h])` evaluated on the grid
count exactly the events of their window, and samples are dense enough for any 5-minute panel.

Memory grows with series × grid points, never with rows.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime, timezone

HOUR_MS = 3_600_000
REQUESTS = "stackone_requests_total"
DURATION = "stackone_request_duration"  # exactly the guide's name: no unit suffix
BUCKETS_MS = (25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000)
LE = tuple(f"{b:g}" for b in BUCKETS_MS) + ("+Inf",)  # formatted as Prometheus' Go clients do
TIMEOUT, UNKNOWN = "timeout", "unknown"
MAX_LABEL_VALUE = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

Labels = tuple[tuple[str, str], ...]
Samples = list[tuple[int, float]]


def epoch_ms(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def status_code(row: dict) -> str:
    status = row.get("status")
    if status is not None:
        return str(status)
    return TIMEOUT if row.get("success") is False else UNKNOWN


def labels(name: str, extra: Labels = (), **values: str) -> Labels:
    """Sorted by name, as remote write requires; values cut to a sane length."""
    pairs = [("__name__", name), *((k, v[:MAX_LABEL_VALUE]) for k, v in values.items()), *extra]
    return tuple(sorted(pairs))


class HourSeries:
    """Per-step event counts of one hour, per series."""

    def __init__(self, hour: datetime, step_s: int = 60):
        if step_s <= 0 or 3600 % step_s:
            raise ValueError(f"step_s must divide 3600, got {step_s}")
        self.start_ms, self.step_ms, self.steps = epoch_ms(hour), step_s * 1000, 3600 // step_s
        self.requests: dict[tuple[str, str], list[int]] = {}
        self.buckets: dict[str, list[list[int]]] = {}  # provider -> [bucket][step] (not cumulative)
        self.sums: dict[str, list[float]] = {}
        self.rows = 0

    def add(self, row: dict) -> str | None:
        """Count one stored row; returns why it cannot be placed, or None."""
        ts = row.get("event_datetime")
        if ts is None:
            return "no event time"
        offset = epoch_ms(ts) - self.start_ms
        if not 0 <= offset < HOUR_MS:
            return "outside its hour"
        step = offset // self.step_ms
        provider = row.get("provider") or UNKNOWN
        counts = self.requests.get((provider, status_code(row)))
        if counts is None:
            counts = self.requests[(provider, status_code(row))] = [0] * self.steps
        counts[step] += 1
        duration = row.get("duration_ms")
        if duration is not None:
            buckets = self.buckets.get(provider)
            if buckets is None:
                buckets = self.buckets[provider] = [[0] * self.steps for _ in LE]
                self.sums[provider] = [0.0] * self.steps
            buckets[bisect_left(BUCKETS_MS, duration)][step] += 1  # le: value <= bound
            self.sums[provider][step] += duration
        self.rows += 1
        return None

    def _ramp(self, per_step) -> Samples:
        out, total = [(self.start_ms + 1, 0.0)], 0
        for k, n in enumerate(per_step, 1):
            total += n
            out.append((self.start_ms + k * self.step_ms, float(total)))
        return out

    def series(self, extra: Labels = ()) -> Iterator[tuple[Labels, Samples]]:
        """Every series of the hour, in a fixed order (batches are cut the same way on a rerun)."""
        for (provider, code), counts in sorted(self.requests.items()):
            yield labels(REQUESTS, extra, provider=provider, status_code=code), self._ramp(counts)
        for provider in sorted(self.buckets):
            cumulative = [0] * self.steps
            for le, per_step in zip(LE, self.buckets[provider]):
                cumulative = [c + n for c, n in zip(cumulative, per_step)]
                yield labels(f"{DURATION}_bucket", extra, le=le, provider=provider), self._ramp(cumulative)
            yield labels(f"{DURATION}_sum", extra, provider=provider), self._ramp(self.sums[provider])
            yield labels(f"{DURATION}_count", extra, provider=provider), self._ramp(cumulative)
