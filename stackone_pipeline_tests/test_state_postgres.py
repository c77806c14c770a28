"""The pipeline's state in PostgreSQL (STACKONE_STATE_URL), on a real server: late arrivals,
notifications and the rate limiter behave as they do in the data directory, and machines that
share the database (two data directories here) share the state."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from stackone_pipeline.ingest import count_late_arrivals, count_late_arrivals_hours, late_arrivals_table
from stackone_pipeline.resources import StackOneResource
from stackone_pipeline.stackone.ratelimit import FileTat, LocalTat, PostgresTat, RateLimiter, key_hash
from stackone_pipeline.storage import Storage
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .inbox import Inbox
from .test_shared_budget import spenders

ROOT = Path(__file__).resolve().parent.parent
H = datetime(2026, 11, 25, 14, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
def inbox():
    hook = Inbox()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def publish(storage: Storage, hour: datetime, ids: list[str | None]) -> None:
    """The hour's lake file of request_logs, as an ingest leaves it (only request_id matters here)."""
    storage.lake.publish_table(REQUEST_LOGS, hour, pa.table({"request_id": pa.array(ids, pa.string())}))


def ids(a: int, b: int) -> list[str]:
    return [f"req_{i:05d}" for i in range(a, b)]


# -- late arrivals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_late_arrivals_count_the_same_in_postgres_as_in_the_warehouse(backend, request, tmp_path):
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    storage = Storage(tmp_path / "data", state_url=url)
    assert (storage.shared_state is not None) == (backend == "postgres")
    publish(storage, H, ids(0, 10) + [None, None])
    publish(storage, H + timedelta(hours=1), ids(100, 105))
    found = count_late_arrivals_hours(storage, [H + timedelta(hours=1), H], now=NOW)  # oldest first
    assert [(r.hour, r.rows, r.new_rows) for r in found] == [(H, 12, None), (H + timedelta(hours=1), 5, None)]
    # the re-ingest found 4 new ids (one twice, and the nulls are not counted), lost none
    publish(storage, H, ids(0, 14) + ["req_00013", None, None])
    later = NOW + timedelta(hours=1)
    assert count_late_arrivals(storage, H, now=later).new_rows == 4
    assert count_late_arrivals(storage, H, now=later).new_rows == 0  # the same rows again: nothing late
    publish(storage, H, ids(2, 15))  # two ids gone, one new: only the new one counts
    assert count_late_arrivals(storage, H, now=later).new_rows == 1
    assert late_arrivals_table(storage) == [(H, later, 4), (H, later, 1)]
    # 50 hours on, H's baseline is pruned (keep_hours=48): a re-ingest of it starts a new one
    publish(storage, H + timedelta(hours=50), ids(0, 3))
    assert count_late_arrivals(storage, H + timedelta(hours=50), keep_hours=48, now=later).new_rows is None
    assert count_late_arrivals(storage, H, keep_hours=48, now=later).new_rows is None
    assert len(late_arrivals_table(storage)) == 2


def test_two_machines_share_late_arrival_baselines(postgres_url, tmp_path):
    """Two data directories (two machines) and one database: the second machine's re-ingest is
    compared with the baseline the first one's ingest left; another project's baseline is its own."""
    first = Storage(tmp_path / "machine-1", state_url=postgres_url)
    second = Storage(tmp_path / "machine-2", state_url=postgres_url)
    publish(first, H, ids(0, 300))
    assert count_late_arrivals(first, H, now=NOW).new_rows is None
    publish(second, H, ids(0, 312))  # the lookback, on the other machine, with 12 late rows
    assert count_late_arrivals(second, H, now=NOW).new_rows == 12
    assert late_arrivals_table(first) == late_arrivals_table(second) == [(H, NOW, 12)]

    other = Storage(tmp_path / "machine-2", project="acme", state_url=postgres_url)
    publish(other, H, ids(0, 400))
    assert count_late_arrivals(other, H, now=NOW).new_rows is None  # not the default project's baseline
    assert late_arrivals_table(other) == []
    with first.shared_state.transaction() as con:
        rows = con.execute("SELECT project, count(*) FROM late_arrival_ids GROUP BY project ORDER BY project")
        assert rows.fetchall() == [("acme", 400), ("default", 312)]


# -- notifications (test_notify.py runs every notification test on PostgreSQL as well) ------------------
NOTIFIER = """
import sys, time
from contextlib import nullcontext
from stackone_pipeline.http import Transport
from stackone_pipeline.notify import Condition, Notifier, channels
from stackone_pipeline.storage import Storage

data_dir, url, hook, lock = sys.argv[1:5]


class SlowTransport(Transport):  # a slow channel: the other notifier has time to plan meanwhile
    def post(self, *args, **kw):
        time.sleep(0.5)
        return super().post(*args, **kw)


notifier = Notifier(
    Storage(data_dir, state_url=url),
    channels(webhook_url=hook),
    transport=lambda: SlowTransport(timeout_s=5.0, max_attempts=1, deadline_s=5.0),
)
if lock == "off":  # the control: no lock around plan, send and record
    notifier._exclusive = nullcontext
event = Condition("webhook/evt_42", "webhook", "account acct_1 (hibob) was deleted", "...", "warning", one_shot=True)
print("ready", flush=True)
sys.stdin.readline()
print(notifier.sync(events=[event]).sent["webhook"], flush=True)
"""


def notifiers(tmp_path: Path, url: str, hook: str, lock: str) -> list[int]:
    """Two notifier processes, each on a data directory of its own and the one database, notify
    the same event at the same moment; what each sent."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NOTIFIER, str(tmp_path / f"machine-{i}"), url, hook, lock],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in (1, 2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    return [int(out) for out in outs]


def test_two_notifiers_sharing_the_state_send_once(postgres_url, tmp_path, inbox):
    sent = notifiers(tmp_path, postgres_url, inbox.url, "on")
    assert sorted(sent) == [0, 1] and [b["key"] for b in inbox.bodies] == ["webhook/evt_42"]
    assert not (tmp_path / "machine-1" / "warehouse.duckdb").exists()  # the state was not on either machine


def test_without_the_lock_two_notifiers_would_send_twice(postgres_url, tmp_path, inbox):
    """The control: the same two processes without the lock both send, so the test above
    measures the lock, not the timing."""
    sent = notifiers(tmp_path, postgres_url, inbox.url, "off")
    assert min(sent) >= 1 and len(inbox.bodies) == sum(sent) >= 2


# -- the rate limiter ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "file", "postgres"])
def test_postgres_tat_paces_like_the_others(kind, request, tmp_path):
    """The same limiter on each Tat, its clock stopped: evenly spaced slots, and a pause holds
    back what follows."""
    if kind == "postgres":
        tat = PostgresTat(request.getfixturevalue("postgres_url"), key_hash("https://api.example.test", "k"))
    else:
        tat = FileTat(tmp_path / "k.tat") if kind == "file" else LocalTat()
    waits: list[float] = []
    start = tat.clock()
    limiter = RateLimiter(600, 60.0, clock=lambda: start, sleep=waits.append, tat=tat)  # a slot every 0.102 s
    for _ in range(5):
        limiter.acquire()  # the sleep is recorded, not slept: each caller waits one interval more
    limiter.pause(2.0)
    limiter.acquire()
    assert waits == pytest.approx([0.102, 0.204, 0.306, 0.408, 2.0])  # the first slot was free
    assert tat.get() == pytest.approx(start + 2.102)


def test_postgres_tat_survives_a_lost_connection_and_stores_no_key(postgres_url):
    name = key_hash("https://api.example.test", "v1.secret-key-123")
    first, second = PostgresTat(postgres_url, name), PostgresTat(postgres_url, name)  # two machines

    def tat() -> float:
        with first.state.transaction() as con:
            return con.execute("SELECT tat FROM rate_limit_tat WHERE key_hash = %s", [name]).fetchone()[0]

    waits: list[float] = []
    RateLimiter(60, 60.0, sleep=waits.append, tat=first).acquire()
    before = tat()
    assert before == pytest.approx(time.time() + 1.02, abs=0.5)  # the database's clock, the machine's alike
    with first.state.transaction() as con:  # the server drops the connection (restart, idle timeout)
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    RateLimiter(60, 60.0, sleep=waits.append, tat=first).acquire()
    RateLimiter(60, 60.0, sleep=waits.append, tat=second).acquire()  # the other machine: the same budget
    assert tat() == pytest.approx(before + 2 * 1.02)  # two more slots, one after the other
    assert len(waits) == 2 and waits[1] > waits[0] + 0.9
    with first.state.transaction() as con:
        assert con.execute("SELECT key_hash FROM rate_limit_tat").fetchall() == [(name,)]
    first.close()
    second.close()


def test_stackone_resource_shares_the_budget_through_postgres(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("STACKONE_STATE_URL", postgres_url)
    resource = StackOneResource(
        api_key="v1.key-r", base_url="https://api.example.test", rate_limit_state_dir=str(tmp_path)
    )
    client = resource.client()
    try:
        assert isinstance(client.limiter._tat, PostgresTat)
        assert isinstance(resource.share_limiter("details", 0.2)._tat, PostgresTat)
        client.limiter.acquire()
    finally:
        client.close()
    assert not any(tmp_path.iterdir())  # no file budget beside it
    with Storage(tmp_path, state_url=postgres_url).shared_state.transaction() as con:
        assert con.execute("SELECT key_hash FROM rate_limit_tat").fetchall() == [
            (key_hash("https://api.example.test", "v1.key-r"),)
        ]


def test_processes_on_two_machines_sharing_postgres_keep_one_pace(postgres_url, tmp_path):
    per_minute, n = 1500.0, 25  # 25 a second; two processes x 25 slots
    env = {**os.environ, "STACKONE_STATE_URL": postgres_url}
    times = spenders([tmp_path / "machine-1", tmp_path / "machine-2"], n, per_minute, env=env)
    interval = 60 / per_minute * 1.02
    assert len(times) == 2 * n
    assert times[-1] - times[0] >= (2 * n - 1) * interval * 0.98  # one budget: 50 slots, one after another
    window = 10 * interval  # and no burst
    assert max(sum(1 for u in times if t <= u < t + window) for t in times) <= 12
    assert not any(p.exists() for p in (tmp_path / "machine-1", tmp_path / "machine-2"))  # no file budgets


def test_processes_with_separate_keys_in_postgres_each_keep_their_own(postgres_url, tmp_path):
    """The control: two keys, two budgets, about half the time of the shared one."""
    per_minute, n = 1500.0, 25
    env = {**os.environ, "STACKONE_STATE_URL": postgres_url}
    times = spenders([tmp_path / "m1", tmp_path / "m2"], n, per_minute, keys=["v1.key-a", "v1.key-b"], env=env)
    assert len(times) == 2 * n
    assert times[-1] - times[0] < (2 * n - 1) * 60 / per_minute * 0.75
