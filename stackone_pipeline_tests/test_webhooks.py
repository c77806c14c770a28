"""The webhook receiver over real HTTP (uvicorn in a thread, or in a subprocess that is killed),
its staging on disk, and the Dagster asset + sensor that load staged events into DuckDB."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from stackone_pipeline.settings import WebhookSettings
from stackone_pipeline.storage import Storage
from stackone_pipeline.webhooks import (
    COLUMNS,
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
    sign_base64url,
    signed_headers,
    stackone_headers,
    staged_records,
    start_receiver,
    verify,
)
from stackone_pipeline.webhooks.staging import append_loaded, loaded_ids, record_key, record_line, seen_ids

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
    """Keys (the ids, when events have one) of every staged event, open segments included (only
    complete lines)."""
    return [record_key(r) for r in staged_records(data_dir)]


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


def test_base64url_signatures_as_stackone_sends_them():
    body = b'{"event":"account.created","sent_at":"2026-11-20T14:21:07Z"}'
    expected = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).rstrip(b"=")
    b64 = sign_base64url(SECRET, body)
    assert b64 == expected.decode() and len(b64) == 43 and "=" not in b64
    assert verify(SECRET, body, b64) and verify(SECRET, body, b64 + "=")  # padding tolerated
    std = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    assert verify(SECRET, body, std)  # the standard alphabet (+ /) too
    assert stackone_headers(SECRET, body) == {"x-stackone-signature": b64, "Content-Type": "application/json"}
    assert not verify(SECRET, body + b" ", b64) and not verify("other", body, b64)
    assert not verify(SECRET, body, b64[:-1]) and not verify(SECRET, body, b64 + "A")
    assert not verify(SECRET, body, b64.swapcase())  # base64 is case-sensitive (hex is not)
    # the same digest in every accepted encoding
    assert verify(SECRET, body, sign(SECRET, body)) and verify(SECRET, body, sign(SECRET, body)[7:].upper())


def test_rotation_any_configured_secret_verifies():
    body = b'{"event":"account.updated"}'
    old, new, third = "whsec_old-1", "whsec_new-2", "whsec_third-3"
    for signer in (sign, sign_base64url):
        assert verify([old, new], body, signer(old, body)) and verify((old, new), body, signer(new, body))
        assert not verify([old, new], body, signer(third, body))
    assert not verify([], body, sign(old, body))


def test_webhook_settings_read_one_or_several_secrets():
    assert WebhookSettings.from_env({}).secrets == ()
    assert WebhookSettings.from_env({"STACKONE_WEBHOOK_SECRET": "s1"}).secrets == ("s1",)
    assert WebhookSettings.from_env({"STACKONE_WEBHOOK_SECRETS": " old , new ,"}).secrets == ("old", "new")
    both = {"STACKONE_WEBHOOK_SECRETS": "old,new", "STACKONE_WEBHOOK_SECRET": "new"}
    assert WebhookSettings.from_env(both).secrets == ("old", "new")
    assert "old" not in repr(WebhookSettings.from_env(both))


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
    for secret in ("", "   ", None, [], ["", "  "]):
        with pytest.raises(WebhookConfigError, match="neither STACKONE_WEBHOOK_SECRET nor STACKONE_WEBHOOK_SECRETS"):
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
    leaks += [sign_base64url(SECRET, forged), sign_base64url(SECRET, b"{oops")]
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
    problems: list[str] = []  # anything but "stored" before the kill, or a sender that broke

    def sender(worker: int):
        try:
            with httpx.Client(timeout=10) as client:
                for i in range(10_000):
                    if killed.is_set():
                        return  # the receiver is gone: nothing more to send
                    event_id = f"evt_crash_{worker}_{i}"
                    body = orjson.dumps(event(event_id))
                    try:
                        r = client.post(url + WEBHOOK_PATH, content=body, headers=signed_headers(SECRET, body))
                    except httpx.TransportError as exc:
                        if not killed.is_set():  # set before the kill: an error before it is a failure
                            problems.append(f"{event_id}: {exc!r} before the kill")
                        return
                    if r.status_code != 200 or r.json() != {"status": "stored", "id": event_id}:
                        problems.append(f"{event_id}: HTTP {r.status_code} {r.text}")
                        return
                    with lock:
                        acked.add(event_id)
                        if len(acked) >= 300 and not killed.is_set():
                            killed.set()
                            proc.kill()  # SIGKILL in the middle of a stream of deliveries
            problems.append(f"worker {worker} sent everything before the kill")
        except Exception as exc:  # reported to the test thread below
            problems.append(f"worker {worker}: {exc!r}")

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a sender never finished"
        assert problems == []
    finally:
        if not killed.is_set():  # the senders stopped early: do not leave the receiver running
            killed.set()
            proc.kill()
        proc.wait(timeout=30)
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
        with dg.build_sensor_context(resources={"storage": storage}) as context:  # the resource has a teardown
            return webhook_events_sensor(context)

    assert isinstance(tick(), dg.SkipReason)
    with start_receiver(data_dir, SECRET) as running:
        assert post(running.endpoint, event("evt_s1")).json()["status"] == "stored"
        deadline = time.monotonic() + 60
        while not closed_segments(data_dir):  # segments close after ~1 s: wait for that, however long
            assert time.monotonic() < deadline, "the receiver never closed its segment"
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


# --- StackOne's real deliveries -----------------------------------------------------------------
# As StackOne sends them: `x-stackone-signature` = base64url (no padding) of HMAC-SHA256(secret,
# raw body), no timestamp header, the type in `event`, the time in `sent_at`, no id.


def stackone_event(event_type: str, sent_at: str | None = None, **fields) -> dict:
    body = {
        "event": event_type,
        "event_date": now_iso(-2),
        "sent_at": sent_at or now_iso(),
        "account_id": "acct_so_1",
        "provider": "hibob",
        "project_id": "proj_9",
        "origin_owner_id": "cust_123",
        "origin_owner_name": "Acme Ltd",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def deliver(url: str, payload: dict, *, secret: str = SECRET) -> tuple[bytes, httpx.Response]:
    """One delivery exactly as StackOne makes it; returns the raw body and the answer."""
    body = orjson.dumps(payload)
    return body, httpx.post(url, content=body, headers=stackone_headers(secret, body), timeout=30)


def test_stackone_and_documented_deliveries_are_stored_once_loaded_and_acted_on(data_dir, hooks):
    from stackone_pipeline.automation import build_sensors
    from stackone_pipeline.resources import NotifyResource
    from stackone_pipeline.settings import AutomationSettings
    from stackone_pipeline.webhooks.events import body_key

    from .conftest import closed_hour, partition_key

    failed_3, failed_4 = closed_hour(3) + timedelta(minutes=20), closed_hour(4) + timedelta(minutes=5)
    stackone = [
        stackone_event("account.created"),
        stackone_event("account.updated"),
        stackone_event("account.deleted", account_id="acct_gone", provider="workday"),
        stackone_event(
            "request.failed",
            account_id="acct_so_2",
            event_data={"request_id": "req_so_1", "event_datetime": failed_3.isoformat(), "error": {"status": 502}},
        ),
        stackone_event(  # an older unified event
            "hris.employee.updated",
            record_type="employee",
            record_id="emp_1",
            record_remote_id="remote_77",
            event_data={"id": "emp_1", "first_name": "Ada"},
            raw_event={"whatever": "the provider sent"},
        ),
        stackone_event("something.new"),  # unknown today: stored and counted, not refused
    ]
    documented = [
        event("evt_doc_failed", "request.failed", event_datetime=failed_4.isoformat()),
        event("evt_doc_error", "account.error", account_id="acct_err", error={"message": "401 from provider"}),
    ]
    keys = []
    with start_receiver(data_dir, SECRET) as running:
        for payload in stackone:
            body, first = deliver(running.endpoint, payload)
            _, second = deliver(running.endpoint, payload)  # StackOne's retry: the same bytes
            assert first.status_code == 200 and first.json() == {"status": "stored", "id": body_key(body)}
            assert second.status_code == 200 and second.json() == {"status": "already received", "id": body_key(body)}
            keys.append(body_key(body))
        for payload in documented:
            for expected in ("stored", "already received"):
                r = post(running.endpoint, payload)
                assert r.status_code == 200 and r.json() == {"status": expected, "id": payload["id"]}
            keys.append(payload["id"])
    assert sorted(r["key"] for r in staged_records(data_dir)) == sorted(keys)

    storage = Storage(data_dir, lock_timeout_s=30)
    assert len(load_staged_events(storage)) == len(keys)
    assert load_staged_events(storage) == []
    with storage.warehouse.reader() as con:
        cur = con.execute("SELECT * FROM webhook_events ORDER BY received_at")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    assert [r["event_id"] for r in rows] == keys  # each delivery once
    by_type = {r["event_type"]: r for r in rows}
    assert (
        list(by_type)
        == [
            "account.created",
            "account.updated",
            "account.deleted",
            "request.failed",
            "hris.employee.updated",
            "something.new",
            "account.error",
        ]
        and len(rows) == 8
    )
    deleted = by_type["account.deleted"]
    assert (deleted["account_id"], deleted["provider"], deleted["project_id"]) == ("acct_gone", "workday", "proj_9")
    assert (deleted["origin_owner_id"], deleted["origin_owner_name"]) == ("cust_123", "Acme Ltd")
    assert deleted["sent_at"] == datetime.fromisoformat(stackone[2]["sent_at"])
    assert deleted["occurred_at"] == datetime.fromisoformat(stackone[2]["event_date"])
    assert orjson.loads(deleted["payload"]) == stackone[2]
    so_failed = next(r for r in rows if r["event_id"] == keys[3])
    assert (so_failed["request_id"], so_failed["event_hour"]) == ("req_so_1", closed_hour(3))
    assert orjson.loads(so_failed["error"]) == {"status": 502}
    legacy = by_type["hris.employee.updated"]
    assert (legacy["record_type"], legacy["record_id"], legacy["record_remote_id"]) == (
        "employee",
        "emp_1",
        "remote_77",
    )
    doc_failed = next(r for r in rows if r["event_id"] == "evt_doc_failed")
    assert (doc_failed["request_id"], doc_failed["event_hour"]) == ("req_evt_doc_failed", closed_hour(4))
    assert doc_failed["project_id"] is None and doc_failed["sent_at"] is None

    # Acted on, by the webhook actions sensor: account.deleted and account.error notified once,
    # each request.failed re-ingests its (closed) hour, everything else counted.
    webhook, slack = hooks
    sensor = {s.name: s for s in build_sensors(AutomationSettings())}["webhook_actions_sensor"]
    resources = {
        "storage": StorageResource(data_dir=str(data_dir)),
        "notify": NotifyResource(webhook_url=webhook.url, slack_url=slack.url),
    }
    with dg.build_sensor_context(resources=resources) as context:
        result = sensor(context)
    assert [(r.run_key, r.partition_key) for r in result.run_requests] == [
        ("evt_doc_failed", partition_key(closed_hour(4))),
        (keys[3], partition_key(closed_hour(3))),
    ]
    assert sorted(b["title"] for b in webhook.bodies) == [
        "StackOne account acct_err (workday) reports an error",
        "StackOne account acct_gone (workday) was deleted",
    ]
    gone = next(b for b in webhook.bodies if b["labels"]["alertname"] == "StackOneAccountDeleted")
    assert gone["key"] == f"webhook/{keys[2]}" and "Acme Ltd (cust_123)" in gone["text"]
    assert gone["annotations"]["project_id"] == "proj_9" and len(slack.bodies) == 2
    with dg.build_sensor_context(resources=resources, cursor=result.cursor) as context:
        again = sensor(context)
    assert again.run_requests == [] and len(webhook.bodies) == 2  # nothing twice


def test_stackone_signatures_hex_and_prefixed_hex_are_all_accepted(receiver, data_dir):
    for n, signer in enumerate((sign_base64url, lambda s, b: sign(s, b)[7:], sign, lambda s, b: sign(s, b).upper())):
        body = orjson.dumps(stackone_event("account.updated", record_id=f"r{n}"))
        for header in ("x-stackone-signature", SIGNATURE_HEADER):
            r = httpx.post(receiver.endpoint, content=body, headers={header: signer(SECRET, body)})
            assert r.status_code == 200, (n, header)
    assert len(staged_records(data_dir)) == 4 and all(k.startswith("sha256:") for k in staged_ids(data_dir))


def test_stackone_deliveries_without_a_valid_signature_are_refused(receiver, data_dir):
    payload = stackone_event("account.deleted")
    body = orjson.dumps(payload)
    for headers in (
        {},
        {"x-stackone-signature": ""},
        {"x-stackone-signature": sign_base64url("not-the-secret", body)},
        {"x-stackone-signature": sign_base64url(SECRET, body + b" ")},
        {"x-stackone-signature": sign_base64url(SECRET, body)[:-2]},
        {"x-stackone-signature": "A" * 43},
        {"x-stackone-signature": sign_base64url(SECRET, body, "1700000000")},  # a timestamped one, no header
    ):
        r = httpx.post(receiver.endpoint, content=body, headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "missing or invalid signature"}, headers
    assert staged_records(data_dir) == []


def test_rotation_two_secrets_at_once(data_dir):
    old, new = "whsec_old-Aa1", "whsec_new-Bb2"
    with start_receiver(data_dir, [old, new]) as running:
        assert (
            deliver(running.endpoint, stackone_event("account.updated", record_id="1"), secret=old)[1].status_code
            == 200
        )
        assert (
            deliver(running.endpoint, stackone_event("account.updated", record_id="2"), secret=new)[1].status_code
            == 200
        )
        r = deliver(running.endpoint, stackone_event("account.updated", record_id="3"), secret="whsec_third-Cc3")[1]
        assert r.status_code == 401
        assert post(running.endpoint, event("evt_rot_old"), secret=old).status_code == 200  # the hex format too
        assert post(running.endpoint, event("evt_rot_third"), secret="whsec_third-Cc3").status_code == 401
    assert len(staged_records(data_dir)) == 3


def test_the_cli_reads_both_secret_variables(data_dir):
    """`stackone-pipeline webhooks` with STACKONE_WEBHOOK_SECRETS=old,new (and the single variable
    beside it): a delivery signed with any of them is accepted, another is not."""
    port = _free_port()
    env = dict(
        os.environ,
        STACKONE_WEBHOOK_SECRETS="whsec_cli_old,whsec_cli_new",
        STACKONE_WEBHOOK_SECRET="whsec_cli_single",
        STACKONE_DATA_DIR=str(data_dir),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackone_pipeline.cli", "webhooks", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
                time.sleep(0.05)
        for n, secret in enumerate(("whsec_cli_old", "whsec_cli_new", "whsec_cli_single")):
            r = deliver(url + WEBHOOK_PATH, stackone_event("account.created", record_id=str(n)), secret=secret)[1]
            assert r.status_code == 200, secret
        assert deliver(url + WEBHOOK_PATH, stackone_event("account.created"), secret="other")[1].status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert len(staged_records(data_dir)) == 3
    # and without any secret, the command refuses to start with a clear message
    env = {k: v for k, v in env.items() if not k.startswith("STACKONE_WEBHOOK_SECRET")}
    done = subprocess.run(
        [sys.executable, "-m", "stackone_pipeline.cli", "webhooks", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "STACKONE_WEBHOOK_SECRETS" in done.stderr


def test_stale_or_future_sent_at_is_refused(receiver, data_dir):
    for sent_at in (now_iso(-301), now_iso(+301), "2020-01-01T00:00:00Z"):
        r = deliver(receiver.endpoint, stackone_event("account.updated", sent_at=sent_at))[1]
        assert r.status_code == 401 and "tolerance" in r.json()["error"], sent_at
    # sent_at is what counts, not an older event_date (a retry of an old event sent now)
    old_event = stackone_event("account.updated", event_date="2020-01-01T00:00:00Z", record_id="old")
    assert deliver(receiver.endpoint, old_event)[1].json()["status"] == "stored"
    # without sent_at, event_date is the delivery time
    no_sent = stackone_event("account.updated", record_id="no_sent")
    del no_sent["sent_at"]
    assert deliver(receiver.endpoint, {**no_sent, "event_date": now_iso(-400)})[1].status_code == 401
    assert deliver(receiver.endpoint, {**no_sent, "event_date": now_iso(-1)})[1].json()["status"] == "stored"
    # neither: 400; an unreadable sent_at: 400
    del no_sent["event_date"]
    assert deliver(receiver.endpoint, no_sent)[1].status_code == 400
    assert deliver(receiver.endpoint, stackone_event("account.updated", sent_at="soon"))[1].status_code == 400
    # the optional timestamp header, when sent and signed, still decides
    body = orjson.dumps(stackone_event("account.updated", sent_at="2020-01-01T00:00:00Z", record_id="hdr"))
    ts = str(int(time.time()))
    headers = {"x-stackone-signature": sign_base64url(SECRET, body, ts), TIMESTAMP_HEADER: ts}
    assert httpx.post(receiver.endpoint, content=body, headers=headers).json()["status"] == "stored"
    assert len(staged_records(data_dir)) == 3


def test_idempotency_key_is_the_id_else_a_hash_of_the_raw_body(data_dir):
    from stackone_pipeline.webhooks.events import body_key, parse_event

    payload = stackone_event("account.updated")
    body = orjson.dumps(payload)
    assert parse_event(body).key == "sha256:" + hashlib.sha256(body).hexdigest() == body_key(body)
    assert parse_event(orjson.dumps({**payload, "id": "evt_given"})).key == "evt_given"
    assert parse_event(b" " + body).key != parse_event(body).key  # the raw bytes, not the parsed JSON
    for bad in ({**payload, "id": 7}, {**payload, "id": ""}, {**payload, "event": 5}, {**payload, "event": ""}):
        bad.pop("type", None)
        with pytest.raises(ValueError):
            parse_event(orjson.dumps(bad))
    # `event` wins over `type`; either alone names the type
    assert parse_event(orjson.dumps({**payload, "type": "x"})).type == "account.updated"
    assert parse_event(orjson.dumps({"type": "account.error", "sent_at": now_iso()})).type == "account.error"

    with start_receiver(data_dir, SECRET) as running:
        assert deliver(running.endpoint, payload)[1].json()["status"] == "stored"
        assert deliver(running.endpoint, payload)[1].json()["status"] == "already received"
        # the same event re-sent with a new sent_at is other bytes: another delivery
        assert deliver(running.endpoint, {**payload, "sent_at": now_iso(1)})[1].json()["status"] == "stored"
    load_staged_events(Storage(data_dir, lock_timeout_s=30))
    assert body_key(body) in loaded_ids(data_dir)
    with start_receiver(data_dir, SECRET) as running:  # remembered across restarts, once loaded
        assert deliver(running.endpoint, payload)[1].json()["status"] == "already received"


def test_a_table_made_by_an_earlier_version_gets_the_new_columns(data_dir):
    storage = Storage(data_dir, lock_timeout_s=30)
    old = (
        "CREATE TABLE webhook_events (event_id VARCHAR, event_type VARCHAR, received_at TIMESTAMPTZ, "
        "occurred_at TIMESTAMPTZ, account_id VARCHAR, provider VARCHAR, request_id VARCHAR, "
        "event_datetime TIMESTAMPTZ, event_hour TIMESTAMPTZ, error JSON, payload JSON, loaded_at TIMESTAMPTZ)"
    )
    with storage.warehouse.writer() as con:
        con.execute(old)
        con.execute(
            "INSERT INTO webhook_events (event_id, event_type, received_at, payload) VALUES (?, ?, now(), ?)",
            ["evt_old", "account.error", '{"id": "evt_old"}'],
        )
    write_segment(data_dir, "20260101T000000000000-new.jsonl", event("evt_old"), event("evt_newer"))
    (data_dir / "webhooks" / "staging" / "20260101T000000000001-so.jsonl").write_bytes(
        record_line(now_iso(), stackone_event("account.deleted"), "sha256:abc")  # no id: the staged key
    )
    new = load_staged_events(storage)
    assert sorted(e["event_id"] for e in new) == ["evt_newer", "sha256:abc"]
    with storage.warehouse.reader() as con:
        cols = con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'webhook_events' ORDER BY column_index"
        ).fetchall()
        rows = con.execute(
            "SELECT event_id, event_type, project_id, origin_owner_name FROM webhook_events ORDER BY event_id"
        ).fetchall()
    assert [c for (c,) in cols] == [n for n, _, _ in COLUMNS]  # the same order as a table made now
    assert rows == [
        ("evt_newer", "request.failed", None, None),
        ("evt_old", "account.error", None, None),
        ("sha256:abc", "account.deleted", "proj_9", "Acme Ltd"),
    ]
    con = duckdb.connect(str(data_dir / "query.duckdb"), read_only=True)
    try:  # the lake copy has every column too
        assert con.execute("SELECT project_id FROM webhook_events WHERE event_id = 'sha256:abc'").fetchone() == (
            "proj_9",
        )
    finally:
        con.close()
