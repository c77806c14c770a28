"""The webhook receiver over real HTTP (uvicorn in a thread, or in a subprocess that is killed),
its staging on disk, and the Dagster asset + sensor that load staged events into DuckDB."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import orjson
import pytest

from stackone_pipeline.assets.webhook_events import webhook_events, webhook_events_sensor
from stackone_pipeline.resources import StorageResource
from stackone_pipeline.storage import Storage
from stackone_pipeline.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_PATH,
    StagingBusyError,
    WebhookConfigError,
    closed_segments,
    load_staged_events,
    serve,
    sign,
    signed_headers,
    staged_records,
    start_receiver,
    verify,
)
from stackone_pipeline.webhooks.staging import append_loaded, loaded_ids, record_line, seen_ids

SECRET = "whsec_test-Zq8x3LrT0pS9vN2m"
ROOT = Path(__file__).resolve().parent.parent


def now_iso(delta_s: float = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_s)).isoformat()


def event(event_id: str, type_: str = "request.failed", created_at: str | None = None, **data) -> dict:
    data = {
        "account_id": "acct_42",
        "provider": "workday",
        "request_id": f"req_{event_id}",
        "event_datetime": "2026-11-20T14:21:07Z",
        "error": {"status": 502, "message": "upstream timeout"},
        **data,
    }
    return {"id": event_id, "type": type_, "created_at": created_at or now_iso(), "data": data}


def post(url: str, payload, *, secret: str = SECRET, body: bytes | None = None, **kw) -> httpx.Response:
    body = orjson.dumps(payload) if body is None else body
    return httpx.post(url, content=body, headers=signed_headers(secret, body, **kw), timeout=30)


def staged_ids(data_dir: Path) -> list[str]:
    """Ids of every staged event, open segments included (only complete lines)."""
    return [r["event"]["id"] for r in staged_records(data_dir)]


def write_segment(data_dir: Path, name: str, *events: dict, received_at: str | None = None) -> Path:
    path = data_dir / "webhooks" / "staging" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(record_line(received_at or now_iso(), e) for e in events))
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def receiver(data_dir):
    with start_receiver(data_dir, SECRET) as running:
        yield running


# --- signatures ---------------------------------------------------------------------------------


def test_signature_helpers():
    body = b'{"id":"evt_1"}'
    sig = sign(SECRET, body)
    assert sig.startswith("sha256=") and verify(SECRET, body, sig)
    assert verify(SECRET, body, sig.removeprefix("sha256=")) and verify(
        SECRET, body, sig.upper().replace("SHA256=", "sha256=")
    )
    assert not verify(SECRET, body + b" ", sig) and not verify("other", body, sig)
    assert not verify(SECRET, body, None) and not verify(SECRET, body, "") and not verify(SECRET, body, "sha256=é")
    # a timestamped signature covers "<ts>.<body>" and never verifies as a plain one, or vice versa
    ts_sig = sign(SECRET, body, "1700000000")
    assert verify(SECRET, body, ts_sig, "1700000000") and not verify(SECRET, body, ts_sig)
    assert not verify(SECRET, body, ts_sig, "1700000001") and not verify(SECRET, body, sig, "1700000000")


# --- the receiver over HTTP -------------------------------------------------------------------


def test_valid_events_are_stored_durably_and_acknowledged(receiver, data_dir):
    r = post(receiver.endpoint, event("evt_valid_1", "account.error"))
    assert r.status_code == 200 and r.json() == {"status": "stored", "id": "evt_valid_1"}
    # signed with a delivery timestamp header instead, plain hex without "sha256=", any event type
    body = orjson.dumps(event("evt_valid_2", "account.expired"))
    r = post(receiver.endpoint, None, body=body, with_timestamp=True)
    assert r.status_code == 200 and r.json()["status"] == "stored"
    body = orjson.dumps(event("evt_valid_3", "connector.synced"))
    r = httpx.post(receiver.endpoint, content=body, headers={SIGNATURE_HEADER: sign(SECRET, body)[7:]})
    assert r.status_code == 200 and r.json()["status"] == "stored"
    # ids that are not file-name-safe are stored too
    r = post(receiver.endpoint, event("evt/../../etc passwd ☃"))
    assert r.status_code == 200
    assert sorted(staged_ids(data_dir)) == sorted(
        ["evt_valid_1", "evt_valid_2", "evt_valid_3", "evt/../../etc passwd ☃"]
    )
    staged = staged_records(data_dir)[0]
    assert staged["event"] == event("evt_valid_1", "account.error", staged["event"]["created_at"])
    assert datetime.fromisoformat(staged["received_at"]) <= datetime.now(timezone.utc)


def test_forged_or_missing_signatures_are_rejected(receiver, data_dir):
    payload = event("evt_forged")
    body = orjson.dumps(payload)
    cases = [
        {},  # no signature
        {SIGNATURE_HEADER: ""},
        {SIGNATURE_HEADER: "sha256=" + "0" * 64},
        {SIGNATURE_HEADER: sign("not-the-secret", body)},
        {SIGNATURE_HEADER: sign(SECRET, body + b" ")},  # signs another body
        {SIGNATURE_HEADER: sign(SECRET, body, "1700000000")},  # timestamped signature without its header
        {SIGNATURE_HEADER: sign(SECRET, body), TIMESTAMP_HEADER: str(int(time.time()))},  # header added later
        {"X-Other-Signature": sign(SECRET, body)},
    ]
    for headers in cases:
        r = httpx.post(receiver.endpoint, content=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json() == {"error": "missing or invalid signature"}
    assert staged_ids(data_dir) == []


def test_signature_header_name_is_configurable(data_dir):
    with start_receiver(data_dir, SECRET, signature_header="X-Hook-Sig") as running:
        body = orjson.dumps(event("evt_custom_header"))
        assert (
            httpx.post(running.endpoint, content=body, headers={SIGNATURE_HEADER: sign(SECRET, body)}).status_code
            == 401
        )
        assert httpx.post(running.endpoint, content=body, headers={"X-Hook-Sig": sign(SECRET, body)}).status_code == 200


def test_replayed_id_is_stored_once_and_answered_idempotently(receiver, data_dir):
    assert post(receiver.endpoint, event("evt_replay")).json()["status"] == "stored"
    for _ in range(3):  # StackOne's retries of a stored event get 200, so they stop
        r = post(receiver.endpoint, event("evt_replay"))
        assert r.status_code == 200 and r.json() == {"status": "already received", "id": "evt_replay"}
    # a signed body with the same id but different content is not stored either
    assert post(receiver.endpoint, event("evt_replay", "account.error")).json()["status"] == "already received"
    # even once the first delivery is older than the tolerance window (a late retry)
    assert post(receiver.endpoint, event("evt_replay", created_at=now_iso(-3600))).status_code == 200
    # concurrent deliveries of one new id: exactly one stores it
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(receiver.endpoint, event("evt_race")).json()["status"], range(32)))
    assert answers.count("stored") == 1 and answers.count("already received") == 31
    assert sorted(staged_ids(data_dir)) == ["evt_race", "evt_replay"]


def test_stale_or_missing_timestamps_are_rejected(receiver, data_dir):
    for created_at in (now_iso(-301), now_iso(+301), "2020-01-01T00:00:00Z"):
        r = post(receiver.endpoint, event("evt_stale", created_at=created_at))
        assert r.status_code == 401 and "tolerance" in r.json()["error"]
    # the timestamp header, when sent (and signed), is what counts
    body = orjson.dumps(event("evt_stale_header"))
    r = post(receiver.endpoint, None, body=body, timestamp=int(time.time()) - 600)
    assert r.status_code == 401
    body = orjson.dumps(event("evt_old_event_fresh_delivery", created_at="2020-01-01T00:00:00Z"))
    assert post(receiver.endpoint, None, body=body, with_timestamp=True).json()["status"] == "stored"
    payload = event("evt_no_time")
    del payload["created_at"]
    assert post(receiver.endpoint, payload).status_code == 400
    assert post(receiver.endpoint, {**payload, "timestamp": int(time.time())}).json()["status"] == "stored"
    assert post(receiver.endpoint, event("evt_bad_time", created_at="yesterday")).status_code == 400
    assert sorted(staged_ids(data_dir)) == ["evt_no_time", "evt_old_event_fresh_delivery"]


def test_oversize_bodies_get_413_without_being_read(receiver, data_dir):
    # exactly 1 MiB is accepted
    payload = event("evt_big")
    payload["data"]["padding"] = ""
    payload["data"]["padding"] = "x" * (MAX_BODY_BYTES - len(orjson.dumps(payload)))
    body = orjson.dumps(payload)
    assert len(body) == MAX_BODY_BYTES and post(receiver.endpoint, None, body=body).status_code == 200
    # a declared Content-Length over 1 MiB is refused before the body is sent at all
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{SIGNATURE_HEADER}: {sign(SECRET, b'')}\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    # a chunked body (no Content-Length) is refused once it crosses the limit, before it ends
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        s.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"{SIGNATURE_HEADER}: {sign(SECRET, b'')}\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):  # 1 MiB + 64 KiB, and no final chunk
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    assert staged_ids(data_dir) == ["evt_big"]


def test_malformed_bodies_get_400(receiver, data_dir):
    for body in (
        b"{not json",
        b"",
        b"[1, 2]",
        b'"text"',
        b'{"type": "account.error"}',
        b'{"id": 7, "type": "account.error"}',
        b'{"id": "evt_x"}',
        b'{"id": "", "type": "x"}',
        orjson.dumps({"id": "e" * 300, "type": "x", "created_at": now_iso()}),
    ):
        r = post(receiver.endpoint, None, body=body)
        assert r.status_code == 400, body
        assert "error" in r.json()
    assert staged_ids(data_dir) == []


def test_wrong_method_or_path(receiver):
    body = orjson.dumps(event("evt_route"))
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        assert (
            httpx.request(method, receiver.endpoint, content=body, headers=signed_headers(SECRET, body)).status_code
            == 405
        )
    assert httpx.post(receiver.url + "/webhooks", content=body, headers=signed_headers(SECRET, body)).status_code == 404
    assert httpx.post(receiver.url + "/", content=body, headers=signed_headers(SECRET, body)).status_code == 404
    assert httpx.get(receiver.url + "/healthz").json() == {"status": "ok"}


def test_missing_secret_refuses_to_start(data_dir):
    for secret in ("", "   ", None):
        with pytest.raises(WebhookConfigError, match="STACKONE_WEBHOOK_SECRET is not set"):
            serve("127.0.0.1", 0, data_dir, secret)
    assert not data_dir.exists()  # nothing created, nothing bound


def test_no_secret_in_responses_or_logs(data_dir, caplog):
    """Every kind of request against a receiver in a subprocess (INFO logs and access log on) and
    one in a thread (captured logging): neither the secret nor any signature it makes appears."""
    caplog.set_level(logging.DEBUG)
    proc, url = _spawn(data_dir, log_level="debug", access_log=True)
    texts = []
    try:
        with start_receiver(data_dir / "thread", SECRET, log_level="debug") as running:
            for endpoint in (url + WEBHOOK_PATH, running.endpoint):
                forged = orjson.dumps(event("evt_forged_leak"))
                responses = [
                    post(endpoint, event("evt_leak")),
                    post(endpoint, event("evt_leak")),
                    httpx.post(endpoint, content=forged, headers={SIGNATURE_HEADER: "sha256=" + "a" * 64}),
                    post(endpoint, event("evt_stale_leak", created_at="2020-01-01T00:00:00Z")),
                    post(endpoint, None, body=b"{oops"),
                    httpx.get(endpoint),
                    httpx.post(endpoint, content=b"x" * (MAX_BODY_BYTES + 10)),
                ]
                texts += [r.text + str(r.headers) for r in responses]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    texts += [out, err, caplog.text]
    assert "stored" in "".join(texts) and "missing or invalid signature" in err  # the logs did record things
    leaks = [SECRET, SECRET.encode().hex(), sign(SECRET, forged)[7:], sign(SECRET, b"{oops")[7:]]
    for text in texts:
        for leak in leaks:
            assert leak not in text


# --- durability ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(data_dir: Path, port: int | None = None, **kw) -> tuple[subprocess.Popen, str]:
    """`serve` in a subprocess, the secret in its environment (never on the command line)."""
    port = port or _free_port()
    code = (
        "import os; from stackone_pipeline.webhooks import serve; "
        f"serve('127.0.0.1', {port}, {str(data_dir)!r}, os.environ['STACKONE_WEBHOOK_SECRET'], **{kw!r})"
    )
    env = dict(os.environ, STACKONE_WEBHOOK_SECRET=SECRET, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"receiver did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.05)


def test_sigkill_after_acks_loses_nothing_and_restart_still_deduplicates(data_dir):
    proc, url = _spawn(data_dir, log_level="warning")
    acked: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()

    def sender(worker: int):
        with httpx.Client(timeout=10) as client:
            for i in range(10_000):
                if killed.is_set():
                    return
                body = orjson.dumps(event(f"evt_crash_{worker}_{i}"))
                try:
                    r = client.post(url + WEBHOOK_PATH, content=body, headers=signed_headers(SECRET, body))
                except httpx.TransportError:
                    return
                if r.status_code == 200 and r.json()["status"] == "stored":
                    with lock:
                        acked.add(f"evt_crash_{worker}_{i}")
                        if len(acked) >= 300 and not killed.is_set():
                            proc.kill()  # SIGKILL in the middle of a stream of deliveries
                            killed.set()

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 300
    staged = set(staged_ids(data_dir))
    assert acked <= staged  # every acknowledged event survived the kill

    left_open = list((data_dir / "webhooks" / "staging").glob("*.open"))
    assert left_open  # the killed receiver had a segment open

    proc, url = _spawn(data_dir, log_level="warning")  # restart on the same data directory
    try:
        assert not any(p.exists() for p in left_open)  # closed at start-up, nothing lost
        assert acked <= set(staged_ids(data_dir)) == staged
        before = len(staged_ids(data_dir))
        for some in sorted(acked)[:5]:
            r = post(url + WEBHOOK_PATH, event(some))
            assert r.status_code == 200 and r.json()["status"] == "already received"
        assert post(url + WEBHOOK_PATH, event("evt_after_restart")).json()["status"] == "stored"
        ids = staged_ids(data_dir)
        assert len(ids) == before + 1 and len(ids) == len(set(ids))
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_torn_segment_tail_is_cut_and_one_receiver_per_data_dir(data_dir):
    good = record_line(now_iso(), event("evt_whole"))
    torn = record_line(now_iso(), event("evt_torn"))[:-20]  # a write cut short: never acknowledged
    path = data_dir / "webhooks" / "staging" / "20260101T000000000000-dead.jsonl.open"
    path.parent.mkdir(parents=True)
    path.write_bytes(good + torn)
    with start_receiver(data_dir, SECRET) as running:
        assert not path.exists()
        assert path.with_name(path.name[:-5]).read_bytes() == good
        assert post(running.endpoint, event("evt_whole")).json()["status"] == "already received"
        assert post(running.endpoint, event("evt_torn")).json()["status"] == "stored"  # the retry lands
        with pytest.raises(StagingBusyError, match="already using"):
            start_receiver(data_dir, SECRET)
    assert sorted(staged_ids(data_dir)) == ["evt_torn", "evt_whole"]
    assert not list(path.parent.glob("*.open"))  # stopping closes the open segment


def test_seen_ids_survive_restart_via_staged_segments_and_loaded_index(data_dir):
    with start_receiver(data_dir, SECRET) as running:
        for i in range(3):
            assert post(running.endpoint, event(f"evt_seen_{i}")).json()["status"] == "stored"
    load_staged_events(Storage(data_dir, lock_timeout_s=30))  # 0..2 now only in the table + index
    assert staged_ids(data_dir) == [] and loaded_ids(data_dir) == {"evt_seen_0", "evt_seen_1", "evt_seen_2"}
    with start_receiver(data_dir, SECRET) as running:
        assert post(running.endpoint, event("evt_seen_3")).json()["status"] == "stored"
    with start_receiver(data_dir, SECRET) as running:  # seen = staged segments + loaded index
        for i in range(4):
            assert post(running.endpoint, event(f"evt_seen_{i}")).json()["status"] == "already received"
    # a line torn by a crash while appending is ignored, and the next append does not merge with it
    with open(data_dir / "webhooks" / "loaded_ids", "ab") as f:
        f.write(b'"evt_seen_')
    assert "evt_seen_" not in seen_ids(data_dir)
    append_loaded(data_dir, ["evt_x", "evt\nwith newline"])
    assert {"evt_x", "evt\nwith newline"} <= loaded_ids(data_dir) and "evt_seen_" not in loaded_ids(data_dir)


# --- loading: the Dagster asset and sensor ----------------------------------------------------


def _table(data_dir: Path) -> list[tuple]:
    with Storage(data_dir).warehouse.reader() as con:
        return con.execute(
            "SELECT event_id, event_type, account_id, provider, request_id, event_hour, "
            "error->>'$.status', payload->>'$.id' FROM webhook_events ORDER BY event_id"
        ).fetchall()


def test_asset_loads_staged_events_exactly_once(data_dir):
    storage = StorageResource(data_dir=str(data_dir))
    with start_receiver(data_dir, SECRET) as running:
        post(running.endpoint, event("evt_a", "account.error"))
        post(running.endpoint, event("evt_b", "request.failed"))
        post(running.endpoint, event("evt_c", "account.expired", provider="bamboohr", account_id="acct_7"))
    result = dg.materialize([webhook_events], resources={"storage": storage})
    assert result.success
    assert result.asset_materializations_for_node("webhook_events")[0].metadata["loaded"].value == 3
    assert closed_segments(data_dir) == [] and staged_ids(data_dir) == []
    rows = _table(data_dir)
    assert [r[:5] for r in rows] == [
        ("evt_a", "account.error", "acct_42", "workday", "req_evt_a"),
        ("evt_b", "request.failed", "acct_42", "workday", "req_evt_b"),
        ("evt_c", "account.expired", "acct_7", "bamboohr", "req_evt_c"),
    ]
    assert (
        rows[1][5] == datetime(2026, 11, 20, 14, tzinfo=timezone.utc) and rows[1][6] == "502" and rows[1][7] == "evt_b"
    )

    # a second run with nothing new loads nothing; one more event and a staged file that is already
    # in the table (a load killed after its commit, before deleting) load exactly once
    assert dg.materialize([webhook_events], resources={"storage": storage}).success
    with start_receiver(data_dir, SECRET) as running:
        assert post(running.endpoint, event("evt_d")).json()["status"] == "stored"
    write_segment(data_dir, "20260101T000000000000-replay.jsonl", event("evt_b"))
    result = dg.materialize([webhook_events], resources={"storage": storage})
    assert result.asset_materializations_for_node("webhook_events")[0].metadata["loaded"].value == 1
    assert [r[0] for r in _table(data_dir)] == ["evt_a", "evt_b", "evt_c", "evt_d"]
    assert closed_segments(data_dir) == []
    # the same rows are readable from query.duckdb (views over the lake copy), which never locks runs
    con = duckdb.connect(str(data_dir / "query.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM webhook_events").fetchone() == (4, 4)
    finally:
        con.close()


def test_load_staged_events_returns_new_events(data_dir):
    with start_receiver(data_dir, SECRET) as running:
        post(running.endpoint, event("evt_new_1", "request.failed"))
        post(running.endpoint, event("evt_new_2", "account.error", request_id=None, event_datetime=None))
    broken = write_segment(data_dir, "20260101T000000000000-broken.jsonl", event("evt_new_3"), received_at=now_iso(-60))
    broken.write_bytes(b'{"received_at": "x", "event": {"type": "x"}}\nnot json\n' + broken.read_bytes() + b'{"recei')
    storage = Storage(data_dir, lock_timeout_s=30)
    new = load_staged_events(storage)
    assert [e["event_id"] for e in new] == ["evt_new_3", "evt_new_1", "evt_new_2"]  # by received_at
    first, second = new[1:]
    assert first["event_type"] == "request.failed" and first["error"] == {"status": 502, "message": "upstream timeout"}
    assert first["payload"]["data"]["request_id"] == "req_evt_new_1" and first["request_id"] == "req_evt_new_1"
    assert first["event_hour"] == datetime(2026, 11, 20, 14, tzinfo=timezone.utc)
    assert second["request_id"] is None and second["event_hour"] == second["occurred_at"].replace(
        minute=0, second=0, microsecond=0
    )
    assert {"received_at", "occurred_at", "account_id", "provider", "loaded_at"} <= set(first)
    assert load_staged_events(storage) == [] and closed_segments(data_dir) == []


def test_sensor_requests_a_run_only_when_events_are_staged(data_dir):
    storage = StorageResource(data_dir=str(data_dir))

    def tick():
        return webhook_events_sensor(dg.build_sensor_context(resources={"storage": storage}))

    assert isinstance(tick(), dg.SkipReason)
    with start_receiver(data_dir, SECRET) as running:
        post(running.endpoint, event("evt_s1"))
        deadline = time.monotonic() + 10
        while not closed_segments(data_dir) and time.monotonic() < deadline:  # segments close after ~1 s
            time.sleep(0.1)
        first = tick()
        assert isinstance(first, dg.RunRequest) and first.run_key
        assert tick().run_key == first.run_key  # same staged segments: no second run
        post(running.endpoint, event("evt_s2"))
    assert tick().run_key != first.run_key  # stopping closed the second segment
    load_staged_events(Storage(data_dir, lock_timeout_s=30))
    assert isinstance(tick(), dg.SkipReason)
    # segments left behind (e.g. the run failed) are asked for again after a while
    left = write_segment(data_dir, "20260101T000000000000-left.jsonl", event("evt_left"))
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    assert "-retry-" in tick().run_key
