"""Read a time window of the analytics tables (read-only) and compute the guide's key metrics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

from ..analytics.tables import MIN_HISTORY_DAYS
from ..partitions import HOUR, ceil_hour, floor_hour
from ..settings import Thresholds
from ..storage import Storage


class ReportError(RuntimeError):
    pass


@cache
def _sql(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.sql").read_text()


def window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """UTC [start, end) widened to whole hours: the hour holding `start` up to the hour holding `end`
    (an `end` on an hour boundary stays exclusive)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    s, e = floor_hour(start), ceil_hour(end)
    if e <= s:
        raise ValueError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
    return s, e


@dataclass
class ReportData:
    start: datetime
    end: datetime
    thresholds: Thresholds
    hours: list[dict] = field(default_factory=list)  # request_volume_hourly rows
    providers: list[dict] = field(default_factory=list)  # provider_health_hourly rows
    buckets: list[dict] = field(default_factory=list)  # error_rate_5m_overall rows

    @property
    def window_hours(self) -> int:
        return int((self.end - self.start) / HOUR)

    def missing_hours(self) -> list[datetime]:
        """Hours of the window with nothing ingested (never backfilled, or not yet)."""
        have = {h["hour"] for h in self.hours}
        out, h = [], self.start
        while h < self.end:
            if h not in have:
                out.append(h)
            h += HOUR
        return out


def load(data_dir: Path | str, start: datetime, end: datetime, thresholds: Thresholds | None = None) -> ReportData:
    """The window's rows of the analytics tables, read through the warehouse reader."""
    s, e = window(start, end)
    warehouse = Storage(data_dir).warehouse
    if not warehouse.path.exists():
        raise ReportError(f"no warehouse at {warehouse.path}: ingest some hours first")
    data = ReportData(s, e, thresholds or Thresholds())
    params = {"start": s, "end": e}
    with warehouse.reader() as con:
        try:
            for name in ("hours", "providers", "buckets"):
                setattr(data, name, _rows(con, _sql(name), params))
        except duckdb.CatalogException as exc:
            raise ReportError(
                f"the analytics tables are missing from {warehouse.path} ({str(exc).splitlines()[0]}): "
                "materialise the analytics assets for these hours first"
            ) from None
    return data


def _rows(con, text: str, params: dict) -> list[dict]:
    cur = con.execute(text, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@dataclass
class Worst:
    """A subject's failing hours (or buckets) and its worst value."""

    count: int = 0
    value: float = float("-inf")
    at: datetime | None = None

    def add(self, value: float, at: datetime) -> None:
        self.count += 1
        if value > self.value:
            self.value, self.at = value, at


@dataclass
class KeyMetrics:
    data: ReportData
    requests: int = 0
    errors: int = 0
    hours_with_data: int = 0
    buckets: int = 0
    worst_bucket: dict | None = None
    buckets_above: list[dict] = field(default_factory=list)
    worst_p95_hour: dict | None = None
    hours_p95_above: list[dict] = field(default_factory=list)
    slow_providers: dict[str, Worst] = field(default_factory=dict)
    unhealthy_providers: dict[str, Worst] = field(default_factory=dict)
    anomalies: list[dict] = field(default_factory=list)
    unscored_hours: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def key_metrics(data: ReportData) -> KeyMetrics:
    t = data.thresholds
    m = KeyMetrics(data)
    for h in data.hours:
        m.requests += h["requests"]
        m.errors += h["errors"]
        m.hours_with_data += h["requests"] > 0
        if h["p95_ms"] is not None:
            if m.worst_p95_hour is None or h["p95_ms"] > m.worst_p95_hour["p95_ms"]:
                m.worst_p95_hour = h
            if h["p95_ms"] > t.p95_ms:
                m.hours_p95_above.append(h)
        if h["score"] is None:
            m.unscored_hours += 1
        elif abs(h["score"]) > t.volume_score:
            m.anomalies.append(h)
    m.buckets = len(data.buckets)
    for b in data.buckets:
        if m.worst_bucket is None or b["error_rate"] > m.worst_bucket["error_rate"]:
            m.worst_bucket = b
        if b["error_rate"] > t.error_rate_5m:
            m.buckets_above.append(b)
    slow: dict[str, Worst] = defaultdict(Worst)
    unhealthy: dict[str, Worst] = defaultdict(Worst)
    for p in data.providers:
        if p["p95_ms"] is not None and p["p95_ms"] > t.p95_ms:
            slow[p["provider"]].add(p["p95_ms"], p["hour"])
        if p["error_rate"] > t.provider_error_rate:
            unhealthy[p["provider"]].add(p["error_rate"], p["hour"])
    m.slow_providers = dict(sorted(slow.items(), key=lambda kv: -kv[1].value))
    m.unhealthy_providers = dict(sorted(unhealthy.items(), key=lambda kv: -kv[1].value))
    return m


def volume_note(m: KeyMetrics) -> str:
    if m.unscored_hours == len(m.data.hours) and m.data.hours:
        return f"not scored: needs {MIN_HISTORY_DAYS} prior days of the same hour"
    if m.unscored_hours:
        return f"{m.unscored_hours} hour(s) not scored: under {MIN_HISTORY_DAYS} days of history"
    return ""
