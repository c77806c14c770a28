"""What `stackone-pipeline demo` prints at the end: rows per hour, worst providers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..stackone.records import IS_ERROR_SQL
from ..storage import Storage
from . import summary_lines


def print_summary(data_dir: Path, start: datetime, end: datetime) -> None:
    with Storage(data_dir).warehouse.reader() as con:
        per_hour = con.execute(
            "SELECT hour, count(*) FROM request_logs WHERE hour >= ? AND hour < ? GROUP BY hour ORDER BY hour",
            [start, end],
        ).fetchall()
        providers = con.execute(
            f"""SELECT provider, count(*) AS requests, avg(CASE WHEN {IS_ERROR_SQL} THEN 1 ELSE 0 END) AS error_rate,
                       quantile_cont(duration_ms, 0.95) AS p95_ms
                FROM request_logs WHERE hour >= ? AND hour < ?
                GROUP BY provider ORDER BY error_rate DESC""",
            [start, end],
        ).fetchall()
    total = sum(n for _, n in per_hour)
    print(f"\nRows per hour ({len(per_hour)} hours, {total:,} rows):")
    for hour, n in per_hour:
        print(f"  {hour:%Y-%m-%d %H}:00  {n:>7,}  {'#' * max(1, n * 40 // max(m for _, m in per_hour))}")
    print("\nTop providers by error rate:")
    print(f"  {'provider':<16}{'requests':>10}{'error rate':>12}{'p95 ms':>10}")
    for provider, n, rate, p95 in providers[:5]:
        print(f"  {provider or '-':<16}{n:>10,}{rate:>12.2%}{p95:>10,.0f}")
    print("\nTop providers by p95 latency:")
    for provider, n, rate, p95 in sorted(providers, key=lambda r: -(r[3] or 0))[:5]:
        print(f"  {provider or '-':<16}{n:>10,}{rate:>12.2%}{p95:>10,.0f}")
    print()
    for line in summary_lines(data_dir, start, end):
        print(line)
