"""Schedules and sensors driven by Dagster's testing contexts at chosen times, the requested runs
executed against the simulator (late arrivals on), and the tables they leave behind."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import dagster as dg
import httpx
import orjson
import pytest

from stackone_pipeline.automation import build_schedules, build_sensors
from stackone_pipeline.definitions import build_defs
from stackone_pipeline.ingest import late_arrivals_table
from stackone_pipeline.resources import NotifyResource, StorageResource
from stackone_pipeline.settings import AutomationSettings, OtlpSettings, Settings, SettingsError
from stackone_pipeline.simulator import DEFAULT_API_KEY
from stackone_pipeline.storage import Storage
from stackone_pipeline.webhooks import load_staged_events, signed_headers, start_receiver

from .conftest import closed_hour
from .receivers.otlp import OtlpReceiver

H = timedelta(hours=1)
RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H:%M}"


def make_defs(
    settings: AutomationSettings, data_dir="unused", base_url="http://127.0.0.1:9", otlp_url="http://127.0.0.1:9"
) -> dg.Definitions:
    """The definitions exactly as definitions.py builds them (with an OTLP sink), for the given settings."""
    return build_defs(
        Settings(
            base_url=base_url,
            data_dir=str(data_dir),
            rate_limit_per_minute=100_000,
            automation=settings,
            otlp=OtlpSettings(url=f"{otlp_url.rstrip('/')}/v1/logs"),
        )
    )


def tick(defs: dg.Definitions, name: str, at: datetime):
    context = dg.build_schedule_context(scheduled_execution_time=at, repository_def=defs.get_repository_def())
    return defs.resolve_schedule_def(name).evaluate_tick(context)


def test_settings_decide_default_status_lag_and_lookback():
    off = AutomationSettings.from_env({})
    assert (off.enabled, off.lag_minutes, off.lookback_hours) == (False, 5, 3)
    on = AutomationSettings.from_env({"STACKONE_AUTOMATION": "on", "STACKONE_SCHEDULE_LAG_MINUTES": "17"})
    for settings, status in ((off, "STOPPED"), (on, "RUNNING")):
        schedules, sensors = build_schedules(settings), build_sensors(settings)
        assert {s.default_status.value for s in [*schedules, *sensors]} == {status}
    assert {s.cron_schedule for s in build_schedules(on)} == {"17 * * * *"}
    for bad in (
        {"STACKONE_SCHEDULE_LAG_MINUTES": "60"},
        {"STACKONE_LOOKBACK_HOURS": "-1"},
        {"STACKONE_AUTOMATION": "maybe"},
    ):
        with pytest.raises(SettingsError):
            AutomationSettings.from_env(bad)


def recent_ticks() -> dict[str, tuple[datetime, str, tuple[str, str]]]:
    """(tick time, hour it ingests, lookback range) at an ordinary hour, a day boundary and a month
    boundary, all in the last few weeks: a tick's partition must be inside the rolling partitions
    (Dagster checks it at the tick's time against the retention window of this load)."""
    day = closed_hour(0).replace(hour=0) - timedelta(days=2)  # a midnight at least 2 days ago
    first = day.replace(day=1)  # the 1st of that month: at most ~33 days ago
    before, prior = f"{day:%Y-%m-%d}", f"{first - timedelta(days=1):%Y-%m-%d}"
    return {
        "hour": (day + timedelta(hours=14, minutes=5), f"{before}-13:00", (f"{before}-10:00", f"{before}-12:00")),
        "day boundary": (day + timedelta(days=1, minutes=5), f"{before}-23:00", (f"{before}-20:00", f"{before}-22:00")),
        "month boundary": (
            first + timedelta(hours=1, minutes=5),
            f"{first:%Y-%m-%d}-00:00",
            (f"{prior}-21:00", f"{prior}-23:00"),
        ),
    }


@pytest.mark.parametrize("case", ["hour", "day boundary", "month boundary"])
def test_schedules_request_the_closed_hour_and_the_lookback_range(case):
    when, hourly, lookback = recent_ticks()[case]
    defs = make_defs(AutomationSettings())
    (run,) = tick(defs, "hourly_schedule", when).run_requests
    assert (run.run_key, run.partition_key) == (hourly, hourly)
    assert run.tags == {
        "stackone/trigger": "hourly_schedule",
        "dagster/schedule_name": "hourly_schedule",
        "dagster/partition": hourly,
        "dagster/partition_set": "hourly_job_partition_set",
    }
    (run,) = tick(defs, "lookback_schedule", when).run_requests
    assert run.run_key == f"lookback {lookback[0]}...{lookback[1]}" and run.partition_key is None
    assert run.tags == {
        RANGE[0]: lookback[0],
        RANGE[1]: lookback[1],
        "stackone/trigger": "lookback_schedule",
        "dagster/schedule_name": "lookback_schedule",
    }
    # Lag 0 at the exact hour boundary; lookback off.
    zero, exact = make_defs(AutomationSettings(lag_minutes=0, lookback_hours=0)), when.replace(minute=0)
    assert zero.resolve_schedule_def("hourly_schedule").cron_schedule == "0 * * * *"
    assert tick(zero, "hourly_schedule", exact).run_requests[0].partition_key == hourly
    assert tick(zero, "lookback_schedule", exact).skip_message.startswith("STACKONE_LOOKBACK_HOURS=0")


@pytest.fixture
def pipeline(sim, tmp_path, monkeypatch):
    """Definitions as definitions.py builds them, on the simulator, with an OTLP sink."""
    monkeypatch.setenv("STACKONE_API_KEY", DEFAULT_API_KEY)
    with OtlpReceiver() as rx:
        sim.config.faults.late_fraction = 0.25
        yield make_defs(AutomationSettings(lookback_hours=2), tmp_path, sim.url, rx.url), rx, Storage(tmp_path)


def run_tick(defs, name: str, at: datetime, instance) -> list[dg.RunRequest]:
    """Evaluate a schedule at `at` and execute what it requests, as the daemon would."""
    runs = tick(defs, name, at).run_requests
    for rr in runs:
        job = defs.resolve_job_def(defs.resolve_schedule_def(name).job_name)
        result = job.execute_in_process(partition_key=rr.partition_key, tags=rr.tags, instance=instance)
        assert result.success
    return runs


def test_the_lookback_finds_late_rows_refreshes_tables_and_delivers_only_new_rows(sim, pipeline, monkeypatch, instance):
    defs, rx, wh = pipeline
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url)
    midnight = closed_hour(0).replace(hour=0) - timedelta(days=1)  # a day boundary in the past
    h21, h22, h23 = (midnight - H * n for n in (3, 2, 1))
    expected = {h: len(sim.simulator.expected_records(h, h + H)) for h in (h21, h22, h23)}

    def stored(hour):
        with wh.warehouse.reader() as con:
            return con.execute("SELECT count(*) FROM request_logs WHERE hour = ?", [hour]).fetchone()[0]

    # 23:05: the hour that just closed, first seen without its late rows.
    assert [
        r.partition_key for r in run_tick(defs, "hourly_schedule", midnight - H + timedelta(minutes=5), instance)
    ] == [key(h22)]
    first22 = stored(h22)
    assert 0 < first22 < expected[h22] and late_arrivals_table(wh) == []

    # 00:05 (day boundary): 23:00 first, then 21:00-22:00 again in one run; 22:00's late rows appear.
    at = midnight + timedelta(minutes=5)
    assert run_tick(defs, "hourly_schedule", at, instance)[0].partition_key == key(h23)
    first23 = stored(h23)
    (lookback,) = run_tick(defs, "lookback_schedule", at, instance)
    assert (lookback.tags[RANGE[0]], lookback.tags[RANGE[1]]) == (key(h21), key(h22))
    assert stored(h22) == expected[h22] and stored(h21) < expected[h21]  # 21:00's first walk was this run
    assert [(h, n) for h, _, n in late_arrivals_table(wh)] == [(h22, expected[h22] - first22)]

    # 01:05: 22:00 is complete (nothing new), 23:00 gets its late rows.
    run_tick(defs, "lookback_schedule", midnight + timedelta(hours=1, minutes=5), instance)
    assert [(h, n) for h, _, n in late_arrivals_table(wh)] == [
        (h22, expected[h22] - first22),
        (h23, expected[h23] - first23),
    ]
    with wh.warehouse.reader() as con:  # derived tables were refreshed with the late rows
        volume = dict(con.execute("SELECT hour, requests FROM request_volume_hourly").fetchall())
    assert volume == {h21: stored(h21), h22: expected[h22], h23: expected[h23]}
    # Every stored row reached the sink exactly once: re-ingests sent only what was new.
    sent = Counter(r.attributes["stackone.request_id"] for r in rx.records)
    assert max(sent.values()) == 1 and len(sent) == stored(h21) + expected[h22] + expected[h23]
    last = instance.get_runs()[0].run_id  # the 01:05 lookback: one observation per hour of its range
    seen = {
        e.dagster_event.event_specific_data.asset_observation.partition: e.dagster_event.event_specific_data.asset_observation.metadata[
            "new_rows"
        ].value
        for e in instance.all_logs(last, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
        if e.dagster_event.asset_key == dg.AssetKey("late_arrivals")
    }
    assert seen == {key(h22): 0, key(h23): expected[h23] - first23}


WEBHOOK_SECRET = "whsec_automation-test-7Kq2"


def load(wh: Storage, *events: tuple) -> None:
    """Deliver (event_id, type, event time, account_id, provider, error) events, signed and in the
    documented body format, to a real receiver on the pipeline's data directory, then load what it
    staged with the loader the `webhook_events` asset runs: the table is the loader's own."""
    with start_receiver(wh.data_dir, WEBHOOK_SECRET) as receiver:
        for event_id, kind, at, account, provider, error in events:
            data = {"account_id": account, "provider": provider, "error": error}
            if kind == "request.failed":
                data |= {"request_id": f"req_{event_id}", "event_datetime": at.isoformat()}
            body = orjson.dumps(
                {"id": event_id, "type": kind, "created_at": datetime.now(timezone.utc).isoformat(), "data": data}
            )
            r = httpx.post(receiver.endpoint, content=body, headers=signed_headers(WEBHOOK_SECRET, body), timeout=30)
            assert r.status_code == 200 and r.json() == {"status": "stored", "id": event_id}, r.text
    loaded = load_staged_events(wh)
    assert sorted(e["event_id"] for e in loaded) == sorted(e[0] for e in events)


def test_webhook_events_reingest_their_hour_and_notify_account_problems(sim, pipeline, hooks, instance):
    defs, _, wh = pipeline
    webhook, slack = hooks
    failed_at, now_hour = closed_hour(3) + timedelta(minutes=20), closed_hour(0)
    load(
        wh,
        ("evt_f1", "request.failed", failed_at, "acc_1", "workday", {"status": 502}),
        ("evt_f2", "request.failed", failed_at + timedelta(minutes=9), "acc_2", "hibob", None),
        ("evt_open", "request.failed", now_hour, "acc_1", "workday", None),  # its hour is still open
        ("evt_err", "account.error", failed_at, "acc_17", "workday", {"message": "401 from provider"}),
        ("evt_exp", "account.expired", failed_at, "acc_3", "bamboohr", None),
        ("evt_del", "account.deleted", failed_at, "acc_4", "hibob", None),  # StackOne's platform event
        ("evt_other", "account.connected", failed_at, "acc_3", "bamboohr", None),
    )

    sensor = defs.resolve_sensor_def("webhook_actions_sensor")
    notify = NotifyResource(webhook_url=webhook.url, slack_url=slack.url)
    resources = {"storage": StorageResource(data_dir=str(wh.data_dir)), "notify": notify}

    def evaluate(cursor=None):
        with dg.build_sensor_context(resources=resources, cursor=cursor, definitions=defs) as context:
            return sensor.evaluate_tick(context)

    result = evaluate()
    (run,) = result.run_requests
    assert (run.run_key, run.partition_key) == ("evt_f1", key(closed_hour(3)))
    assert run.tags["stackone/webhook_events"] == "evt_f1,evt_f2"
    assert sorted(b["title"] for b in webhook.bodies) == [
        "StackOne account acc_17 (workday) reports an error",
        "StackOne account acc_3 (bamboohr) has expired: reconnect it",
        "StackOne account acc_4 (hibob) was deleted",
    ]
    assert {b["labels"]["provider"] for b in webhook.bodies} == {"workday", "bamboohr", "hibob"}
    assert len(slack.bodies) == 3
    assert "401 from provider" in next(b["text"] for b in webhook.bodies if b["labels"]["account_id"] == "acc_17")

    again = evaluate(result.cursor)
    assert again.run_requests == [] and len(webhook.bodies) == 3  # nothing twice
    load(wh, ("evt_f3", "request.failed", closed_hour(5), "acc_9", "workday", None))
    later = evaluate(again.cursor)
    assert [(r.run_key, r.partition_key) for r in later.run_requests] == [("evt_f3", key(closed_hour(5)))]

    # The requested run re-ingests that hour.
    job = defs.resolve_job_def("hourly_job")
    assert job.execute_in_process(partition_key=run.partition_key, tags=run.tags, instance=instance).success
    with wh.warehouse.reader() as con:
        assert con.execute("SELECT count(DISTINCT hour) FROM request_logs").fetchone()[0] == 1
