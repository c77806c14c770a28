"""A self-contained HTML report: key metrics, inline SVG charts, failing hours. No scripts, no
external fonts, stylesheets or images: the file works offline and as an e-mail attachment."""

from __future__ import annotations

from datetime import timedelta
from html import escape

from .metrics import HOUR, KeyMetrics
from .svg import PALETTE, Bar, Chart, Marker, Series, legend
from .text import coverage, rows

FIVE_MIN = timedelta(minutes=5)
HALF = HOUR / 2  # hourly figures are drawn mid-hour, over their bar
CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.OK{color:#2a7d2a;font-weight:bold}.WARN{color:#b36b00;font-weight:bold}
.ERROR{color:#c62828;font-weight:bold}.NO_DATA{color:#666;font-weight:bold}.legend span{margin-right:12px;font-size:12px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:3px;margin-right:4px;vertical-align:middle}
.note{color:#666;font-size:12px}
"""


def _pct(v: float) -> str:
    return f"{v:.0%}" if v >= 0.1 or v == 0 else f"{v:.1%}"


def render(m: KeyMetrics) -> str:
    d = m.data
    t = d.thresholds
    names = sorted({p["provider"] for p in d.providers})
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>StackOne request logs {d.start:%Y-%m-%d %H:%M} to {d.end:%Y-%m-%d %H:%M} UTC</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>StackOne request logs: {d.start:%Y-%m-%d %H:%M} to {d.end:%Y-%m-%d %H:%M} UTC</h1>",
        *(f'<p class="note">{escape(line.strip())}</p>' for line in coverage(m)),
        "<h2>Key metrics</h2>",
        _table(
            ("Metric", "Query pattern", "Alert threshold", "This window", "Status"),
            [(a, b, c, dd, f'<span class="{e.replace(" ", "_")}">{escape(e)}</span>') for a, b, c, dd, e in rows(m)],
            raw_last=True,
        ),
    ]
    # 1. error rate per provider (hourly) + overall, and overall per 5-minute bucket
    by_provider = {n: [(p["hour"] + HALF, p["error_rate"]) for p in d.providers if p["provider"] == n] for n in names}
    overall_hourly = [(h["hour"] + HALF, h["error_rate"]) for h in d.hours]
    chart = Chart(
        "Error rate per provider (hourly)",
        d.start,
        d.end,
        _pct,
        threshold=t.provider_error_rate,
        threshold_label=f"alert: provider > {t.provider_error_rate:.0%}",
    )
    chart.series = [Series(n, pts, colour[n]) for n, pts in by_provider.items()]
    chart.series.append(Series("all providers", overall_hourly, "#000", width=2.5))
    parts += [
        "<h2>Error rate per provider</h2>",
        chart.render(),
        legend([(n, colour[n]) for n in names] + [("all providers", "#000")]),
    ]
    five = Chart(
        "Error rate, all providers, per 5-minute bucket",
        d.start,
        d.end,
        _pct,
        threshold=t.error_rate_5m,
        threshold_label=f"alert: > {t.error_rate_5m:.0%} over 5 min",
    )
    five.series = [
        Series("all providers", [(b["bucket_start"], b["error_rate"]) for b in d.buckets], "#000", max_gap=FIVE_MIN)
    ]
    five.markers = [
        Marker(
            b["bucket_start"],
            b["error_rate"],
            f"{b['bucket_start']:%Y-%m-%d %H:%M} {b['error_rate']:.2%} ({b['errors']}/{b['requests']})",
        )
        for b in m.buckets_above
    ]
    parts.append(five.render())
    # 2. p95 latency
    p95 = Chart(
        "p95 latency per provider (hourly)",
        d.start,
        d.end,
        lambda v: f"{v:,.0f} ms",
        threshold=t.p95_ms,
        threshold_label=f"alert: > {t.p95_ms:,.0f} ms",
    )
    p95.series = [
        Series(n, [(p["hour"] + HALF, p["p95_ms"]) for p in d.providers if p["provider"] == n], colour[n])
        for n in names
    ]
    p95.series.append(Series("all providers", [(h["hour"] + HALF, h["p95_ms"]) for h in d.hours], "#000", width=2.5))
    parts += [
        "<h2>p95 latency</h2>",
        p95.render(),
        legend([(n, colour[n]) for n in names] + [("all providers", "#000")]),
    ]
    # 3. request volume, baseline, anomalies
    vol = Chart("Requests per hour", d.start, d.end, lambda v: f"{v:,.0f}")
    vol.bars = [
        Bar(
            h["hour"],
            h["hour"] + HOUR,
            h["requests"],
            "#9ecae1" if h["score"] is not None else "#d9d9d9",
            f"{h['hour']:%Y-%m-%d %H:%M}: {h['requests']:,} requests"
            + (
                f", baseline {h['baseline']:,.0f}, score {h['score']:+.1f}"
                if h["score"] is not None
                else " (not scored)"
            ),
        )
        for h in d.hours
    ]
    vol.series = [
        Series(
            "baseline (median of same hour, prior days)",
            [(h["hour"] + HALF, h["baseline"]) for h in d.hours],
            "#08519c",
            dash="5 3",
        )
    ]
    vol.markers = [
        Marker(
            h["hour"] + HALF,
            h["requests"],
            f"anomaly {h['hour']:%Y-%m-%d %H:%M}: {h['requests']:,} vs {h['baseline']:,.0f} (score {h['score']:+.1f})",
        )
        for h in m.anomalies
    ]
    parts += [
        "<h2>Request volume</h2>",
        vol.render(),
        legend(
            [
                ("requests (scored)", "#9ecae1"),
                ("requests (not enough history)", "#d9d9d9"),
                ("baseline", "#08519c"),
                ("anomaly", "#d62728"),
            ]
        ),
    ]
    # failing details
    parts.append("<h2>Unhealthy provider-hours</h2>")
    bad = [p for p in d.providers if p["error_rate"] > t.provider_error_rate]
    parts.append(
        _table(
            ("hour (UTC)", "provider", "requests", "errors", "error rate", "p95 ms"),
            [
                (
                    f"{p['hour']:%Y-%m-%d %H:%M}",
                    p["provider"],
                    f"{p['requests']:,}",
                    f"{p['errors']:,}",
                    f"{p['error_rate']:.2%}",
                    "n/a" if p["p95_ms"] is None else f"{p['p95_ms']:,.0f}",
                )
                for p in bad
            ],
        )
        if bad
        else '<p class="note">none</p>'
    )
    parts.append("<h2>5-minute buckets above the error-rate threshold</h2>")
    parts.append(
        _table(
            ("bucket (UTC)", "requests", "errors", "error rate"),
            [
                (
                    f"{b['bucket_start']:%Y-%m-%d %H:%M}",
                    f"{b['requests']:,}",
                    f"{b['errors']:,}",
                    f"{b['error_rate']:.2%}",
                )
                for b in m.buckets_above
            ],
        )
        if m.buckets_above
        else '<p class="note">none</p>'
    )
    parts.append(
        '<p class="note">Errors are status &gt;= 400 or timeouts (no status, success false). '
        "Percentiles are continuous. Volume is scored against the median and MAD of the same hour "
        "on up to 28 prior days and needs 7 of them. Source: warehouse.duckdb analytics tables.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(head, body, raw_last: bool = False) -> str:
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for r in body:
        cells = [escape(str(c)) for c in r[:-1]] + [r[-1] if raw_last else escape(str(r[-1]))]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
