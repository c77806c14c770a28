"""Notifications end to end: alert_evaluations rows -> sensors -> a JSON webhook and a Slack
receiver (tiny local HTTP servers) and a real Alertmanager, read back through its API."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from stackone_pipeline.analytics import tables
from stackone_pipeline.automation import build_sensors
from stackone_pipeline.notify import Notifier, channels
from stackone_pipeline.resources import NotifyResource, StorageResource
from stackone_pipeline.settings import AutomationSettings
from stackone_pipeline.storage import Storage

from .alertmanager_server import alertmanager  # noqa: F401 (fixture)
from .prometheus_server import free_port

HOUR = datetime(2026, 11, 25, 14, tzinfo=timezone.utc)
SENSORS = {s.name: s for s in build_sensors(AutomationSettings())}


@pytest.fixture(params=["duckdb", "postgres"])
def wh(request, tmp_path, monkeypatch):
    """A data directory; its notification state in warehouse.duckdb, or in a shared PostgreSQL
    (STACKONE_STATE_URL, which every Storage of the test follows)."""
    if request.param == "postgres":
        monkeypatch.setenv("STACKONE_STATE_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("STACKONE_STATE_URL", raising=False)
    storage = Storage(tmp_path / "data")
    with storage.warehouse.writer() as con:
        con.execute(tables.sql("schema"))
    return storage


def state_rows(wh: Storage, sql: str) -> list[tuple]:
    """The rows of `sql` on the notification state, wherever it is."""
    if wh.shared_state is not None:
        with wh.shared_state.transaction() as con:
            return con.execute(sql).fetchall()
    with wh.warehouse.reader() as con:
        return con.execute(sql).fetchall()


def evaluate(wh: Storage, hour: datetime, failing: list[tuple[str, str, float, float]]) -> None:
    """alert_evaluations of `hour`: the given (check, subject, value, threshold) fail, one passes."""
    rows = [(hour, c, s, v, t, False, "WARN", f"detail of {s}", wh.project) for c, s, v, t in failing]
    rows.append((hour, "p95_latency", "overall", 900.0, 2000.0, True, "WARN", None, wh.project))
    with wh.warehouse.writer() as con:
        con.executemany("INSERT INTO alert_evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def tick(wh, webhook, slack, am_url="", name="alert_notifications", **kw):
    notify = NotifyResource(
        webhook_url=webhook.url,
        slack_url=slack.url,
        alertmanager_url=am_url,
        timeout_s=0.5,
        deadline_s=1.0,
        dagster_url="http://dagster.test:3000",
    )
    resources = {"storage": StorageResource(data_dir=str(wh.data_dir)), "notify": notify}
    with dg.build_sensor_context(resources=resources, **kw) as context:  # tears the resources down
        return SENSORS[name](context)


WORKDAY = ("provider_error_rate", "provider workday", 0.235, 0.10)
BUCKETS = [("overall_error_rate_5m", f"bucket 2026-11-25T14:{m}Z", r, 0.05) for m, r in (("20", 0.31), ("25", 0.12))]


def test_an_open_condition_is_notified_once_everywhere_and_resolved_once(wh, hooks, alertmanager):
    webhook, slack = hooks
    evaluate(wh, HOUR, [WORKDAY, *BUCKETS])
    tick(wh, webhook, slack, alertmanager.url)
    tick(wh, webhook, slack, alertmanager.url)  # still open: nothing new
    assert [(b["status"], b["key"]) for b in webhook.bodies] == [
        ("firing", "alert/overall_error_rate_5m/overall"),
        ("firing", "alert/provider_error_rate/provider workday"),
    ]
    overall, workday = webhook.bodies
    assert workday["title"] == "provider error rate: provider workday at 23.50% (threshold 10.00%)"
    assert workday["labels"] == {
        "alertname": "StackOneProviderErrorRate",
        "check": "provider_error_rate",
        "subject": "provider workday",
        "provider": "workday",
    }
    assert (
        workday["url"] == "http://dagster.test:3000/assets/provider_health_hourly" and workday["severity"] == "warning"
    )
    assert overall["annotations"]["failing"] == "2" and "14:20Z: 31.00%" in overall["text"]  # worst bucket first
    assert len(slack.bodies) == 2 and slack.bodies[1]["text"].startswith(":warning: [FIRING] provider error rate")
    assert [b["type"] for b in slack.bodies[1]["blocks"]] == ["header", "section", "section", "context"]
    alerts = {a["labels"]["alertname"]: a for a in alertmanager.alerts()}
    assert set(alerts) == {"StackOneProviderErrorRate", "StackOneOverallErrorRate5m"}
    am = alerts["StackOneProviderErrorRate"]
    assert am["labels"] == {**workday["labels"], "severity": "warning"} and am["status"]["state"] == "active"
    assert am["annotations"]["hour"] == "2026-11-25T14:00Z" and am["annotations"]["summary"] == workday["title"]
    assert am["generatorURL"] == workday["url"]

    # The next hour still fails for workday only: the 5-minute condition resolves, once.
    evaluate(wh, HOUR + timedelta(hours=1), [(*WORKDAY[:2], 0.19, 0.10)])
    tick(wh, webhook, slack, alertmanager.url)
    tick(wh, webhook, slack, alertmanager.url)
    assert [(b["status"], b["key"]) for b in webhook.bodies[2:]] == [
        ("resolved", "alert/overall_error_rate_5m/overall")
    ]
    assert webhook.bodies[2]["resolved_at"] and slack.bodies[2]["text"].startswith(":white_check_mark: [RESOLVED]")
    assert [a["labels"]["alertname"] for a in alertmanager.alerts()] == ["StackOneProviderErrorRate"]

    evaluate(wh, HOUR + timedelta(hours=2), [])  # all clear
    tick(wh, webhook, slack, alertmanager.url)
    assert [(b["status"], b["key"]) for b in webhook.bodies[3:]] == [
        ("resolved", "alert/provider_error_rate/provider workday")
    ]
    assert len(slack.bodies) == 4 and alertmanager.alerts() == []


def test_a_down_channel_is_retried_on_the_next_tick_without_blocking(wh, hooks):
    webhook, slack = hooks
    webhook.status = 503
    dead_alertmanager = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    evaluate(wh, HOUR, [WORKDAY, BUCKETS[0]])
    result = tick(wh, webhook, slack, dead_alertmanager)
    assert "4 waiting for" in result.skip_message and len(slack.bodies) == 2 and webhook.bodies == []
    # retried inside the deadline (3 attempts at most), then left for the next tick: the webhook
    # saw the attempts of one message only (counted by the receiver, not by the wall clock)
    assert 2 <= webhook.attempts <= 3
    pending = state_rows(
        wh,
        "SELECT channel, count(*), min(last_error), array_agg(attempts ORDER BY attempts) FROM notify_deliveries "
        "WHERE status = 'pending' GROUP BY channel ORDER BY channel",
    )
    assert [(c, n) for c, n, _, _ in pending] == [("alertmanager", 2), ("webhook", 2)]
    assert "HTTP 503" in pending[1][2] and "refused" in pending[0][2].lower()  # the cause, in any wording
    # one deadline per down channel, not per message: of each channel's two messages, the first
    # was tried and the second not even started this tick
    assert [tried for *_, tried in pending] == [[0, 1], [0, 1]]

    webhook.status = 200
    tick(wh, webhook, slack, dead_alertmanager)
    tick(wh, webhook, slack, dead_alertmanager)
    assert [b["key"] for b in webhook.bodies] == [
        "alert/overall_error_rate_5m/overall",
        "alert/provider_error_rate/provider workday",
    ]
    assert len(slack.bodies) == 2  # never twice


def test_a_message_a_channel_refuses_is_not_retried(wh, hooks):
    webhook, slack = hooks
    slack.status = 400  # Slack's invalid_payload: final
    evaluate(wh, HOUR, [WORKDAY])
    tick(wh, webhook, slack)
    tick(wh, webhook, slack)
    assert slack.attempts == 1 and len(webhook.bodies) == 1
    assert state_rows(wh, "SELECT status FROM notify_deliveries WHERE channel = 'slack'") == [("rejected",)]


def test_alertmanager_alerts_are_refreshed_before_they_expire(wh, hooks, alertmanager):
    webhook, _ = hooks
    now = [datetime.now(timezone.utc)]
    chans = channels(webhook_url=webhook.url, alertmanager_url=alertmanager.url, alertmanager_refresh_s=600)
    notifier = Notifier(wh, chans, clock=lambda: now[0])
    evaluate(wh, HOUR, [WORKDAY])
    from stackone_pipeline.notify.conditions import alert_conditions

    assert notifier.sync(alert_conditions(wh)).sent == {"webhook": 1, "alertmanager": 1}
    ends = alertmanager.alerts()[0]["endsAt"]
    now[0] += timedelta(minutes=5)
    assert notifier.sync(alert_conditions(wh)).sent == {}
    now[0] += timedelta(minutes=6)  # past the 10-minute refresh: Alertmanager only
    assert notifier.sync(alert_conditions(wh)).sent == {"alertmanager": 1}
    (alert,) = alertmanager.alerts()
    assert alert["endsAt"] > ends and len(webhook.bodies) == 1


def test_a_failed_run_is_notified_once(wh, hooks, alertmanager, instance):
    webhook, slack = hooks

    @dg.op
    def fetch():
        raise dg.Failure("3 of 4 hours failed: 2026-11-25 14:00 UTC: HTTP 503")

    @dg.job(name="hourly_job")
    def failing():
        fetch()

    result = failing.execute_in_process(
        instance=instance, raise_on_error=False, tags={"dagster/partition": "2026-11-25-14:00"}
    )
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    notify = NotifyResource(
        webhook_url=webhook.url,
        slack_url=slack.url,
        alertmanager_url=alertmanager.url,
        dagster_url="http://dagster.test:3000",
    )
    for _ in range(2):
        with dg.build_run_status_sensor_context(
            sensor_name="run_failure_notifications",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources={"storage": StorageResource(data_dir=str(wh.data_dir)), "notify": notify},
        ).for_run_failure() as context:
            SENSORS["run_failure_notifications"](context)
    (doc,) = webhook.bodies
    assert doc["title"] == "Dagster run of hourly_job failed for 2026-11-25-14:00" and doc["severity"] == "critical"
    assert (
        "fetch: 3 of 4 hours failed" in doc["text"] and doc["url"] == f"http://dagster.test:3000/runs/{result.run_id}"
    )
    assert len(slack.bodies) == 1
    (alert,) = [a for a in alertmanager.alerts() if a["labels"]["alertname"] == "StackOnePipelineRunFailed"]
    assert alert["labels"]["job"] == "hourly_job" and alert["annotations"]["run_id"] == result.run_id


def test_webhook_event_conditions_for_account_problems_only():
    """account.error / account.expired (the guide) and account.deleted (StackOne's platform event)
    become one-shot conditions, from rows of either body format; every other type none."""
    from stackone_pipeline.notify.conditions import event_condition

    at = datetime(2026, 11, 25, 14, 3, tzinfo=timezone.utc)
    deleted = {
        "event_id": "sha256:" + "ab" * 32,
        "event_type": "account.deleted",
        "occurred_at": at,
        "account_id": "acct_gone",
        "provider": "hibob",
        "project_id": "proj_9",
        "origin_owner_id": "cust_123",
        "origin_owner_name": "Acme Ltd",
    }
    c = event_condition(deleted, "http://dagster.test:3000")
    assert (c.key, c.source, c.severity, c.one_shot) == (f"webhook/{deleted['event_id']}", "webhook", "warning", True)
    assert c.title == "StackOne account acct_gone (hibob) was deleted"
    assert c.labels == {"alertname": "StackOneAccountDeleted", "account_id": "acct_gone", "provider": "hibob"}
    assert "2026-11-25 14:03:00 UTC" in c.text and "Owner: Acme Ltd (cust_123)" in c.text and "proj_9" in c.text
    assert (
        c.annotations["origin_owner_name"] == "Acme Ltd" and c.url == "http://dagster.test:3000/assets/webhook_events"
    )
    # a row of the documented format (no project or owner columns, e.g. a table of an older version)
    old = {"event_id": "evt_1", "event_type": "account.expired", "account_id": "a", "provider": "workday"}
    c = event_condition(old)
    assert c.title == "StackOne account a (workday) has expired: reconnect it" and "Owner" not in c.text
    assert set(c.annotations) == {"event_id", "event_type"}
    for kind in ("account.created", "account.updated", "request.failed", "something.new", None):
        assert event_condition({**deleted, "event_type": kind}) is None
