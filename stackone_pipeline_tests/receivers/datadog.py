"""A Datadog logs intake (`POST /api/v2/logs`) with the intake's documented rules.

- `DD-API-KEY` must be present (and equal `api_key` when one is set): 403 otherwise;
- `Content-Encoding` gzip or deflate (or none); the *uncompressed* body over 5 MB -> 413,
  more than 1000 logs in the array -> 413; not a JSON array/object of objects -> 400;
- everything else is answered 202 `{}`. Then, as Datadog does after the 202, a log whose date
  attribute is more than 18 hours old or 2 hours ahead is dropped silently: it lands in `dropped`,
  not in `logs`, and the client never hears of it. Numeric dates are epoch *milliseconds*.
- `POST /api/v2/series` (metrics): same key and encodings; over 5 MB decompressed -> 413,
  malformed series -> 400; answered 202 `{"errors":[]}`. A point more than 1 hour old (or 10
  minutes ahead) is kept only with `historical_metrics` (Historical Metrics Ingestion), else it
  is dropped silently. The same (metric, tags, timestamp) sent again overwrites the value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import orjson

from .loki import BadRequest, decode_body
from .server import Answer, Received, Receiver

UTC = timezone.utc
LOGS_PATH = "/api/v2/logs"
SERIES_PATH = "/api/v2/series"
DATE_ATTRIBUTES = ("@timestamp", "timestamp", "_timestamp", "Timestamp", "eventTime", "date", "published_date")
FORBIDDEN = b'{"errors":["Forbidden"]}'


def log_time(log: dict, received: datetime) -> datetime:
    """The date Datadog's preprocessing reads; reception time when there is none it can parse."""
    for name in DATE_ATTRIBUTES:
        value = log.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)  # epoch milliseconds
        if isinstance(value, str):
            try:
                ts = datetime.fromisoformat(value)
            except ValueError:
                continue
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return received


def _iso_ms(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class DatadogReceiver(Receiver):
    def __init__(
        self,
        *,
        api_key: str | None = None,
        max_entries: int = 1000,
        max_bytes: int = 5 * 1024 * 1024,
        window: timedelta = timedelta(hours=18),
        future: timedelta = timedelta(hours=2),
        lean: bool = False,
        historical_metrics: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        **kw,
    ):
        super().__init__(keep_bodies=not lean, **kw)
        self.historical_metrics = historical_metrics
        self.api_key, self.max_entries, self.max_bytes = api_key, max_entries, max_bytes
        self.window, self.future, self.lean, self.clock = window, future, lean, clock
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.logs: list[dict] = []  # kept (not in lean mode)
        self.dropped: list[dict] = []  # accepted with 202, then dropped for their age
        self.kept = self.dropped_count = self.largest = 0
        self.arrivals: Counter = Counter()  # request_id -> times it arrived (Datadog has no dedup)
        self.points: dict[tuple, float] = {}  # (metric, sorted tags, timestamp) -> value
        self.dropped_points = 0

    def stats(self) -> dict:
        return {**super().stats(), "largest_body": self.largest, "kept": self.kept, "dropped": self.dropped_count}

    def handle(self, req: Received) -> Answer:
        path = req.path.split("?")[0]
        if path not in (LOGS_PATH, SERIES_PATH) or req.method != "POST":
            return Answer(404, b'{"errors":["Not found"]}')
        key = req.headers.get("dd-api-key")
        if not key or (self.api_key is not None and key != self.api_key):
            return Answer(403, FORBIDDEN)
        try:
            raw = decode_body(req)
        except (BadRequest, OSError, ValueError):
            return Answer(400, b'{"errors":["Bad Request: cannot decode the body"]}')
        self.largest = max(self.largest, len(raw))
        if len(raw) > self.max_bytes:
            return Answer(413, b'{"errors":["Request Entity Too Large"]}')
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Answer(400, b'{"errors":["Bad Request: invalid JSON"]}')
        return self._logs(doc) if path == LOGS_PATH else self._series(doc)

    def _series(self, doc) -> Answer:
        series = doc.get("series") if isinstance(doc, dict) else None
        ok = isinstance(series, list) and all(
            isinstance(s, dict)
            and isinstance(s.get("metric"), str)
            and s.get("type", 0) in (0, 1, 2, 3)
            and isinstance(s.get("points"), list)
            and all(
                isinstance(p, dict) and isinstance(p.get("timestamp"), int) and isinstance(p.get("value"), (int, float))
                for p in s["points"]
            )
            for s in series
        )
        if not ok:
            return Answer(400, b'{"errors":["Bad Request: malformed series"]}')
        now = self.clock().timestamp()
        for s in series:
            for p in s["points"]:
                if not self.historical_metrics and not now - 3600 <= p["timestamp"] <= now + 600:
                    self.dropped_points += 1
                    continue
                self.points[(s["metric"], tuple(sorted(s.get("tags", []))), p["timestamp"])] = p["value"]
        return Answer(202, b'{"errors":[]}', {"Content-Type": "application/json"})

    def _logs(self, doc) -> Answer:
        logs = doc if isinstance(doc, list) else [doc]
        if len(logs) > self.max_entries:
            return Answer(413, b'{"errors":["Too many logs in the array (max 1000)"]}')
        if not all(isinstance(log, dict) for log in logs):
            return Answer(400, b'{"errors":["Bad Request: logs must be objects"]}')
        now = self.clock()
        oldest, newest = now - self.window, now + self.future
        # The common shape, "timestamp" as ISO UTC with milliseconds, compares as text (same order).
        oldest_iso, newest_iso = _iso_ms(oldest), _iso_ms(newest)
        for log in logs:
            if not self.lean:
                ours = log.get("stackone")
                self.arrivals[ours.get("request_id") if isinstance(ours, dict) else None] += 1
            ts = log.get("timestamp")
            if type(ts) is str and len(ts) == 24 and ts[10] == "T" and ts[-1] == "Z" and "@timestamp" not in log:
                too_old, too_new = ts < oldest_iso, ts > newest_iso
            else:
                when = log_time(log, now)
                too_old, too_new = when < oldest, when > newest
            if too_old or too_new:
                self.dropped_count += 1
                if not self.lean:
                    self.dropped.append(log)
                continue
            self.kept += 1
            if not self.lean:
                self.logs.append(log)
        return Answer(202, b"{}", {"Content-Type": "application/json"})
