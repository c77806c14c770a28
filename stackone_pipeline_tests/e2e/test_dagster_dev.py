"""End to end through `dagster dev`: the UI's backfill mutation -> daemon -> runs -> DuckDB.

One real `dagster dev -w workspace.yaml` (webserver + daemon, fresh DAGSTER_HOME and data
directory) against the simulator over HTTP, no sink configured. A 6-hour backfill of
`request_logs` and everything downstream of it is launched through GraphQL exactly as the UI's
backfill dialog does, and the warehouse is compared with the simulator's ground truth.

Sinks that are not configured are stand-ins the backfill leaves out, as the UI's "Materialize
all" does. Every daemon backfill costs at least two backfill-daemon ticks (30 s apart), so this
module takes about three minutes: startup ~10-25 s, first backfill ~60-90 s, relaunch + expired
hour together ~60-90 s.
The dagster dev process group is stopped by the fixture (and right after the last e2e test), pass
or fail.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import timedelta

import pytest

from stackone_pipeline.stackone.records import parse_timestamp
from stackone_pipeline.storage import Storage

from .dagster_dev import closed_hours, partition_key, partitions_by_assets

pytest_plugins = ["stackone_pipeline_tests.e2e.dagster_dev"]
# Bounded inside (ready <= 120 s, each backfill <= 300 s); this only backs those bounds up. The
# first test to run also pays for starting dagster dev and the shared backfill (its setup).
pytestmark = pytest.mark.timeout(480)

HOUR = timedelta(hours=1)
# The guide's alert thresholds, as asset checks.
CHECKS = ("overall_error_rate_5m", "p95_latency", "provider_error_rate", "request_volume_anomaly")
# The analytics tables this pipeline derives from request_logs (every one must be in the backfill).
ANALYTICS = (
    "error_rate_5m",
    "error_rate_hourly",
    "latency_hourly",
    "provider_health_hourly",
    "account_errors_hourly",
    "request_volume_hourly",
    "alert_evaluations",
)


def is_error(r: dict) -> bool:
    return (r["status"] is not None and r["status"] >= 400) or (r["status"] is None and r["success"] is False)


def expected(e2e) -> dict:
    """The simulator's ground truth for the backfilled hours, and figures derived in plain Python."""
    sim = e2e.sim.simulator
    by_hour = {h: sim.expected_records(h, h + HOUR) for h in e2e.hours}
    rows = [r for recs in by_hour.values() for r in recs]
    assert len(rows) >= 6 * 200, "the simulator served implausibly few rows"
    per_hour = {h: len(recs) for h, recs in by_hour.items()}
    errors_per_hour = {h: sum(map(is_error, recs)) for h, recs in by_hour.items()}
    provider = defaultdict(lambda: [0, 0])
    for h, recs in by_hour.items():
        for r in recs:
            provider[(h, r.get("provider") or "unknown")][0] += 1
            provider[(h, r.get("provider") or "unknown")][1] += is_error(r)
    max_ms = {
        h: max(float(r["duration"]) for r in recs if r.get("duration") is not None) for h, recs in by_hour.items()
    }
    return {
        "ids": {r["request_id"] for r in rows},
        "rows": len(rows),
        "per_hour": per_hour,
        "errors": sum(errors_per_hour.values()),
        "errors_per_hour": errors_per_hour,
        "provider": {k: tuple(v) for k, v in provider.items()},
        "max_ms": max_ms,
        "records": rows,
    }


def tables_in_defs(outcome) -> set[str]:
    return {a.path[-1] for a in outcome.assets}


def snapshot(data_dir) -> dict:
    """Row counts (and request totals) of every table in the warehouse."""
    out = {}
    with Storage(data_dir, lock_timeout_s=60).warehouse.reader() as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        for t in sorted(names):
            out[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        out["request_logs distinct request_id"] = con.execute(
            "SELECT count(DISTINCT request_id) FROM request_logs"
        ).fetchone()[0]
        for t in ("error_rate_hourly", "error_rate_5m", "request_volume_hourly"):
            if t in names:
                out[f"{t} sum(requests), sum(errors)"] = con.execute(
                    f"SELECT sum(requests), sum(errors) FROM {t}"
                ).fetchone()
    return out


def assert_backfill_succeeded(e2e, outcome):
    """Every run succeeded, every targeted asset has the 6 hours, and the backfill says so."""
    dev = e2e.dev
    assert outcome.launch.backfill_id, f"launch refused: {outcome.describe(dev)}"
    result = outcome.result
    assert result.runs and all(r["status"] == "SUCCESS" for r in result.runs), outcome.describe(dev)
    for name in outcome.asset_names:
        counts = result.assets[name]
        if "numPartitionsTargeted" not in counts:  # an unpartitioned asset downstream
            assert counts["materialized"] and not counts["inProgress"] and not counts["failed"], (name, counts)
            continue
        assert counts["numPartitionsTargeted"] == 6, (name, counts)
        assert counts["numPartitionsInProgress"] == 0, (name, counts)
        assert counts["numPartitionsMaterialized"] == 6 and counts["numPartitionsFailed"] == 0, (name, counts)
    assert result.status == "COMPLETED_SUCCESS", outcome.describe(dev)


def test_a_backfill_launched_like_the_ui_fills_the_warehouse_with_exactly_the_simulators_rows(e2e, e2e_backfill):
    assert_backfill_succeeded(e2e, e2e_backfill)
    # No sink is configured: each is a stand-in that says what to set, left out of the backfill.
    stand_ins = {a.name: a.description for a in e2e.dev.downstream_of("request_logs") if not a.executable}
    assert set(stand_ins) == {"loki_delivery", "datadog_delivery", "otlp_delivery", "prometheus_delivery"}
    assert all(why.startswith("Not configured: ") and "is not set" in why for why in stand_ins.values()), stand_ins
    want = expected(e2e)
    hours = e2e.hours
    with Storage(e2e.data_dir, lock_timeout_s=60).warehouse.reader() as con:
        ids = {r[0] for r in con.execute("SELECT request_id FROM request_logs").fetchall()}
        assert ids == want["ids"]
        assert con.execute("SELECT count(*) FROM request_logs").fetchone()[0] == want["rows"]  # no duplicates
        per_hour = dict(con.execute("SELECT hour, count(*) FROM request_logs GROUP BY hour").fetchall())
        assert per_hour == want["per_hour"]
        errors = con.execute(
            "SELECT count(*) FROM request_logs WHERE status >= 400 OR (status IS NULL AND success = false)"
        ).fetchone()[0]
        assert errors == want["errors"] and 0 < errors < want["rows"]
        # Every row sits in its own hour, and the raw fields round-tripped.
        got = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT request_id, hour, event_datetime, status, provider FROM request_logs"
            ).fetchall()
        }
        for r in want["records"]:
            t = parse_timestamp(r["event_datetime"])
            hour, event, status, provider = got[r["request_id"]]
            assert (hour, event, status, provider) == (
                t.replace(minute=0, second=0, microsecond=0),
                t,
                r["status"],
                r["provider"],
            )

        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(ANALYTICS) <= tables_in_defs(e2e_backfill), "an analytics table is missing from the backfill"
        assert set(ANALYTICS) <= present, f"analytics tables not in the warehouse: {set(ANALYTICS) - present}"
        got = dict(con.execute("SELECT hour, sum(requests) FROM error_rate_hourly GROUP BY hour").fetchall())
        assert got == want["per_hour"]
        assert con.execute("SELECT sum(errors) FROM error_rate_hourly").fetchone()[0] == want["errors"]
        bad = con.execute(
            "SELECT count(*) FROM error_rate_hourly WHERE abs(error_rate - errors / requests) > 1e-9"
        ).fetchone()[0]
        assert bad == 0
        assert con.execute("SELECT sum(requests), sum(errors) FROM error_rate_5m").fetchone() == (
            want["rows"],
            want["errors"],
        )
        got = {
            h: (n, e) for h, n, e in con.execute("SELECT hour, requests, errors FROM request_volume_hourly").fetchall()
        }
        assert got == {h: (want["per_hour"][h], want["errors_per_hour"][h]) for h in hours}
        got = {
            (h, p): (n, e)
            for h, p, n, e in con.execute(
                "SELECT hour, provider, requests, errors FROM provider_health_hourly"
            ).fetchall()
        }
        assert got == want["provider"]
        got = dict(con.execute("SELECT hour, max(max_ms) FROM latency_hourly GROUP BY hour").fetchall())
        assert got.keys() == want["max_ms"].keys()
        for h, ms in want["max_ms"].items():
            assert got[h] == pytest.approx(ms, abs=1e-3), h
        assert con.execute("SELECT sum(requests) FROM latency_hourly").fetchone()[0] == want["rows"]
        assert con.execute("SELECT sum(requests), sum(errors) FROM account_errors_hourly").fetchone() == (
            want["rows"],
            want["errors"],
        )
        got = {r[0] for r in con.execute("SELECT DISTINCT hour FROM alert_evaluations").fetchall()}
        assert got == set(hours)


def test_the_asset_checks_ran_in_the_backfill_and_agree_with_the_alert_table(e2e, e2e_backfill):
    check_keys = [(a, c) for a in e2e_backfill.assets for c in a.checks]
    assert {c for _, c in check_keys} == set(CHECKS), check_keys  # the guide's four thresholds
    assert e2e_backfill.result is not None, e2e_backfill.describe(e2e.dev)
    runs = e2e_backfill.result.run_ids
    evaluations = Counter()
    with Storage(e2e.data_dir, lock_timeout_s=60).warehouse.reader() as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for asset, check in check_keys:
            executions = [
                x
                for x in e2e.dev.check_executions(list(asset.path), check)
                if x["runId"] in runs and x["evaluation"] is not None
            ]
            assert executions, f"check {asset.name}:{check} has no evaluation in {runs}"
            for x in executions:
                evaluations[check] += 1
                assert x["status"] in ("SUCCEEDED", "FAILED"), x
                assert x["evaluation"]["success"] == (x["status"] == "SUCCEEDED"), x
                meta = {m["label"]: m.get("intValue") for m in x["evaluation"]["metadataEntries"]}
                assert meta["evaluated_hours"] == 6, x
                assert "alert_evaluations" in tables
                failures = con.execute(
                    "SELECT count(*) FILTER (WHERE NOT passed), count(*) FROM alert_evaluations WHERE check_name = ?",
                    [check],
                ).fetchone()
                assert failures[1] > 0, check  # every check is evaluated into the table
                assert meta["failures"] == failures[0], (check, meta, failures)
                assert x["evaluation"]["success"] == (failures[0] == 0), (check, failures)
    assert set(evaluations) == {c for _, c in check_keys}


def test_relaunching_changes_nothing_and_an_hour_past_retention_is_refused(e2e, e2e_backfill):
    assert e2e_backfill.result is not None, e2e_backfill.describe(e2e.dev)
    dev = e2e.dev
    before = snapshot(e2e.data_dir)
    selection = e2e_backfill.assets
    (old,) = closed_hours(24 * 90 + 2, 24 * 90 + 2)
    old_key = partition_key(old)
    # Both launched at once: the daemon picks them up on the same tick (saves a minute of wall time).
    again = dev.launch_backfill(partitions_by_assets(selection, e2e.keys[0], e2e.keys[-1]), "e2e: the same again")
    expired = dev.launch_backfill(partitions_by_assets(selection, old_key, old_key), "e2e: past retention")
    assert again.backfill_id, f"relaunch refused: {again}\n{dev.log_tail()}"

    if expired.backfill_id is None:
        # Rejected at launch: the message must say which hour and why.
        assert old_key in expired.error or "retention" in expired.error, expired
    again_result = dev.wait_backfill(again.backfill_id)
    assert all(r["status"] == "SUCCESS" for r in again_result.runs) and again_result.runs, again_result
    assert not again_result.run_ids & e2e_backfill.result.run_ids  # it really ran again
    assert snapshot(e2e.data_dir) == before
    if "late_arrivals" in before:  # the same rows again are not "late"
        assert before["late_arrivals"] == 0

    if expired.backfill_id is not None:
        # Accepted (the partition exists: the partitions start before the retention horizon), so the
        # run must fail with request_logs' retention message and store nothing.
        result = dev.wait_backfill(expired.backfill_id)
        assert result.status in ("COMPLETED_FAILED", "FAILED"), result
        assert result.runs and all(r["status"] == "FAILURE" for r in result.runs), result
        messages = [m for r in result.runs for m in dev.run_failure_messages(r["runId"])]
        text = "\n".join(messages)
        assert re.search(r"older than StackOne's 90-day log retention", text), text
        assert f"{old:%Y-%m-%d %H}:00 UTC" in text and "Backfill only hours inside the last 90 days" in text, text
        counts = result.assets["request_logs"]
        assert counts["numPartitionsMaterialized"] == 0 and counts["numPartitionsFailed"] == 1, counts
        assert snapshot(e2e.data_dir) == before
        assert not (e2e.data_dir / "lake" / "request_logs" / f"date={old:%Y-%m-%d}").exists()
