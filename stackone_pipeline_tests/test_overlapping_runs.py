"""Two whole `stackone-pipeline backfill` processes whose ranges share hours, on one data
directory, at once: every stage (lake, warehouse, details, analytics, sink delivery, views) queues
instead of failing, every hour ends exact, and the sink receives every record exactly once."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb

from stackone_pipeline.partitions import HOUR
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.storage import Storage

from .conftest import closed_hour
from .receivers.loki import LokiReceiver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backfill(env: dict, start, end) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "stackone_pipeline.cli",
        "backfill",
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
    ]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_backfills_sharing_hours_both_succeed_and_deliver_once(tmp_path):
    first = closed_hour(6)
    hours = [first + i * HOUR for i in range(4)]
    with start_simulator(SimulatorConfig(seed=11, rows_per_hour=300, diurnal=False)) as sim, LokiReceiver() as loki:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LOKI_", "DATADOG_", "OTEL_", "PROMETHEUS_"))},
            "STACKONE_API_KEY": DEFAULT_API_KEY, "STACKONE_BASE_URL": sim.url,
            "STACKONE_DATA_DIR": str(tmp_path / "data"), "STACKONE_PAGE_SIZE": "20",
            "STACKONE_RATE_LIMIT_PER_MINUTE": "3000", "STACKONE_CONCURRENCY": "2",
            "LOKI_URL": loki.url, "LOKI_TENANT_ID": "tenant-1",
        }  # fmt: skip
        env.pop("DAGSTER_HOME", None)  # each run in its own throw-away instance
        a = backfill(env, hours[0], hours[3])  # hours 0, 1, 2
        b = backfill(env, hours[1], hours[3] + HOUR)  # hours 1, 2, 3: two shared
        outs = [p.communicate(timeout=240) for p in (a, b)]
        assert a.returncode == 0 and b.returncode == 0, [o[1][-3000:] for o in outs]
        expected = {h: len(sim.simulator.expected_records(h, h + HOUR)) for h in hours}
        stats = loki.stats()

    storage = Storage(tmp_path / "data")
    with storage.warehouse.reader() as con:
        per_hour = dict(con.execute("SELECT hour, count(*) FROM request_logs GROUP BY hour").fetchall())
        (dupes,) = con.execute("SELECT count(*) - count(DISTINCT request_id) FROM request_logs").fetchone()
        derived = dict(con.execute("SELECT hour, sum(requests) FROM error_rate_hourly GROUP BY hour").fetchall())
    assert per_hour == expected and dupes == 0
    assert derived == expected
    # the sink: every record arrived once, though both runs delivered hours 1 and 2
    assert stats["duplicates"] == 0 and stats["arrived"] == stats["stored"] == sum(expected.values())
    # the views a person queries hold every hour whole
    con = duckdb.connect(str(storage.query_path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM request_logs").fetchone()[0] == sum(expected.values())
    finally:
        con.close()
    assert not [p for p in (tmp_path / "data").rglob("*.partial")]
