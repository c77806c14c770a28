"""Webhook staging shared between machines (STACKONE_STATE_URL=postgresql://…), on a real
PostgreSQL and real receivers over HTTP: a receiver with one data directory and a loader with
another agree; two receivers accept a key once; a loader that dies between its DuckDB commit and
its mark loses nothing and doubles nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import httpx
import orjson
import psycopg
import pytest

from stackone_pipeline.storage import Storage
from stackone_pipeline.webhooks import load_staged_events, open_staging, signed_headers, start_receiver
from stackone_pipeline.webhooks.events import body_key
from stackone_pipeline.webhooks.postgres_staging import PostgresStaging, PostgresWriter

from .test_webhooks import SECRET, deliver, event, now_iso, post, stackone_event

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_state_url(monkeypatch):
    """Each test says where its state is; the environment of the run does not."""
    monkeypatch.delenv("STACKONE_STATE_URL", raising=False)


def send(client: httpx.Client, url: str, payload: dict) -> httpx.Response:
    """`post` on a shared client (a client per request costs more than the request)."""
    body = orjson.dumps(payload)
    return client.post(url, content=body, headers=signed_headers(SECRET, body))


def staged(url: str) -> dict[str, tuple[bool, bool]]:
    """{key: (loaded, event dropped)} of the staging table."""
    with psycopg.connect(url) as con:
        rows = con.execute("SELECT key, loaded_at IS NOT NULL, event IS NULL FROM webhook_staging").fetchall()
    return {k: (loaded, dropped) for k, loaded, dropped in rows}


def table(data_dir: Path) -> list[str]:
    with Storage(data_dir, state_url="").warehouse.reader() as con:
        return [i for (i,) in con.execute("SELECT event_id FROM webhook_events ORDER BY event_id").fetchall()]


def query_view(data_dir: Path) -> tuple[int, int]:
    con = duckdb.connect(str(data_dir / "query.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*), count(DISTINCT event_id) FROM webhook_events").fetchone()
    finally:
        con.close()


def test_events_staged_on_one_machine_are_loaded_on_another_exactly_once(postgres_url, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ids = [f"evt_pg_{i}" for i in range(5)]
    payload = stackone_event("account.deleted", account_id="acct_gone")  # StackOne's: no id
    with start_receiver(a, SECRET, state_url=postgres_url) as running:
        for event_id in ids:
            r = post(running.endpoint, event(event_id))
            assert r.status_code == 200 and r.json() == {"status": "stored", "id": event_id}
            assert staged(postgres_url)[event_id] == (False, False)  # committed before the answer
        body, r = deliver(running.endpoint, payload)
        assert r.json() == {"status": "stored", "id": body_key(body)}
        assert post(running.endpoint, event("evt_pg_0")).json()["status"] == "already received"
        assert deliver(running.endpoint, payload)[1].json()["status"] == "already received"
        assert post(running.endpoint, event("evt_\x00nul")).status_code == 400  # text cannot hold it
    keys = sorted([*ids, body_key(body)])
    assert sorted(staged(postgres_url)) == keys
    assert not (a / "webhooks").exists()  # nothing on the receiver's disk

    assert load_staged_events(Storage(a, state_url="")) == []  # machine A's files: nothing there
    loader = Storage(b, lock_timeout_s=30, state_url=postgres_url)
    assert open_staging(b, postgres_url).waiting() != []
    new = load_staged_events(loader)
    assert sorted(e["event_id"] for e in new) == keys
    deleted = next(e for e in new if e["event_id"] == body_key(body))
    assert deleted["account_id"] == "acct_gone" and deleted["payload"] == payload
    assert load_staged_events(loader) == [] and open_staging(b, postgres_url).waiting() == []
    assert table(b) == keys and query_view(b) == (6, 6)
    assert set(staged(postgres_url).values()) == {(True, True)}  # marked loaded, bodies dropped

    # a receiver on a third machine, after the load: retries are recognised from the table, late
    # ones too (their time is outside the window, yet they are no error), and new ones are not
    with start_receiver(c, SECRET, state_url=postgres_url) as running:
        assert post(running.endpoint, event("evt_pg_1")).json() == {"status": "already received", "id": "evt_pg_1"}
        late = post(running.endpoint, event("evt_pg_2", created_at=now_iso(-3600)))
        assert late.status_code == 200 and late.json()["status"] == "already received"
        assert post(running.endpoint, event("evt_pg_stale", created_at=now_iso(-3600))).status_code == 401
        assert deliver(running.endpoint, payload)[1].json()["status"] == "already received"
        assert post(running.endpoint, event("evt_pg_5")).json()["status"] == "stored"
    assert sorted(k for k, (loaded, _) in staged(postgres_url).items() if not loaded) == ["evt_pg_5"]
    assert [e["event_id"] for e in load_staged_events(loader)] == ["evt_pg_5"]
    assert table(b) == sorted([*keys, "evt_pg_5"])


def test_the_same_event_sent_to_two_receivers_is_accepted_once(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("STACKONE_STATE_URL", postgres_url)  # B and the loader follow it, as in a deployment
    assert isinstance(open_staging(tmp_path / "x"), PostgresStaging)
    with (
        start_receiver(tmp_path / "a", SECRET, state_url=postgres_url) as ra,
        start_receiver(tmp_path / "b", SECRET) as rb,
    ):
        assert isinstance(rb.receiver.staging, PostgresWriter)
        assert post(ra.endpoint, event("evt_twice")).json()["status"] == "stored"
        r = post(rb.endpoint, event("evt_twice"))
        assert r.status_code == 200 and r.json() == {"status": "already received", "id": "evt_twice"}
        payload = stackone_event("account.created")
        assert deliver(rb.endpoint, payload)[1].json()["status"] == "stored"
        assert deliver(ra.endpoint, payload)[1].json()["status"] == "already received"

        # each key sent four times at once, twice to each receiver: one of the four answers stores it
        keys = [f"evt_race_{i}" for i in range(30)]
        jobs = [(url, k) for k in keys for url in (ra.endpoint, rb.endpoint) * 2]
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda job: (job[1], send(client, job[0], event(job[1]))), jobs))
            assert all(r.status_code == 200 for _, r in answers)
            for key in keys:
                statuses = sorted(r.json()["status"] for k, r in answers if k == key)
                assert statuses == ["already received"] * 3 + ["stored"], key

            # concurrent deliveries to one receiver are committed in batches, not one transaction each
            commits = ra.receiver.staging.commits
            answers = list(pool.map(lambda i: send(client, ra.endpoint, event(f"evt_batch_{i}")), range(200)))
            assert [r.json()["status"] for r in answers] == ["stored"] * 200
            assert ra.receiver.staging.commits - commits < 200

    assert len(staged(postgres_url)) == 2 + 30 + 200
    loader = Storage(tmp_path / "loader", lock_timeout_s=30)  # STACKONE_STATE_URL: the table
    assert len(load_staged_events(loader)) == 232
    ids = table(tmp_path / "loader")
    assert len(ids) == len(set(ids)) == 232


def test_a_loader_killed_between_its_load_and_its_mark_loses_nothing(postgres_url, tmp_path, monkeypatch):
    data = tmp_path / "loader"
    loader = Storage(data, lock_timeout_s=30, state_url=postgres_url)
    with start_receiver(tmp_path / "receiver", SECRET, state_url=postgres_url) as running:
        for i in range(3):
            assert post(running.endpoint, event(f"evt_kill_{i}")).json()["status"] == "stored"

        # an exception after the DuckDB commit, before the mark
        def fail(self, batch):
            raise RuntimeError("injected between load and mark")

        with monkeypatch.context() as m:
            m.setattr(PostgresStaging, "done", fail)
            with pytest.raises(RuntimeError, match="injected"):
                load_staged_events(loader)
        assert table(data) == ["evt_kill_0", "evt_kill_1", "evt_kill_2"]  # loaded...
        assert {loaded for loaded, _ in staged(postgres_url).values()} == {False}  # ...but not marked

        assert post(running.endpoint, event("evt_kill_3")).json()["status"] == "stored"

    # SIGKILL after the DuckDB commit, before the mark, in a process of its own
    code = (
        "import os, signal, sys; from stackone_pipeline.storage import Storage; "
        "from stackone_pipeline.webhooks import load_staged_events; "
        "from stackone_pipeline.webhooks.postgres_staging import PostgresStaging; "
        "PostgresStaging.done = lambda self, batch: os.kill(os.getpid(), signal.SIGKILL); "
        "load_staged_events(Storage(sys.argv[1], lock_timeout_s=30, state_url=sys.argv[2]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data), postgres_url],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert table(data) == [f"evt_kill_{i}" for i in range(4)]
    assert {loaded for loaded, _ in staged(postgres_url).values()} == {False}

    # the next load takes all four again: nothing new for the table, all of them marked now
    assert load_staged_events(loader) == []
    assert table(data) == [f"evt_kill_{i}" for i in range(4)] and query_view(data) == (4, 4)
    assert set(staged(postgres_url).values()) == {(True, True)}
    assert open_staging(data, postgres_url).waiting() == []


def test_a_broken_or_refused_database_connection(postgres, postgres_url, tmp_path):
    database = urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(postgres.url(), autocommit=True) as admin:

        def drop_connections() -> int:
            return admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", [database]
            ).fetchone()[0]

        with start_receiver(tmp_path / "a", SECRET, state_url=postgres_url) as running:
            assert post(running.endpoint, event("evt_conn_1")).json()["status"] == "stored"
            assert drop_connections() == 1  # the writer's connection
            # the next batch finds the connection broken, reconnects and sends itself once more
            assert post(running.endpoint, event("evt_conn_2")).json()["status"] == "stored"
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            try:
                drop_connections()
                r = post(running.endpoint, event("evt_conn_3"))
                assert r.status_code == 503 and r.json() == {"error": "could not store the event; retry"}
                assert postgres_url not in r.text
            finally:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            assert post(running.endpoint, event("evt_conn_3")).json()["status"] == "stored"  # the retry lands
    assert sorted(staged(postgres_url)) == ["evt_conn_1", "evt_conn_2", "evt_conn_3"]

    # a database that cannot be reached: the receiver does not start, and writes nothing
    with pytest.raises(ConnectionError, match="cannot reach the state database"):
        start_receiver(tmp_path / "b", SECRET, state_url="postgresql://postgres:pw@127.0.0.1:1/nowhere")
    assert not (tmp_path / "b").exists()


def test_without_a_state_url_the_staging_is_the_data_directory(tmp_path, monkeypatch):
    """The laptop path: segment files, and psycopg (the deploy extra) never imported."""
    code = (
        "import sys; from stackone_pipeline.storage import Storage; "
        "from stackone_pipeline.webhooks import load_staged_events, open_staging, staging_for; "
        "s = Storage(sys.argv[1]); "
        "print(type(open_staging(sys.argv[1])).__name__, type(staging_for(s)).__name__, "
        "load_staged_events(s), 'psycopg' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "STACKONE_STATE_URL"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=dict(env, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["FileStaging", "FileStaging", "[]", "False"], done.stderr[-2000:]
    monkeypatch.setenv("STACKONE_STATE_URL", "")  # set but empty: the data directory too
    with start_receiver(tmp_path, SECRET) as running:
        assert post(running.endpoint, event("evt_file")).json()["status"] == "stored"
    assert [name for name, _ in open_staging(tmp_path).waiting()] != []  # a closed segment
