"""Sensors: notifications (alerts, webhook events, failed runs) and re-ingest on request.failed.

* `alert_notifications` (every 60 s): the open alert conditions (newest evaluated hour of
  alert_evaluations) through the channels — once when a condition opens, once when it clears —
  and every message still pending from an earlier tick (a channel that was down).
* `webhook_actions_sensor` (every 30 s): new `webhook_events` rows. `request.failed` -> one run
  of `hourly_job` for the event's hour (closed hours only; the schedules cover the open one),
  run_key = the event key (the first one of that hour in the tick); `account.error`,
  `account.expired` and `account.deleted` -> a notification naming the account and provider;
  every other type (`account.created`, `account.updated`, unknown ones) is counted by type in
  the tick's message and left in the table.
* `run_failure_notifications`: every failed run of this code location, through the channels.

They never run inside a job, and each channel has a short deadline: notifications cannot hold
up ingestion, and what failed is retried on the next tick.
"""

import re
from collections import Counter
from datetime import datetime, timezone

import dagster as dg

from ..notify.conditions import alert_conditions, event_condition, run_failure_condition
from ..partitions import (
    HOUR,
    PARTITIONS_RETENTION_DAYS,
    RANGE_END,
    RANGE_START,
    expired_hours,
    hourly_partitions,
    partition_key,
)
from ..projects import DEFAULT_PROJECT, Project
from ..resources import NotifyResource, StorageResource
from ..settings import AutomationSettings
from ..storage import Storage
from ..webhooks.new_events import event_hour, read_new_events
from .jobs import HOURLY_JOB, hourly_job_for
from .schedules import TRIGGER

LOCK_TIMEOUT_S = 20  # a sensor tick must finish well inside Dagster's 60 s evaluation timeout
START = hourly_partitions.start  # the oldest hour offered: Dagster refuses a run request for an earlier one
ERROR_PREFIX = re.compile(r"^(?:\w+\.)+(?:Failure: )?")  # dagster._core...Failure: <message>


def _storage(storage: StorageResource, project: str = DEFAULT_PROJECT) -> Storage:
    return Storage(storage.data_dir, lock_timeout_s=LOCK_TIMEOUT_S, project=project)


def reingest_requests(
    events: list[dict], now: datetime, projects: tuple[Project, ...] = (Project(),)
) -> list[dg.RunRequest]:
    """One run per affected closed hour and project, keyed by the first request.failed event of
    that hour (an event names StackOne's project id, not ours: every project re-ingests the hour,
    which costs a walk and changes nothing where nothing is new)."""
    by_hour: dict[datetime, list[str]] = {}
    for e in events:
        hour = event_hour(e) if e.get("event_type") == "request.failed" else None
        if hour is None or hour + HOUR > now or hour < START or expired_hours([hour], now, PARTITIONS_RETENTION_DAYS):
            continue
        by_hour.setdefault(hour, []).append(e["event_id"])
    return [
        dg.RunRequest(
            run_key=project.suffix(ids[0]),
            job_name=project.suffix(HOURLY_JOB),
            partition_key=partition_key(hour),
            tags={TRIGGER: "webhook request.failed", "stackone/webhook_events": ",".join(ids)[:1000]},
        )
        for hour, ids in sorted(by_hour.items())
        for project in projects
    ]


def build_sensors(
    settings: AutomationSettings, projects: tuple[Project, ...] = (Project(),)
) -> list[dg.SensorDefinition]:
    status = dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED

    @dg.sensor(
        name="alert_notifications",
        minimum_interval_seconds=60,
        default_status=status,
        description="Failing alert thresholds -> the notification channels, once per condition, "
        "resolved when it clears; retries what a down channel missed.",
    )
    def alert_notifications(context: dg.SensorEvaluationContext, storage: StorageResource, notify: NotifyResource):
        store = _storage(storage)
        per_project = [alert_conditions(_storage(storage, p.name), notify.dagster_url) for p in projects]
        evaluated = [c for conditions in per_project if conditions is not None for c in conditions]
        open_alerts = None if all(c is None for c in per_project) else evaluated
        report = notify.notifier(store).sync(open_alerts=open_alerts)
        channels = ", ".join(notify.channel_names()) or "no channel configured (STACKONE_NOTIFY_*)"
        return dg.SkipReason(f"{report.summary()} [{channels}]")

    @dg.sensor(
        name="webhook_actions_sensor",
        jobs=[hourly_job_for(p) for p in projects],
        minimum_interval_seconds=30,
        default_status=status,
        description="New webhook events: request.failed re-ingests its hour; account.error, "
        "account.expired and account.deleted are notified; every type is counted.",
    )
    def webhook_actions_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, notify: NotifyResource):
        store = _storage(storage)
        batch = read_new_events(store, context.cursor)
        conditions = [c for c in (event_condition(e, notify.dagster_url) for e in batch.events) if c]
        report = notify.notifier(store).sync(events=conditions) if conditions else None
        runs = reingest_requests(batch.events, datetime.now(timezone.utc), projects)
        by_type = Counter(e.get("event_type") or "?" for e in batch.events)
        why = f"{len(batch.events)} new event(s)"
        why += f" ({', '.join(f'{t} {n}' for t, n in sorted(by_type.items()))})" if by_type else ""
        why += f", {len(runs)} re-ingest(s)"
        why += f"; {report.summary()}" if report else ""
        return dg.SensorResult(run_requests=runs, cursor=batch.cursor, skip_reason=None if runs else why)

    @dg.run_failure_sensor(
        name="run_failure_notifications",
        default_status=status,
        description="A failed run -> the notification channels (once per run).",
    )
    def run_failure_notifications(
        context: dg.RunFailureSensorContext, storage: StorageResource, notify: NotifyResource
    ):
        run = context.dagster_run
        tags = run.tags or {}
        partition = tags.get("dagster/partition") or (
            f"{tags[RANGE_START]}...{tags[RANGE_END]}" if RANGE_START in tags else None
        )
        steps = [
            f"{e.step_key}: {ERROR_PREFIX.sub('', e.event_specific_data.error.message.strip())}"
            for e in context.get_step_failure_events()
            if e.event_specific_data.error
        ]
        condition = run_failure_condition(
            run.run_id, run.job_name, partition, context.failure_event.message or "", steps, notify.dagster_url
        )
        notify.notifier(_storage(storage)).sync(events=[condition])

    return [alert_notifications, webhook_actions_sensor, run_failure_notifications]
