"""Conditions from the pipeline's own tables and events.

* Alerts: the failing rows of `alert_evaluations` for the newest evaluated hour. One condition
  per (check, subject) — the 5-minute buckets of an hour fold into one "overall" condition — so
  it stays open (and is notified once) for as long as each new hour keeps failing it, and
  resolves on the first hour that passes. Re-derived older hours (the lookback) do not reopen
  anything: the newest hour is the current state.
* Webhook events `account.error` / `account.expired` (the guide's) and `account.deleted`
  (StackOne's platform event): one-shot, one per event key. Other types (`account.created`,
  `account.updated`, `request.failed`, anything else) are recorded, not notified.
* Failed Dagster runs: one-shot, one per run.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..analytics.alerts import CHECKS_BY_NAME, fmt_value
from ..projects import DEFAULT_PROJECT
from ..storage import Storage
from .model import Condition

SEVERITY = {"WARN": "warning", "ERROR": "critical"}
WHAT = {
    "overall_error_rate_5m": "5-minute error rate",
    "p95_latency": "p95 latency",
    "provider_error_rate": "provider error rate",
    "request_volume_anomaly": "request volume anomaly",
}
ACCOUNT_EVENTS = {
    "account.error": ("StackOneAccountError", "critical", "reports an error"),
    "account.expired": ("StackOneAccountExpired", "warning", "has expired: reconnect it"),
    "account.deleted": ("StackOneAccountDeleted", "warning", "was deleted"),
}


def camel(name: str) -> str:
    return "StackOne" + "".join(p[:1].upper() + p[1:] for p in name.replace(".", "_").split("_"))


def alert_conditions(storage: Storage, dagster_url: str = "") -> list[Condition] | None:
    """The open alert conditions, or None before anything was ever evaluated."""
    if not storage.warehouse.path.exists():
        return None
    with storage.warehouse.reader() as con:
        if not con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'alert_evaluations'").fetchall():
            return None
        (latest,) = con.execute("SELECT max(hour) FROM alert_evaluations").fetchone()
        rows = con.execute(
            "SELECT check_name, subject, value, threshold, severity, detail FROM alert_evaluations "
            "WHERE hour = ? AND NOT passed ORDER BY check_name, value DESC NULLS LAST, subject",
            [latest],
        ).fetchall()
    groups: dict[tuple[str, str], list[tuple]] = {}
    for check, subject, *rest in rows:
        groups.setdefault((check, "overall" if subject.startswith("bucket ") else subject), []).append((subject, *rest))
    alerts = [_alert(latest, check, subject, failing, dagster_url) for (check, subject), failing in groups.items()]
    if storage.project == DEFAULT_PROJECT:
        return alerts
    p = storage.project  # another project's alerts: its own conditions, named
    return [replace(a, key=f"{p}/{a.key}", title=f"[{p}] {a.title}", labels={**a.labels, "project": p}) for a in alerts]


def _alert(hour: datetime, check: str, subject: str, failing: list[tuple], dagster_url: str) -> Condition:
    unit = CHECKS_BY_NAME[check].unit if check in CHECKS_BY_NAME else "score"
    _, value, threshold, severity, _ = failing[0]  # the worst first
    what = WHAT.get(check, check)
    title = f"{what}: {subject} at {fmt_value(value, unit)} (threshold {fmt_value(threshold, unit)})"
    lines = [f"Hour {hour:%Y-%m-%d %H}:00 UTC."]
    for subj, v, _, _, detail in failing[:5]:
        lines.append(f"• {subj}: {fmt_value(v, unit)}" + (f" ({detail})" if detail else ""))
    if len(failing) > 5:
        lines.append(f"• and {len(failing) - 5} more in table alert_evaluations")
    labels = {"alertname": camel(check), "check": check, "subject": subject}
    if subject.startswith("provider "):
        labels["provider"] = subject.removeprefix("provider ")
    table = CHECKS_BY_NAME[check].table if check in CHECKS_BY_NAME else "alert_evaluations"
    return Condition(
        key=f"alert/{check}/{subject}",
        source="alert",
        title=title,
        text="\n".join(lines),
        severity=SEVERITY.get(severity, "warning"),
        labels=labels,
        annotations={
            "hour": f"{hour:%Y-%m-%dT%H:00Z}",
            "value": "" if value is None else f"{value:g}",
            "threshold": f"{threshold:g}",
            "failing": str(len(failing)),
        },
        url=f"{dagster_url.rstrip('/')}/assets/{table}" if dagster_url else None,
    )


def event_condition(event: dict, dagster_url: str = "") -> Condition | None:
    """An account.error / account.expired / account.deleted webhook event (a `webhook_events`
    row, of either body format); None for others."""
    kind = ACCOUNT_EVENTS.get(event.get("event_type") or "")
    if kind is None:
        return None
    alertname, severity, happened = kind
    account, provider = event.get("account_id") or "unknown", event.get("provider") or "unknown"
    when = event.get("occurred_at") or event.get("received_at")
    text = f"StackOne sent {event['event_type']} (event {event['event_id']})"
    text += f" at {when:%Y-%m-%d %H:%M:%S} UTC." if isinstance(when, datetime) else "."
    owner_name, owner_id = event.get("origin_owner_name"), event.get("origin_owner_id")
    if owner_name or owner_id:
        text += (
            f"\nOwner: {owner_name} ({owner_id})" if owner_name and owner_id else f"\nOwner: {owner_name or owner_id}"
        )
    if event.get("project_id"):
        text += f"\nProject: {event['project_id']}"
    if event.get("error"):
        text += f"\nError: {str(event['error'])[:500]}"
    annotations = {"event_id": str(event["event_id"]), "event_type": event["event_type"]}
    for name in ("project_id", "origin_owner_id", "origin_owner_name"):
        if event.get(name):
            annotations[name] = str(event[name])
    return Condition(
        key=f"webhook/{event['event_id']}",
        source="webhook",
        severity=severity,
        one_shot=True,
        title=f"StackOne account {account} ({provider}) {happened}",
        text=text,
        labels={"alertname": alertname, "account_id": account, "provider": provider},
        annotations=annotations,
        url=f"{dagster_url.rstrip('/')}/assets/webhook_events" if dagster_url else None,
    )


def run_failure_condition(
    run_id: str, job: str, partition: str | None, message: str, step_errors: list[str], dagster_url: str = ""
) -> Condition:
    title = f"Dagster run of {job} failed" + (f" for {partition}" if partition else "")
    text = "\n".join([message, *(e[:500] for e in step_errors[:3])])
    return Condition(
        key=f"run/{run_id}",
        source="run",
        severity="critical",
        one_shot=True,
        title=title,
        text=text,
        labels={"alertname": "StackOnePipelineRunFailed", "job": job},
        annotations={"run_id": run_id, "partition": partition or ""},
        url=f"{dagster_url.rstrip('/')}/runs/{run_id}" if dagster_url else None,
    )
