"""The hourly partitions are the hours a run can fetch: from the oldest hour lying wholly inside
StackOne's retention when the definitions load, to the last closed hour.

The window cases load the definitions in a fresh process, as `dagster dev`, the daemon and a run
worker each do, with STACKONE_RETENTION_DAYS as given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from stackone_pipeline.partitions import expired_hours, rolling_partitions

ROOT = Path(__file__).resolve().parent.parent
H = timedelta(hours=1)
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("STACKONE_", "DAGSTER_HOME"))}

# What a code location load offers, as the webserver and the daemon rebuild it from the snapshot.
PROBE = """
import json
from datetime import datetime, timezone

before = datetime.now(timezone.utc)
from stackone_pipeline.definitions import defs
after = datetime.now(timezone.utc)

import dagster as dg
from dagster._core.definitions.partitions.snap.snap import PartitionsSnap
from stackone_pipeline import partitions

graph = defs.resolve_asset_graph()
pdef = graph.get(dg.AssetKey("request_logs")).partitions_def
hourly = [graph.get(k).partitions_def for k in graph.get_all_asset_keys() if graph.get(k).partitions_def]
job = defs.resolve_job_def("hourly_job").partitions_def
snap = PartitionsSnap.from_def(pdef).get_partitions_definition()
print(json.dumps({
    "before": before.isoformat(),
    "after": after.isoformat(),
    "keys": pdef.get_partition_keys(current_time=after),
    "snapshot_keys": snap.get_partition_keys(current_time=after),
    "hourly_assets": len(hourly),
    "one_object": all(p is partitions.hourly_partitions for p in [*hourly, job]),
}))
"""


def floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H}:00"


def load_partitions(retention_days: str | None) -> dict:
    """The probe's answer, from a load inside one hour and not on its first instant (so the load's
    own instant, somewhere between `before` and `after`, has a known hour and ceiling); else again."""
    env = {**CLEAN, "STACKONE_API_KEY": "x"}
    if retention_days is not None:
        env["STACKONE_RETENTION_DAYS"] = retention_days
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        got["before"], got["after"] = (datetime.fromisoformat(got[k]) for k in ("before", "after"))
        if floor(got["before"]) == floor(got["after"]) != got["before"]:
            return got
    raise AssertionError("two loads in a row straddled an hour boundary")


@pytest.mark.parametrize("setting, days", [("7", 7), (None, 90)], ids=["7 days", "default 90 days"])
def test_the_partitions_are_exactly_the_closed_hours_inside_the_retention(setting, days):
    got = load_partitions(setting)
    before, after = got["before"], got["after"]  # the load happened between the two, in one hour
    retention = timedelta(days=days)
    # The oldest hour whose whole window is inside the retention at load: it starts at or after
    # the horizon (even for the latest load instant), the hour before it starts before it.
    first = floor(before) + H - retention
    assert after - retention <= first and first - H < before - retention
    last = floor(after) - H  # the last hour that has ended when the keys were asked for
    count = days * 24 - 1  # the load was not on the hour: 24*days - 1 whole hours (on it: 24*days, below)
    assert got["keys"] == [key(first + i * H) for i in range(count)]
    assert (got["keys"][0], got["keys"][-1], len(got["keys"])) == (key(first), key(last), count)
    assert key(first - H) not in got["keys"]  # expired at load: not offered
    assert got["snapshot_keys"] == got["keys"]  # what the UI and the daemon rebuild from the snapshot
    assert got["hourly_assets"] >= 5 and got["one_object"]  # every hourly asset and hourly_job share it


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "STACKONE_RETENTION_DAYS must be between 1 and 3650, got 0"),
        ("ninety", "STACKONE_RETENTION_DAYS must be an integer, got 'ninety'"),
    ],
)
def test_a_wrong_retention_fails_the_load_with_the_settings_error(value, message):
    env = {**CLEAN, "STACKONE_API_KEY": "x", "STACKONE_RETENTION_DAYS": value}
    out = subprocess.run(
        [sys.executable, "-c", "import stackone_pipeline.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"stackone_pipeline.settings.SettingsError: {message}"
    assert 'stackone_pipeline/partitions.py", line' in out.stderr  # raised while the partitions are made


ON_THE_HOUR = datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc)
INSTANTS = [
    ON_THE_HOUR,
    ON_THE_HOUR + timedelta(microseconds=1),
    ON_THE_HOUR + H - timedelta(microseconds=1),
    datetime(2027, 1, 1, 0, 30, tzinfo=timezone.utc),  # a year boundary
]


@pytest.mark.parametrize("at", INSTANTS)
@pytest.mark.parametrize("days", [1, 7, 90])
def test_the_window_at_any_instant(at, days):
    keys = rolling_partitions(at, days).get_partition_keys(current_time=at)
    on_the_hour = at == floor(at)
    first = (at if on_the_hour else floor(at) + H) - timedelta(days=days)
    assert keys[0] == key(first) and keys[-1] == key(floor(at) - H)
    assert len(keys) == days * 24 - (0 if on_the_hour else 1)


@pytest.mark.parametrize("at", INSTANTS)
@pytest.mark.parametrize("days", [1, 7, 90])
def test_two_loads_an_hour_apart_disagree_only_on_an_hour_that_has_expired(at, days):
    """The code server, the daemon and a run worker each import the definitions: the later start
    leaves out only the hour that is past the retention by then (the asset refuses it anyway), and
    both end at the same last closed hour whenever they are asked."""
    early, late = rolling_partitions(at, days), rolling_partitions(at + H, days)
    assert late.start - early.start == H
    asked = at + H + timedelta(minutes=7)
    early_keys, late_keys = early.get_partition_keys(current_time=asked), late.get_partition_keys(current_time=asked)
    assert early_keys[1:] == late_keys and early_keys[0] == key(early.start)
    assert expired_hours([early.start], at + H, days) == [early.start]  # gone when the later one loaded
    assert expired_hours([late.start], at + H, days) == []  # the later first hour is still whole
    assert late_keys[-1] == key(floor(asked) - H)
