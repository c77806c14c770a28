"""The guide's "Key Metrics to Track" table, filled in for a window, as plain text."""

from __future__ import annotations

import textwrap
from datetime import datetime

from .metrics import HOUR, KeyMetrics, volume_note

NO_DATA = "NO DATA"


def _t(dt: datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _listing(items: dict, fmt, limit: int = 4) -> str:
    shown = [fmt(k, v) for k, v in list(items.items())[:limit]]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(shown) + more


def rows(m: KeyMetrics) -> list[tuple[str, str, str, str, str]]:
    """(metric, query pattern, alert threshold, observed in the window, status) per key metric."""
    t = m.data.thresholds
    if m.worst_bucket is None:
        err = "no requests"
    else:
        err = (
            f"overall {_pct(m.error_rate)}; worst 5-min bucket {_pct(m.worst_bucket['error_rate'])} "
            f"at {_t(m.worst_bucket['bucket_start'])}; {len(m.buckets_above)} of {m.buckets} buckets above"
        )
    if m.worst_p95_hour is None:
        p95 = "no requests"
    else:
        p95 = (
            f"worst hour {m.worst_p95_hour['p95_ms']:,.0f} ms at {_t(m.worst_p95_hour['hour'])} "
            f"({len(m.hours_p95_above)} hour(s) above)"
        )
        if m.slow_providers:
            p95 += "; providers above: " + _listing(
                m.slow_providers, lambda k, w: f"{k} {w.count} h, worst {w.value:,.0f} ms"
            )
    health = (
        "all providers healthy"
        if not m.unhealthy_providers
        else "unhealthy: "
        + _listing(m.unhealthy_providers, lambda k, w: f"{k} {w.count} h, worst {_pct(w.value)} at {_t(w.at)}")
    )
    if m.anomalies:
        vol = "anomalies: " + "; ".join(
            f"{_t(h['hour'])} {h['requests']:,} vs {h['baseline']:,.0f} (score {h['score']:+.1f})"
            for h in m.anomalies[:4]
        )
        vol += f" and {len(m.anomalies) - 4} more" if len(m.anomalies) > 4 else ""
    else:
        vol = "no anomalies"
    note = volume_note(m)
    vol = f"{m.requests:,} requests in {m.hours_with_data} of {m.data.window_hours} hours; {vol}" + (
        f"; {note}" if note else ""
    )

    def status(bad: bool) -> str:
        if not m.data.hours:  # "OK" over nothing would be a lie
            return NO_DATA
        return t.severity if bad else "OK"

    return [
        (
            "Error Rate",
            "status >= 400 or timeout, per 5 min",
            f"> {t.error_rate_5m:.0%} over 5 min",
            err,
            status(bool(m.buckets_above)),
        ),
        (
            "P95 Latency",
            "percentile_cont(duration, 0.95), per hour",
            f"> {t.p95_ms:,.0f} ms",
            p95,
            status(bool(m.hours_p95_above or m.slow_providers)),
        ),
        (
            "Provider Health",
            "group by provider, status",
            f"any provider > {t.provider_error_rate:.0%} errors",
            health,
            status(bool(m.unhealthy_providers)),
        ),
        (
            "Request Volume",
            "count by hour vs same hour, prior days",
            f"abs(robust z) > {t.volume_score:g}",
            vol,
            status(bool(m.anomalies)),
        ),
    ]


def table(m: KeyMetrics, observed_width: int = 64) -> str:
    head = ("Metric", "Query pattern", "Alert threshold", "This window", "Status")
    body = [(a, b, c, textwrap.wrap(d, observed_width) or [""], e) for a, b, c, d, e in rows(m)]
    widths = [max(len(head[i]), *(len(r[i]) for r in body)) for i in (0, 1, 2)]
    widths.append(max(len(head[3]), *(len(line) for r in body for line in r[3])))
    widths.append(max(len(head[4]), *(len(r[4]) for r in body)))

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [*coverage(m), line(head), sep]
    for metric, pattern, threshold, observed, status in body:
        out.append(line((metric, pattern, threshold, observed[0], status)))
        out.extend(line(("", "", "", more, "")) for more in observed[1:])
    return "\n".join(out)


def hour_ranges(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours merged: [(start, end exclusive), ...]."""
    out: list[tuple[datetime, datetime]] = []
    for h in hours:
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + HOUR)
        else:
            out.append((h, h + HOUR))
    return out


def coverage(m: KeyMetrics) -> list[str]:
    """Exactly which hours the report covers, and which of them hold no data."""
    d = m.data
    lines = [f"Key metrics for {d.window_hours} whole hour(s): {_t(d.start)} .. {_t(d.end)} UTC (end exclusive)"]
    missing = d.missing_hours()
    if not d.hours:
        lines.append(f"{NO_DATA}: nothing is ingested for these hours; ingest them first:")
    elif missing:
        lines.append(f"{len(missing)} of {d.window_hours} hour(s) have no ingested data; ingest them with:")
    for s, e in hour_ranges(missing)[:5]:
        lines.append(f"  stackone-pipeline backfill --start {s:%Y-%m-%dT%H:%MZ} --end {e:%Y-%m-%dT%H:%MZ}")
    if len(hour_ranges(missing)) > 5:
        lines.append(f"  … and {len(hour_ranges(missing)) - 5} more range(s)")
    return lines


def summary(m: KeyMetrics) -> list[str]:
    """A few headline figures (for the end of `stackone-pipeline demo`)."""
    t = m.data.thresholds
    if not m.requests:
        return [f"no requests between {_t(m.data.start)} and {_t(m.data.end)} UTC"]
    lines = [
        f"requests: {m.requests:,} in {m.hours_with_data} hour(s), {_t(m.data.start)} .. {_t(m.data.end)} UTC; "
        f"error rate {_pct(m.error_rate)}"
    ]
    wb = m.worst_bucket
    lines.append(
        f"worst 5-minute error rate: {_pct(wb['error_rate'])} at {_t(wb['bucket_start'])} "
        f"({len(m.buckets_above)} bucket(s) above {t.error_rate_5m:.0%})"
    )
    if m.worst_p95_hour is not None:
        slow = ", ".join(m.slow_providers) or "none"
        lines.append(
            f"p95 latency: worst hour {m.worst_p95_hour['p95_ms']:,.0f} ms; providers above {t.p95_ms:,.0f} ms: {slow}"
        )
    unhealthy = ", ".join(f"{k} ({w.count} h)" for k, w in m.unhealthy_providers.items()) or "none"
    lines.append(f"providers above {t.provider_error_rate:.0%} errors in an hour: {unhealthy}")
    note = volume_note(m)
    anomalies = ", ".join(_t(h["hour"]) for h in m.anomalies) or "none"
    lines.append(f"volume anomalies: {anomalies}" + (f"; {note}" if note else ""))
    return lines


def dead_letter_lines(rows: list[tuple[str, datetime, str, int, int]]) -> list[str]:
    """The window's dead letters per hour, sink and reason (sinks/dead_letters.summary rows)."""
    if not rows:
        return ["", "Dead letters: none (every record the sinks were sent was accepted)."]
    total = sum(r[3] for r in rows)
    lines = [
        "",
        f"Dead letters: {total:,} record(s) a sink refused for good (`stackone-pipeline sinks replay` resends):",
    ]
    for sink, hour, reason, records, _refused in rows[:24]:
        lines.append(f"  {_t(hour)} UTC  {sink:<8} {records:>7,}  {reason}")
    if len(rows) > 24:
        lines.append(f"  … and {len(rows) - 24} more (stackone-pipeline sinks dead-letters)")
    return lines
