"""The analytics tables (error rates, latency, provider health, volume, account errors) and the
alert checks, as one hourly multi-asset downstream of `request_logs`.

One multi-asset rather than seven assets: every table of an hour is replaced in one DuckDB
transaction (the hour is consistent across tables and the writer lock is taken once per hour),
while each table is still its own asset key, so the graph shows request_logs -> each table.

Checks are *not* partitioned (no `partitions_def` on the AssetCheckSpecs), on purpose: in a
range (single_run) run Dagster evaluates a check once, and a partitioned check then records one
evaluation with no partition and leaves every hour's planned evaluation unresolved (Dagster
1.13, verified by running it). An asset-level check records exactly one result per run, whose metadata names every
failing hour and subject; the per-hour truth is the `alert_evaluations` table.
"""

import contextlib
import functools

import dagster as dg

from ..analytics import tables
from ..analytics.alerts import CHECKS, CheckOutcome, fmt_value, outcomes
from ..analytics.derive import HourSummary, derive_hours
from ..ingest import HourLines
from ..partitions import hourly_backfill_policy, hourly_partitions, hours_of_run
from ..projects import Project
from ..resources import AlertThresholdsResource, StorageResource
from ..settings import Thresholds

DESCRIPTIONS = {
    "error_rate_5m": "Requests, errors and error rate per 5-minute UTC bucket and provider. "
    "View error_rate_5m_overall: all providers.",
    "error_rate_hourly": "Requests, errors (4xx, 5xx, timeouts) and error rate per hour, provider and service. "
    "Views error_rate_hourly_overall, error_rate_hourly_by_provider.",
    "latency_hourly": "p50/p90/p95/p99, mean and max duration (ms) per hour, provider and action.",
    "provider_health_hourly": "Per hour and provider: requests, error rate, p95 and healthy (error rate <= threshold).",
    "account_errors_hourly": "Requests, errors and error rate per hour, linked account and provider.",
    "request_volume_hourly": "Per hour, all providers: requests, errors, p50/p95/p99 and the volume anomaly "
    "score against the median/MAD of the same hour on the previous 28 days. View latency_hourly_overall.",
    "alert_evaluations": "Every alert threshold evaluation (hour, check, subject, value, threshold, passed).",
}
HEADLINE_TABLE = "request_volume_hourly"  # a range run's per-hour observation goes here
DEPS = {name: ["request_logs"] for name in tables.DERIVED_TABLES} | {
    "alert_evaluations": ["error_rate_5m", "provider_health_hourly", "account_errors_hourly", "request_volume_hourly"],
}


def _spec(table: str, project: Project) -> dg.AssetSpec:
    schema = dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in tables.columns(table)])
    prefix = project.asset_prefix()
    return dg.AssetSpec(
        dg.AssetKey([*prefix, table]),
        deps=[dg.AssetKey([*prefix, dep]) for dep in DEPS[table]],
        description=DESCRIPTIONS[table],
        group_name=project.suffix("analytics"),
        kinds={"duckdb", "parquet"},
        metadata={"dagster/column_schema": schema, "dagster/table_name": f"warehouse.{table}"},
    )


@functools.cache  # one definition per project: Dagster refuses two of one name
def analytics_asset(project: Project = Project()) -> dg.AssetsDefinition:
    """The derived tables and their checks of one project (projects.py)."""
    prefix = project.asset_prefix()

    def key(table: str) -> dg.AssetKey:
        return dg.AssetKey([*prefix, table])

    @dg.multi_asset(
        name=project.suffix("analytics_tables"),
        specs=[_spec(t, project) for t in tables.TABLES],
        check_specs=[dg.AssetCheckSpec(c.name, asset=key(c.table), description=c.description) for c in CHECKS],
        partitions_def=hourly_partitions,
        backfill_policy=hourly_backfill_policy(),
        can_subset=False,
    )
    def analytics_tables(context: dg.AssetExecutionContext, storage: StorageResource, alerts: AlertThresholdsResource):
        keys = hours_of_run(context)
        thresholds = alerts.thresholds()
        ranged = len(keys) > 1
        lines = HourLines(context.log.info)

        def observe(summary: HourSummary):
            lines.add(
                f"{summary.hour:%Y-%m-%d %H}:00 UTC: {summary.requests:,} requests, "
                f"{len(summary.failures)} failed evaluation(s), {summary.seconds:.2f}s"
            )
            if ranged:  # a range run copies returned metadata onto every hour: observe each hour, once
                # (on the hour's headline table; an event per table and hour costs Dagster 1-11 ms each)
                metadata = hour_metadata(summary, HEADLINE_TABLE) | {
                    f"rows/{table}": summary.rows.get(table, 0) for table in tables.TABLES
                }
                context.log_event(
                    dg.AssetObservation(asset_key=key(HEADLINE_TABLE), partition=keys[summary.hour], metadata=metadata)
                )

        with contextlib.closing(lines):  # what the hours done said, even if a later one fails
            summaries = derive_hours(storage.storage(project.name), list(keys), thresholds, on_hour=observe)
        results = outcomes(summaries)
        checks_by_table = {c.table: c for c in CHECKS}
        for table in tables.TABLES:
            metadata = run_metadata(summaries, table) if ranged else hour_metadata(summaries[0], table)
            check = checks_by_table.get(table)
            check_results = [check_result(results[check.name], thresholds, key(table))] if check else []
            yield dg.MaterializeResult(asset_key=key(table), metadata=metadata, check_results=check_results)

    return analytics_tables


analytics_tables = analytics_asset()  # the default project's


def hour_metadata(s: HourSummary, table: str) -> dict:
    m = dict(s.headline())
    m["dagster/partition_row_count"] = s.rows.get(table, 0)
    if table == "provider_health_hourly":
        m["worst_providers"] = dg.MetadataValue.md(providers_markdown(s.worst_providers))
    return m


def run_metadata(summaries: list[HourSummary], table: str) -> dict:
    requests = sum(s.requests for s in summaries)
    errors = sum(s.errors for s in summaries)
    m = {
        "run_hours": len(summaries),
        "run_rows": sum(s.rows.get(table, 0) for s in summaries),
        "run_requests": requests,
        "run_errors": errors,
        "run_unhealthy_provider_hours": sum(s.providers_unhealthy for s in summaries),
        "run_failed_evaluations": sum(len(s.failures) for s in summaries),
    }
    if requests:
        m["run_error_rate"] = round(errors / requests, 6)
    p95s = [s.p95_ms for s in summaries if s.p95_ms is not None]
    if p95s:
        m["run_worst_hour_p95_ms"] = max(p95s)
    if table == "provider_health_hourly":
        worst = sorted(
            ({**p, "hour": s.hour} for s in summaries for p in s.worst_providers),
            key=lambda p: (-p["error_rate"], p["hour"], p["provider"]),
        )
        m["worst_providers"] = dg.MetadataValue.md(providers_markdown(worst[:10]))
    return m


def providers_markdown(rows: list[dict]) -> str:
    with_hour = any("hour" in r for r in rows)
    head = ("| hour (UTC) " if with_hour else "") + "| provider | requests | errors | error rate | p95 ms | healthy |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        hour = f"| {r['hour']:%Y-%m-%d %H:%M} " if with_hour else ""
        p95 = "n/a" if r["p95_ms"] is None else f"{r['p95_ms']:,.0f}"
        out.append(
            f"{hour}| {r['provider']} | {r['requests']:,} | {r['errors']:,} | {r['error_rate']:.2%} "
            f"| {p95} | {'yes' if r['healthy'] else '**no**'} |"
        )
    return "\n".join(out) if rows else "no requests"


def check_result(o: CheckOutcome, thresholds: Thresholds, asset_key: dg.AssetKey | None = None) -> dg.AssetCheckResult:
    worst = o.worst()
    metadata = {
        "evaluated_hours": o.hours,
        "evaluations": o.evaluations,
        "failures": len(o.failures),
        "failing_hours": dg.MetadataValue.json([f"{h:%Y-%m-%d-%H:%M}" for h in o.failing_hours]),
        "threshold": _threshold(o, thresholds),
    }
    if o.failures:
        metadata["failing"] = dg.MetadataValue.md(o.markdown())
        metadata["failing_subjects"] = dg.MetadataValue.json(
            [{"hour": f"{f.hour:%Y-%m-%d-%H:%M}", "subject": f.subject, "value": f.value} for f in o.failures[:500]]
        )
    if worst is not None:
        metadata["worst_value"] = float(worst.value)
        metadata["worst"] = f"{worst.hour:%Y-%m-%d %H}:00 {worst.subject} {fmt_value(worst.value, o.check.unit)}"
    return dg.AssetCheckResult(
        asset_key=asset_key or dg.AssetKey(o.check.table),
        check_name=o.check.name,
        passed=o.passed,
        severity=dg.AssetCheckSeverity(thresholds.severity),
        description=o.describe(),
        metadata=metadata,
    )


def _threshold(o: CheckOutcome, t: Thresholds) -> float:
    return {
        "overall_error_rate_5m": t.error_rate_5m,
        "p95_latency": t.p95_ms,
        "provider_error_rate": t.provider_error_rate,
        "request_volume_anomaly": t.volume_score,
    }[o.check.name]
