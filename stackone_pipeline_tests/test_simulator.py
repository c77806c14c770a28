"""The StackOne Request Logs simulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
import math
import statistics
import time
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from stackone_pipeline.simulator import (
    DEFAULT_API_KEY,
    PII_MARKER,
    SECRET_MARKER,
    Faults,
    Simulator,
    SimulatorConfig,
    start_simulator,
)

from .conftest import SIM_LIST_SHAPE
from .sim_stats import request_log

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
H = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)  # a past hour well inside retention
HOUR = timedelta(hours=1)


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _window(start: datetime, end: datetime, **extra) -> dict:
    return {"filter[start_date]": _iso(start), "filter[end_date]": _iso(end), **extra}


def _flat_window(start: datetime, end: datetime, **extra) -> dict:
    return {"start_date": _iso(start), "end_date": _iso(end), **extra}


FULL_ONLY = ("source_ip", "request", "response")  # what a partial (list) record leaves out
STEP_FIELDS = [  # the SDK's StepLogPartial, in its order
    "id",
    "request_id",
    "account_id",
    "project_id",
    "provider",
    "service",
    "resource",
    "child_resource",
    "sub_resource",
    "action",
    "http_method",
    "path",
    "url",
    "status",
    "success",
    "duration",
    "start_time",
    "end_time",
    "is_worker",
]


def assert_error_body(r: httpx.Response, status: int) -> dict:
    """StackOne's error answer: {statusCode, message, timestamp}; 400 adds data and provider_errors."""
    body = r.json()
    assert r.status_code == status and body["statusCode"] == status and body["message"]
    assert _ts(body["timestamp"]) == NOW
    if status == 400:
        assert body["data"]["statusCode"] == 400 and body["data"]["message"] == body["message"]
        assert body["provider_errors"] == []
    else:
        assert set(body) == {"statusCode", "message", "timestamp"}
    return body


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture
def launch():
    """Start simulators with a frozen clock; all are stopped after the test."""
    running = []

    def _launch(**kw) -> tuple:
        faults = kw.pop("faults", Faults())
        kw.setdefault("list_shape", SIM_LIST_SHAPE)
        cfg = SimulatorConfig(clock=lambda: NOW.timestamp(), faults=faults, **kw)
        sim = start_simulator(cfg)
        running.append(sim)
        client = httpx.Client(base_url=sim.url, auth=(cfg.api_key, ""), timeout=30)
        running.append(client)
        return sim, client

    yield _launch
    for r in running:
        r.close() if isinstance(r, httpx.Client) else r.stop()


def walk(client: httpx.Client, params: dict) -> tuple[list[dict], list[int]]:
    """Follow ``next`` to the end; returns records and the size of every page."""
    records, sizes, token = [], [], None
    while True:
        r = client.get("/requests/logs", params={**params, **({"next": token} if token else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        records += body["data"]
        sizes.append(len(body["data"]))
        token = body["next"]
        if token is None:
            return records, sizes


def test_auth_401_403_and_key_never_echoed(launch):
    sim, _ = launch(forbidden_api_keys=("v1.sim.no-access-key",))
    for auth in (None, ("v1.sim.wrong-key", ""), ("v1.sim.no-access-key", "")):
        r = httpx.get(f"{sim.url}/requests/logs", auth=auth)
        assert_error_body(r, 403 if auth and "no-access" in auth[0] else 401)
        assert "v1.sim" not in r.text and DEFAULT_API_KEY not in r.text
    garbage = httpx.get(f"{sim.url}/requests/logs", headers={"Authorization": "Basic !!notb64"})
    assert garbage.status_code == 401


def test_walk_to_end_with_clamped_short_pages_matches_expected(launch):
    sim, client = launch(rows_per_hour=600, max_page_size=50)
    got, sizes = walk(client, _window(H, H + HOUR, page_size=80, order_direction="asc"))
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert got == expected and len(got) > 400
    assert max(sizes) == 50 and len(sizes) > 2  # asked 80, got 50, yet next was not null
    desc, _ = walk(client, _window(H, H + HOUR, page_size=200))  # default direction: desc
    assert desc == expected[::-1]


def test_page_size_policy_clamps_or_refuses_and_switches_at_runtime(launch):
    sim, client = launch(rows_per_hour=600, max_page_size=50)
    params = _window(H, H + HOUR, order_direction="asc")
    clamped = client.get("/requests/logs", params={**params, "page_size": 80}).json()
    assert len(clamped["data"]) == 50 and clamped["next"]  # the default: served as the maximum, with next
    r = httpx.post(f"{sim.url}/_simulator/config", json={"page_size_policy": "refuse", "max_page_size": 40})
    assert r.status_code == 200 and r.json()["page_size_policy"] == "refuse"
    refused = client.get("/requests/logs", params={**params, "page_size": 41})
    assert assert_error_body(refused, 400)["message"] == "page_size must not be greater than 40"
    got, sizes = walk(client, {**params, "page_size": 40})  # the maximum itself is served
    assert got == sim.simulator.expected_records(H, H + HOUR) and max(sizes) == 40
    stats = httpx.get(f"{sim.url}/_simulator/stats", params={"events": 1}).json()
    assert stats["page_sizes"][:3] == [["80", 200], ["41", 400], ["40", 200]]  # what was asked, as sent
    with pytest.raises(ValueError, match="page_size_policy"):
        SimulatorConfig(page_size_policy="shrug")


def test_short_page_fault_serves_half_a_page_with_next(launch):
    sim, client = launch(rows_per_hour=600, faults=Faults(short_page_every=2))
    got, sizes = walk(client, _window(H, H + HOUR, order_direction="asc", page_size=100))
    assert got == sim.simulator.expected_records(H, H + HOUR)
    assert sizes[:4] == [100, 50, 100, 50]  # every second request: half the page, yet next was not null


def test_defaults_page_size_25_newest_first(launch):
    _, client = launch()
    data = client.get("/requests/logs").json()
    assert len(data["data"]) == 25 and data["next"]
    times = [_ts(r["event_datetime"]) for r in data["data"]]
    assert times == sorted(times, reverse=True) and NOW - timedelta(minutes=5) < times[0] <= NOW


def test_cursor_tampered_garbage_or_other_query_is_400(launch):
    _, client = launch(rows_per_hour=600)
    params = _window(H, H + HOUR, page_size=10)
    token = client.get("/requests/logs", params=params).json()["next"]
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[5] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    other_query = {**params, "filter[providers]": "lever"}
    for bad, query in ((tampered, params), ("garbage", params), (token, other_query)):
        r = client.get("/requests/logs", params={**query, "next": bad})
        assert assert_error_body(r, 400)["message"] == "invalid cursor"
    assert client.get("/requests/logs", params={**params, "next": token}).status_code == 200


def test_inclusive_end_date_with_boundary_records(launch):
    sim, client = launch(rows_per_hour=300, faults=Faults(boundary_records=True))
    got, _ = walk(client, _window(H, H + HOUR, page_size=1000, order_direction="asc"))
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert _ts(expected[0]["event_datetime"]) == H
    assert got[:-1] == expected  # the whole hour ...
    assert got[-1]["event_datetime"] == "2026-11-20T10:00:00.000Z"  # ... plus the next hour's first record
    assert got[-1] == sim.simulator.expected_records(H + HOUR, H + 2 * HOUR)[0]


def test_retention_hides_old_windows(launch):
    _, client = launch(rows_per_hour=200)
    old = NOW - timedelta(days=91)
    assert client.get("/requests/logs", params=_window(old, old + HOUR)).json() == {"data": [], "next": None}
    recent = NOW - timedelta(days=89)
    assert client.get("/requests/logs", params=_window(recent, recent + HOUR)).json()["data"]
    oldest = client.get("/requests/logs", params={"order_direction": "asc", "page_size": 5}).json()["data"]
    first = _ts(oldest[0]["event_datetime"])
    assert NOW - timedelta(days=90) <= first < NOW - timedelta(days=90) + timedelta(minutes=5)
    future = client.get("/requests/logs", params=_window(NOW + HOUR, NOW + 2 * HOUR)).json()
    assert future["data"] == []


@pytest.mark.parametrize(
    "param,field,pick",
    [
        ("providers", "provider", lambda v: f"{v[0]},{v[3]}"),
        ("services", "service", lambda v: "ats"),
        ("account_ids", "account_id", lambda v: f"{v[1]},{v[2]}"),
        ("actions", "action", lambda v: v[0]),
        ("resources", "resource", lambda v: "employees,contacts"),
        ("child_resources", "child_resource", lambda v: "documents"),
        ("http_methods", "http_method", lambda v: "post,PATCH"),
        ("status_codes", "status", lambda v: "404,500,502"),
        ("source_types", "source_type", lambda v: "DASHBOARD"),
        ("source_values", "source_value", lambda v: v[0]),
        ("success", "success", lambda v: "false"),
    ],
)
def test_filters_narrow(launch, param, field, pick):
    sim, client = launch(rows_per_hour=1500)
    expected = sim.simulator.expected_records(H, H + HOUR)
    values = sorted({str(r.get(field)) for r in expected if r.get(field) is not None})
    wanted = pick(values)
    allowed = {w.strip().upper() if field == "http_method" else w.strip() for w in wanted.split(",")}
    got, _ = walk(client, _window(H, H + HOUR, page_size=1000, order_direction="asc", **{f"filter[{param}]": wanted}))
    want = [r for r in expected if str(r.get(field)).lower() in {a.lower() for a in allowed}]
    assert got == want and 0 < len(got) < len(expected)


def test_request_ids_filter_and_get_by_id(launch):
    sim, client = launch(rows_per_hour=500)
    expected = sim.simulator.expected_records(H, H + HOUR)
    ids = [expected[7]["request_id"], expected[300]["request_id"]]
    got, _ = walk(client, {"filter[request_ids]": ",".join(ids), "order_direction": "asc"})
    assert [r["request_id"] for r in got] == ids
    full = sim.simulator.expected_records(H, H + HOUR, shape="full")
    one = client.get(f"/requests/logs/{ids[0]}")
    assert one.status_code == 200 and one.json() == {"data": full[7]}  # the detail is always the full record
    for include in ("advanced_logs", "step_logs,advanced_logs"):
        assert client.get(f"/requests/logs/{ids[0]}", params={"include": include}).status_code == 200
    with_steps = sim.simulator.expected_records(H, H + HOUR, include_steps=True, shape="full")[7]
    for params in ({"include": "step_logs"}, [("include", "step_logs"), ("include", "advanced_logs")]):
        steps = client.get(f"/requests/logs/{ids[0]}", params=params).json()["data"]
        assert steps == with_steps
    assert steps["step_requests"] and all(list(s) == STEP_FIELDS for s in steps["step_requests"])
    forged = ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")
    assert_error_body(client.get(f"/requests/logs/{forged}"), 404)
    assert client.get("/requests/logs/req_nope").status_code == 404


def test_camel_case_switch_same_data(launch):
    sim, client = launch(rows_per_hour=300, faults=Faults(camel_case=True), list_shape="full")
    got, _ = walk(client, _window(H, H + HOUR, page_size=500, order_direction="asc"))
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert len(got) == len(expected)
    for c, s in zip(got, expected):
        assert "request_id" not in c
        assert (c["requestId"], c["eventDatetime"], c["httpMethod"], c["accountId"], c["status"]) == (
            s["request_id"],
            s["event_datetime"],
            s["http_method"],
            s["account_id"],
            s["status"],
        )
        assert c["response"]["statusCode"] == s["response"]["status_code"]
        assert c["request"]["url"]["queryParams"] == s["request"]["url"]["query_params"]
        assert c["request"]["headers"] == s["request"]["headers"]  # header names are data: untouched
        assert len(c["response"]["providerErrors"]) == len(s["response"]["provider_errors"])
        assert "customMappingErrors" in c["response"]


def test_non_utc_offsets_are_same_instants(launch):
    sim, client = launch(rows_per_hour=300, faults=Faults(non_utc_offsets=True))
    got, _ = walk(client, _window(H, H + HOUR, page_size=500, order_direction="asc"))
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert [r["request_id"] for r in got] == [r["request_id"] for r in expected]
    assert not any(r["event_datetime"].endswith("Z") for r in got)
    assert {r["event_datetime"][-6:] for r in got} >= {"+02:00", "-05:30"}
    for g, e in zip(got, expected):
        for key in ("event_datetime", "start_time", "end_time"):
            assert _ts(g[key]) == _ts(e[key])


def test_late_arrivals_hidden_from_first_walk_only(launch):
    sim, client = launch(rows_per_hour=800, faults=Faults(late_fraction=0.1))
    params = _window(H, H + HOUR, page_size=100, order_direction="asc")
    first, _ = walk(client, params)
    second, _ = walk(client, params)
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert second == expected
    assert 0.05 * len(expected) < len(expected) - len(first) < 0.15 * len(expected)
    assert {r["request_id"] for r in first} < {r["request_id"] for r in second}
    # a different hour's first walk hides its own late records
    other, _ = walk(client, _window(H - HOUR, H, page_size=1000))
    assert len(other) < len(sim.simulator.expected_records(H - HOUR, H))


def test_repeat_across_pages_duplicates(launch):
    sim, client = launch(rows_per_hour=300, faults=Faults(repeat_across_pages=True))
    params = _window(H, H + HOUR, page_size=50, order_direction="asc")
    records = []
    token = None
    while True:
        body = client.get("/requests/logs", params={**params, **({"next": token} if token else {})}).json()
        if records:
            assert body["data"][0] == records[-1]  # page starts with the previous page's last record
        records += body["data"]
        token = body["next"]
        if not token:
            break
    ids = [r["request_id"] for r in records]
    expected = sim.simulator.expected_records(H, H + HOUR)
    assert len(ids) > len(set(ids)) and set(ids) == {r["request_id"] for r in expected}


def test_transport_faults_429_503_truncated_malformed(launch):
    faults = Faults()
    sim, client = launch(rows_per_hour=200, faults=faults)
    params = _window(H, H + HOUR, page_size=20)
    faults.status_429_every, faults.retry_after_s = 2, 3
    assert client.get("/requests/logs", params=params).status_code == 200
    r = client.get("/requests/logs", params=params)
    assert r.headers["Retry-After"] == "3" and assert_error_body(r, 429)
    faults.status_429_every = 0
    faults.status_408_every = 1  # the API's 60-second request lifetime
    r = client.get("/requests/logs", params=params)
    assert r.headers["Retry-After"] == "3" and "60-second" in assert_error_body(r, 408)["message"]
    faults.status_408_every = 0
    faults.status_503_every = 1
    r = client.get("/requests/logs", params=params)
    assert_error_body(r, 503)
    faults.status_503_every, faults.truncate_every = 0, 1
    r = client.get("/requests/logs", params=params)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    faults.truncate_every, faults.malformed_every = 0, 1
    assert client.get("/requests/logs", params=params).json() == {"data": "oops", "next": 12}
    faults.malformed_every = 0
    assert isinstance(client.get("/requests/logs", params=params).json()["data"], list)


def test_rate_limit_sliding_window(launch):
    """30 per sliding 2 s window. Whatever the machine's pace, each answer must be what the window
    held when the request arrived (the simulator's own arrival times): 429 exactly when 30
    admitted requests lie within the 2 s before it (a refused one takes no slot), its Retry-After
    the whole seconds until the oldest of them leaves the window."""
    sim, client = launch(rows_per_hour=100, rate_limit_per_minute=30, rate_limit_window_s=2.0)
    statuses, retry = [], []
    start = time.monotonic()
    # Requests one after the other for over two windows (so the window slides while it is full),
    # until a few refusals were seen, however slowly the machine lets them go.
    while time.monotonic() - start < 4.5 or statuses.count(429) < 5:
        assert time.monotonic() - start < 60, statuses
        r = client.get("/requests/logs", params={"page_size": 1})
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry.append(int(r.headers["Retry-After"]))
            assert_error_body(r, 429)
        time.sleep(0.01)
    assert statuses[:30] == [200] * 30 and statuses.count(429) >= 5
    assert 200 in statuses[statuses.index(429) :]  # admitted again once the window moved on
    events = request_log(sim)
    assert [s for _, s in events] == statuses
    admitted: list[float] = []
    refusals = iter(retry)
    for t, status in events:
        inside = [a for a in admitted if a > t - 2.0]
        if len(inside) >= 30:
            assert status == 429 and next(refusals) == max(1, math.ceil(inside[0] + 2.0 - t)), t
        else:
            assert status == 200, t
            admitted.append(t)
    stats = sim.simulator.stats
    assert stats.max_in_window(2.0) <= 30 and stats.by_status[429] == statuses.count(429)
    time.sleep(max(retry))  # Retry-After, as told: then there is room again
    assert client.get("/requests/logs", params={"page_size": 1}).status_code == 200


def test_determinism_by_seed():
    def recs(seed: int) -> list[dict]:
        sim = Simulator(SimulatorConfig(seed=seed, rows_per_hour=200, clock=lambda: NOW.timestamp()))
        return sim.expected_records(H, H + HOUR)

    a, b, c = recs(1), recs(1), recs(2)
    assert a == b and a != c
    assert len({r["request_id"] for r in a}) == len(a)


def test_traffic_shape_burst_slow_provider_timeouts_missing_fields():
    sim = Simulator(
        SimulatorConfig(rows_per_hour=4000, clock=lambda: NOW.timestamp(), spike_hours=("2026-11-19T16:00:00Z",))
    )
    day = datetime(2026, 11, 19, tzinfo=timezone.utc)
    recs = sim.expected_records(day + timedelta(hours=13), day + timedelta(hours=16))
    workday = [r for r in recs if r["provider"] == "workday"]
    burst = [r for r in workday if "T14:20:00" <= r["event_datetime"][10:19] < "T14:35:00"]
    calm = [r for r in workday if not "T14:20:00" <= r["event_datetime"][10:19] < "T14:35:00"]
    err = lambda rs: sum(1 for r in rs if (r["status"] or 599) >= 400) / len(rs)  # noqa: E731
    assert err(burst) > 0.4 and err(calm) < 0.08
    assert 0.005 < err(recs) < 0.06
    slow = sorted(r["duration"] for r in recs if r["provider"] == "successfactors" and r["status"])
    assert slow[int(0.95 * len(slow))] > 2000
    others = [r["duration"] for r in recs if r["provider"] not in ("successfactors",) and r["status"]]
    assert 100 < statistics.median(others) < 450
    timeouts = [r for r in recs if r["status"] is None]
    assert timeouts and all(not r["success"] and r["duration"] >= 30000 for r in timeouts)
    assert all(r["success"] == (r["status"] is not None and r["status"] < 400) for r in recs)
    assert 0 < sum("project_id" not in r for r in recs) < 0.03 * len(recs)
    assert any("sub_resource" not in r for r in recs) and any(r.get("sub_resource") for r in recs)
    assert len({r["provider"] for r in recs}) >= 12 and len({r["account_id"] for r in recs}) >= 35
    spike = len(sim.expected_records(day + timedelta(hours=16), day + timedelta(hours=17)))
    assert spike > 4 * len(sim.expected_records(day + timedelta(hours=15), day + timedelta(hours=16)))
    flat = Simulator(SimulatorConfig(rows_per_hour=100, diurnal=False, clock=lambda: NOW.timestamp()))
    assert len(flat.expected_records(H, H + 3 * HOUR)) == 300


def test_secrets_and_pii_markers(launch):
    faults = Faults()
    sim, client = launch(rows_per_hour=300, faults=faults, list_shape="full")
    params = _window(H, H + HOUR, page_size=1000, include="step_logs")
    body = client.get("/requests/logs", params=params).text
    recs = json.loads(body)["data"]
    assert all(SECRET_MARKER in r["request"]["headers"]["authorization"] for r in recs)
    assert any(SECRET_MARKER in r["request"]["url"]["url"] for r in recs)
    errs = [e for r in recs for e in r["response"]["provider_errors"]]
    assert errs and all(SECRET_MARKER in e["url"] and PII_MARKER in json.dumps(e["raw"]) for e in errs)
    assert PII_MARKER in body and "user-agent" in recs[0]["request"]["headers"]
    assert all(SECRET_MARKER in s["url"] for r in recs for s in r["step_requests"])  # provider tokens in step URLs
    faults.secrets = False
    clean = client.get("/requests/logs", params=params).text
    assert SECRET_MARKER not in clean and PII_MARKER in clean
    assert SECRET_MARKER not in json.dumps(sim.simulator.expected_records(H, H + HOUR, include_steps=True))


def test_bad_requests_methods_and_paths(launch):
    sim, client = launch()
    r = client.get("/requests/logs", params={"filter[start_date]": "yesterday"})
    assert "filter[start_date]" in assert_error_body(r, 400)["message"]
    flat = client.get("/requests/logs", params={"start_date": "yesterday"})
    assert "start_date must be" in assert_error_body(flat, 400)["message"]
    assert client.get("/requests/logs", params={"filter[end_date]": "2026-13-01"}).status_code == 400
    assert client.get("/requests/logs", params={"order_by": "colour"}).status_code == 400
    assert client.get("/requests/logs", params={"order_direction": "up"}).status_code == 400
    assert client.get("/requests/logs", params={"page_size": "0"}).status_code == 400
    assert client.get("/requests/logs", params={"filter[success]": "maybe"}).status_code == 400
    assert_error_body(client.post("/requests/logs"), 405)
    assert_error_body(client.get("/unified/hris/employees"), 404)
    plus_two = H.astimezone(timezone(timedelta(hours=2)))
    offset = client.get("/requests/logs", params=_window(plus_two, H + HOUR))
    assert offset.status_code == 200 and offset.json()["data"]


def test_admin_endpoints(launch):
    sim, client = launch(rows_per_hour=200)
    client.get("/requests/logs")
    r = httpx.post(f"{sim.url}/_simulator/faults", json={"status_503_every": 1, "camel_case": True})
    assert r.status_code == 200 and r.json()["status_503_every"] == 1
    assert sim.simulator.faults.camel_case is True
    assert client.get("/requests/logs").status_code == 503
    assert httpx.post(f"{sim.url}/_simulator/faults", json={"nope": 1}).status_code == 400
    stats = httpx.get(f"{sim.url}/_simulator/stats", params={"events": 1}).json()
    assert stats["total"] == 2 and stats["by_status"] == {"200": 1, "503": 1} and len(stats["events"]) == 2
    assert httpx.post(f"{sim.url}/_simulator/reset").json() == {"ok": True}
    assert httpx.get(f"{sim.url}/_simulator/stats").json()["total"] == 0


def test_other_orderings_cover_the_window(launch):
    sim, client = launch(rows_per_hour=400)
    expected = sim.simulator.expected_records(H, H + HOUR)
    for order in ("provider", "service", "status", "duration"):
        got, _ = walk(client, _window(H, H + HOUR, page_size=150, order_by=order, order_direction="asc"))
        vals = [(r[order] if r[order] is not None else -1) for r in got]
        assert vals == sorted(vals)
        assert sorted(r["request_id"] for r in got) == sorted(r["request_id"] for r in expected)


def test_throughput_report(launch):
    """Not a strict benchmark: prints pages/s for page_size=100 over a busy hour."""
    sim, client = launch(rows_per_hour=500_000, diurnal=False, rate_limit_per_minute=1_000_000)
    params = _window(H, H + HOUR, page_size=100, order_direction="asc")
    pages, token, start = 0, None, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        r = client.get("/requests/logs", params={**params, **({"next": token} if token else {})})
        body = orjson.loads(r.content)
        assert len(body["data"]) == 100
        token, pages = body["next"], pages + 1
    rate = pages / (time.perf_counter() - start)
    print(f"\nsimulator throughput (in-process client+server): {rate:.0f} pages/s of 100 records")
    assert rate > 20


def test_list_pages_carry_partial_records_unless_full_and_the_detail_is_always_full(launch):
    sim, client = launch(rows_per_hour=300, list_shape="partial")
    params = _window(H, H + HOUR, page_size=1000, order_direction="asc", include="step_logs")
    partial = client.get("/requests/logs", params=params).json()["data"]
    full = sim.simulator.expected_records(H, H + HOUR, include_steps=True, shape="full")
    assert partial == sim.simulator.expected_records(H, H + HOUR, include_steps=True)
    assert len(partial) == len(full) > 200
    for p, f in zip(partial, full):  # the scalars and the steps, nothing else
        assert not set(FULL_ONLY) & set(p) and set(FULL_ONLY) <= set(f)
        assert p == {k: v for k, v in f.items() if k not in FULL_ONLY}
        assert all(list(s) == STEP_FIELDS for s in p["step_requests"])
    assert SECRET_MARKER not in json.dumps([{k: v for k, v in p.items() if k != "step_requests"} for p in partial])
    failed = next(f for f in full if f["status"] and f["status"] >= 400)
    detail = client.get(f"/requests/logs/{failed['request_id']}", params={"include": "step_logs"}).json()["data"]
    assert detail == failed and detail["response"]["provider_errors"]  # the provider's own answer
    assert SECRET_MARKER in detail["request"]["headers"]["authorization"]
    r = httpx.post(f"{sim.url}/_simulator/config", json={"list_shape": "full"})  # the guide's shape
    assert r.status_code == 200 and r.json()["list_shape"] == "full" and sim.config.list_shape == "full"
    assert client.get("/requests/logs", params=params).json()["data"] == full


def test_http_method_comes_in_mixed_case(launch):
    sim, client = launch(rows_per_hour=1000)
    got, _ = walk(client, _window(H, H + HOUR, page_size=1000))
    methods = {r["http_method"] for r in got}
    assert {"GET", "get", "Get"} <= methods and any(m.isupper() and m != "GET" for m in methods)
    assert {m.upper() for m in methods} == {"GET", "POST", "PATCH"}
    posts, _ = walk(client, _window(H, H + HOUR, page_size=1000, **{"filter[http_methods]": "post"}))
    assert posts and {r["http_method"].upper() for r in posts} == {"POST"}  # the filter ignores case


def _first_page(client, params) -> httpx.Response:
    return client.get("/requests/logs", params={"page_size": 50, "order_direction": "asc", **params})


def _inside(records, start, end) -> bool:
    return bool(records) and all(start <= _ts(r["event_datetime"]) <= end for r in records)


@pytest.mark.parametrize(
    "encoding,bracket_honoured,flat_honoured",
    [("both", True, True), ("bracket", True, False), ("flat", False, True), ("none", False, False)],
)
def test_filter_encoding_switch_honours_and_ignores(launch, encoding, bracket_honoured, flat_honoured):
    sim, client = launch(rows_per_hour=300, filter_encoding=encoding)
    expected = sim.simulator.expected_records(H, H + HOUR)
    for window, honoured in ((_window, bracket_honoured), (_flat_window, flat_honoured)):
        first = _first_page(client, window(H, H + HOUR))
        assert first.status_code == 200
        if honoured:
            assert _inside(first.json()["data"], H, H + HOUR)
            got, _ = walk(client, window(H, H + HOUR, page_size=1000, order_direction="asc"))
            assert got == expected
        else:  # ignored, as an API ignores what it does not know: the whole retention window
            oldest = _ts(first.json()["data"][0]["event_datetime"])
            assert oldest < NOW - timedelta(days=89) and first.json()["next"]


@pytest.mark.parametrize("encoding", ["both", "bracket", "flat", "none"])
def test_reject_unknown_params_refuses_what_is_not_honoured(launch, encoding):
    sim, client = launch(rows_per_hour=300, filter_encoding=encoding, reject_unknown_params=True)
    cases = ((_window, encoding in ("both", "bracket")), (_flat_window, encoding in ("both", "flat")))
    for window, honoured in cases:
        r = _first_page(client, window(H, H + HOUR))
        if honoured:
            assert r.status_code == 200 and _inside(r.json()["data"], H, H + HOUR)
        else:
            message = assert_error_body(r, 400)["message"]
            sent = next(iter(window(H, H + HOUR)))
            assert "unknown query parameter" in message and sent in message
    assert_error_body(_first_page(client, {"colour": "blue"}), 400)  # anything unknown, not only filters
    assert _first_page(client, {}).status_code == 200  # the known parameters still work


def test_config_endpoint_switches_the_api_shape(launch):
    sim, client = launch(rows_per_hour=200)
    url = f"{sim.url}/_simulator/config"
    assert httpx.get(url).json() == {
        "list_shape": SIM_LIST_SHAPE,
        "filter_encoding": "both",
        "reject_unknown_params": False,
        "retention_days": 90,
        "page_size_policy": "clamp",
        "max_page_size": 1000,
    }
    r = httpx.post(url, json={"filter_encoding": "flat", "reject_unknown_params": True, "retention_days": 30})
    assert r.status_code == 200 and r.json()["filter_encoding"] == "flat"
    assert_error_body(_first_page(client, _window(H, H + HOUR)), 400)
    assert _first_page(client, _flat_window(H, H + HOUR)).status_code == 200
    old = NOW - timedelta(days=31)  # retention shortened to 30 days
    assert client.get("/requests/logs", params=_flat_window(old, old + HOUR)).json()["data"] == []
    bad_values = (
        {"list_shape": "huge"},
        {"filter_encoding": "xml"},
        {"retention_days": 0},
        {"page_size_policy": "shrug"},
        {"max_page_size": 0},
        {"nope": 1},
    )
    for bad in bad_values:
        assert httpx.post(url, json=bad).status_code == 400
    assert httpx.get(url).json()["filter_encoding"] == "flat"  # a refused update changes nothing
    with pytest.raises(ValueError, match="list_shape"):
        SimulatorConfig(list_shape="huge")


def test_retention_days_is_configurable(launch):
    _, client = launch(rows_per_hour=200, retention_days=7)
    inside, outside = NOW - timedelta(days=6), NOW - timedelta(days=8)
    assert client.get("/requests/logs", params=_window(inside, inside + HOUR)).json()["data"]
    assert client.get("/requests/logs", params=_window(outside, outside + HOUR)).json()["data"] == []
    oldest = client.get("/requests/logs", params={"order_direction": "asc", "page_size": 1}).json()["data"][0]
    assert NOW - timedelta(days=7) <= _ts(oldest["event_datetime"]) < NOW - timedelta(days=7) + timedelta(minutes=5)
