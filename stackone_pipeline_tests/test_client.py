"""The API client against the simulator over real HTTP: pagination, retries, auth, rate limit."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from stackone_pipeline.http import retry_after_seconds
from stackone_pipeline.simulator import DEFAULT_API_KEY, SECRET_MARKER, start_simulator
from stackone_pipeline.stackone.client import (
    EncodingMemo,
    FetchStats,
    StackOneAuthError,
    StackOneBadRequest,
    StackOneClient,
    StackOneError,
    StackOneFilterError,
)
from stackone_pipeline.stackone.ratelimit import RateLimiter

from .conftest import closed_hour
from .sim_stats import request_log


def walk(client, hour, **kw):
    stats = FetchStats()
    pages = list(
        client.list_logs(filters={"start_date": hour, "end_date": hour + timedelta(hours=1)}, stats=stats, **kw)
    )
    return pages, stats


@pytest.fixture
def sim_config(sim_config):
    sim_config.max_page_size = 40  # the server returns fewer rows than asked for
    sim_config.forbidden_api_keys = ("v1.eu1.forbidden",)
    return sim_config


def test_pagination_follows_next_to_the_end_even_with_short_pages(sim, make_client):
    hour = closed_hour()
    pages, stats = walk(make_client(page_size=100), hour)
    ids = [r["request_id"] for p in pages for r in p]
    expected = [r["request_id"] for r in sim.simulator.expected_records(hour, hour + timedelta(hours=1))]
    assert all(len(p) <= 40 for p in pages) and len(pages) > 2
    assert len(expected) == 300 and len(set(expected)) == len(expected)
    assert ids == expected  # every record once, in order: none repeated, none missing, none foreign
    assert stats.pages == len(pages) == stats.requests


def test_every_filter_is_sent_and_narrows(sim, make_client):
    hour = closed_hour()
    client = make_client()
    everything = [r for p in walk(client, hour)[0] for r in p]
    provider = everything[0]["provider"]
    filtered = [
        r
        for p in client.list_logs(
            filters={
                "start_date": hour,
                "end_date": hour + timedelta(hours=1),
                "providers": [provider],
                "success": True,
            }
        )
        for r in p
    ]
    assert filtered and all(r["provider"] == provider and r["success"] for r in filtered)
    assert len(filtered) < len(everything)
    with pytest.raises(ValueError, match="unknown list-logs filter"):
        list(client.list_logs(filters={"provider": "x"}))


def test_429_with_retry_after_is_honoured(sim, make_client):
    sim.config.faults.status_429_every = 2
    sim.config.faults.retry_after_s = 1
    hour = closed_hour()
    t0 = time.monotonic()
    pages, stats = walk(make_client(), hour)
    elapsed = time.monotonic() - t0
    assert stats.throttled >= 1 and stats.retries >= stats.throttled
    assert elapsed >= stats.throttled * 1.0  # waited Retry-After each time, not the 50 ms backoff
    assert sum(len(p) for p in pages) >= 300


@pytest.mark.parametrize("fault", ["status_503_every", "truncate_every", "malformed_every"])
def test_5xx_truncated_and_malformed_pages_are_retried(sim, make_client, fault):
    setattr(sim.config.faults, fault, 2)
    hour = closed_hour()
    pages, stats = walk(make_client(), hour)
    assert stats.retries >= 1
    expected = sim.simulator.expected_records(hour, hour + timedelta(hours=1))
    # a retried page is yielded once, when it finally arrives whole: no record twice, none missing
    assert [r["request_id"] for p in pages for r in p] == [r["request_id"] for r in expected]


def test_persistent_failure_gives_up_with_a_clear_error(sim, make_client):
    sim.config.faults.status_503_every = 1
    with pytest.raises(StackOneError, match="giving up after 3 attempts; last error: HTTP 503"):
        walk(make_client(max_attempts=3), closed_hour())


def test_deadline_stops_retrying(sim, make_client):
    """A Retry-After that would end past the walk's deadline is not waited for: the walk gives up
    at once. Counted at the simulator (one request, no retry) and bounded by the Retry-After it
    did not wait, not by a few seconds of wall clock."""
    sim.config.faults.status_429_every = 1
    sim.config.faults.retry_after_s = 60
    t0 = time.monotonic()
    with pytest.raises(StackOneError, match="deadline"):
        walk(make_client(deadline_s=10), closed_hour())
    assert [status for _, status in request_log(sim)] == [429]
    assert time.monotonic() - t0 < 60


def test_wrong_key_fails_fast_without_retry_and_without_the_key(sim, make_client):
    secret = "v1.eu1.not-the-right-key-1234567890"
    client = make_client(api_key=secret)
    with pytest.raises(StackOneAuthError) as err:
        walk(client, closed_hour())
    assert "401" in str(err.value) and "STACKONE_API_KEY" in str(err.value)
    assert secret not in str(err.value) and secret not in repr(err.value)
    assert len(request_log(sim)) == 1  # no retry storm


def test_forbidden_key_names_the_cause(sim, make_client):
    with pytest.raises(StackOneAuthError, match="403"):
        walk(make_client(api_key="v1.eu1.forbidden"), closed_hour())


def test_400_fails_with_the_servers_message(sim, make_client):
    client = make_client()
    with pytest.raises(StackOneBadRequest, match="start_date") as err:
        list(client.list_logs(filters={"start_date": "yesterday-ish"}))
    assert len(request_log(sim)) == 1  # a bad value is not an unknown parameter: no second encoding
    assert "statusCode" not in str(err.value) and "timestamp" not in str(err.value)  # the message, not the body
    assert err.value.status == 400 and "must be an ISO-8601 date-time" in err.value.server_message


def test_retry_after_parses_seconds_and_http_dates():
    assert retry_after_seconds("3") == 3
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10


class RecordingLimiter(RateLimiter):
    """The real limiter, noting the start time it gave each request: the `now` it read (under its
    lock) plus the wait it imposed. That is the limiter's own schedule, exact however late the
    scheduler wakes the thread afterwards."""

    def __init__(self, *a, **kw):
        self._now = threading.local()
        super().__init__(*a, clock=self._read_clock, **kw)
        self.granted: list[float] = []

    def _read_clock(self) -> float:
        self._now.value = time.monotonic()
        return self._now.value

    def acquire(self) -> float:
        waited = super().acquire()
        self.granted.append(self._now.value + waited)
        return waited


def worst_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_rate_limiter_never_exceeds_the_limit_in_any_sliding_window(sim_config):
    """30 requests per 2 s window at the simulator; four threads share one limiter."""
    sim_config.rate_limit_per_minute, sim_config.rate_limit_window_s = 30, 2.0
    limiter = RecordingLimiter(30, window_s=2.0)
    with (
        start_simulator(sim_config) as sim,
        StackOneClient(DEFAULT_API_KEY, sim.url, rate_limiter=limiter, page_size=10) as client,
    ):
        threads = [threading.Thread(target=walk, args=(client, closed_hour(i))) for i in range(2, 6)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        log = request_log(sim)
    assert len(log) >= 120  # 4 hours x 300 rows / 10 per page
    # The limiter's schedule never lets more than the limit go in any sliding window (exact: the
    # start times it handed out, not when a loaded machine got round to sending them)...
    assert len(limiter.granted) == len(log)
    assert worst_window(limiter.granted, 2.0) <= 30
    # ...so the simulator, counting in its own 2 s window, hardly ever has to refuse one: only
    # scheduling jitter beyond the limiter's 2% margin (40 ms here) can make it.
    assert sum(1 for _, status in log if status == 429) <= 2
    # and it runs near the limit, not far below it (generous: the machine may be loaded)
    assert len(log) / elapsed * 2.0 >= 0.7 * 30


def test_a_429_with_retry_after_holds_back_every_thread_sharing_the_limiter(sim_config):
    """Four threads share one client (and limiter); the simulator answers one request 429 with
    Retry-After: 2. Until those 2 s are over no thread starts a request: the only ones the
    simulator may still see are those already under way when the 429 was answered, at most one
    per other thread (each thread has one request at a time). Counted at the simulator."""
    threads_n, retry_after = 4, 2
    sim_config.faults.status_429_every = 70  # 4 x 30 pages + 1 retry = 121 requests: exactly one 429
    sim_config.faults.retry_after_s = retry_after
    hours = [closed_hour(i) for i in range(2, 2 + threads_n)]
    with (
        start_simulator(sim_config) as sim,
        StackOneClient(
            DEFAULT_API_KEY, sim.url, rate_limiter=RateLimiter(100_000), page_size=10, backoff_base_s=0.05
        ) as client,
    ):
        results: dict = {}
        threads = [threading.Thread(target=lambda h=h: results.update({h: walk(client, h)})) for h in hours]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = request_log(sim)
        expected = {
            h: [r["request_id"] for r in sim.simulator.expected_records(h, h + timedelta(hours=1))] for h in hours
        }
    throttled = [t for t, status in log if status == 429]
    assert len(throttled) == 1 and len(log) == threads_n * 30 + 1
    (t429,) = throttled
    during = [t for t, _ in log if t429 < t < t429 + retry_after]
    # the others' requests in flight when the 429 came, and at most two each that passed the limiter
    # before the pause took hold (on a loaded machine the 429's own thread can be descheduled for a
    # few of the others' round trips: 7 were seen within 8 ms of it); without the pause it is dozens
    assert len(during) <= 3 * (threads_n - 1), f"{len(during)} requests reached the simulator during the pause"
    assert len([t for t, _ in log if t > t429]) > threads_n  # the walks were under way: the pause held them
    assert {h: [r["request_id"] for p in pages for r in p] for h, (pages, _) in results.items()} == expected
    assert sum(stats.throttled for _, stats in results.values()) == 1


def test_get_log_by_id(sim, make_client):
    hour = closed_hour()
    first = sim.simulator.expected_records(hour, hour + timedelta(hours=1))[0]
    assert make_client().get_log(first["request_id"])["request_id"] == first["request_id"]


def test_408_after_the_request_lifetime_is_retried_after_retry_after(sim, make_client):
    sim.config.faults.status_408_every = 2
    sim.config.faults.retry_after_s = 1
    hour = closed_hour()
    t0 = time.monotonic()
    pages, stats = walk(make_client(), hour)
    timeouts = sum(1 for _, status in request_log(sim) if status == 408)
    assert timeouts >= 1 and stats.retries >= timeouts and stats.throttled == 0
    assert time.monotonic() - t0 >= timeouts * 1.0  # waited Retry-After, not the 50 ms backoff
    expected = sim.simulator.expected_records(hour, hour + timedelta(hours=1))
    assert [r["request_id"] for p in pages for r in p] == [r["request_id"] for r in expected]


def test_persistent_408_names_the_servers_message(sim, make_client):
    sim.config.faults.status_408_every, sim.config.faults.retry_after_s = 1, 0
    with pytest.raises(StackOneError, match="last error: HTTP 408: Request timed out.*60-second"):
        walk(make_client(max_attempts=2), closed_hour())


def ids_of(pages) -> set[str]:
    return {r["request_id"] for p in pages for r in p}


def expected_ids(sim, hour) -> set[str]:
    return {r["request_id"] for r in sim.simulator.expected_records(hour, hour + timedelta(hours=1))}


@pytest.mark.parametrize("encoding", ["both", "bracket"])
def test_a_server_honouring_the_bracketed_filter_costs_nothing_extra(sim, make_client, encoding):
    sim.config.filter_encoding = encoding
    hour = closed_hour()
    pages, stats = walk(make_client(), hour)
    assert ids_of(pages) == expected_ids(sim, hour)
    assert stats.filter_encoding == "bracket" and stats.filter_retries == 0
    assert stats.requests == stats.pages == len(request_log(sim))


@pytest.mark.parametrize("reject_unknown", [False, True])
def test_a_flat_only_server_is_detected_on_the_first_page_and_remembered(sim, make_client, reject_unknown):
    """Ignored (200 with the whole retention window) or refused (400 unknown parameter): one wasted
    request, then the flat form; the next walk, by any client of this URL and key, starts flat."""
    sim.config.filter_encoding, sim.config.reject_unknown_params = "flat", reject_unknown
    hour = closed_hour()
    pages, stats = walk(make_client(), hour)
    assert ids_of(pages) == expected_ids(sim, hour)
    assert all(hour <= r_time(r) <= hour + timedelta(hours=1) for p in pages for r in p)  # no foreign page yielded
    assert stats.filter_encoding == "flat" and stats.filter_retries == 1
    assert stats.requests == stats.pages + 1
    assert [s for _, s in request_log(sim)][0] == (400 if reject_unknown else 200)
    before = len(request_log(sim))
    again_pages, again = walk(make_client(), hour - timedelta(hours=1))  # another client, same URL and key
    assert again.filter_encoding == "flat" and again.filter_retries == 0 and again.requests == again.pages
    assert len(request_log(sim)) - before == again.pages
    assert ids_of(again_pages) == expected_ids(sim, hour - timedelta(hours=1))


def r_time(record):
    from stackone_pipeline.stackone.records import parse_timestamp

    return parse_timestamp(record["event_datetime"])


def test_the_memo_follows_the_api_when_it_changes_back(sim, make_client):
    sim.config.filter_encoding = "flat"
    hour = closed_hour()
    assert walk(make_client(), hour)[1].filter_encoding == "flat"
    sim.config.filter_encoding, sim.config.reject_unknown_params = "bracket", True
    pages, stats = walk(make_client(), hour)
    assert stats.filter_encoding == "bracket" and stats.filter_retries == 1 and ids_of(pages) == expected_ids(sim, hour)


def test_the_memo_is_per_base_url_and_key(sim, make_client):
    sim.config.filter_encoding = "flat"
    memo = EncodingMemo()
    walk(make_client(encoding_memo=memo), closed_hour())
    (key,) = memo._known
    assert key[0] == sim.url and DEFAULT_API_KEY not in str(key) and memo.get(key) == "flat"
    assert memo.get((sim.url + "/other", key[1])) is None and memo.get((sim.url, "0" * 16)) is None


@pytest.mark.parametrize("reject_unknown", [False, True])
def test_a_server_honouring_neither_encoding_fails_fast_naming_the_cause(sim, make_client, reject_unknown):
    sim.config.filter_encoding, sim.config.reject_unknown_params = "none", reject_unknown
    with pytest.raises(StackOneFilterError) as err:
        walk(make_client(), closed_hour())
    message = str(err.value)
    both = "in both encodings (filter[start_date]= and start_date=): "
    if reject_unknown:
        assert f"the API refused the filter parameters {both}" in message and "HTTP 400" in message
    else:
        assert f"the API ignored the date filter {both}" in message and "held a record at" in message
    assert "STACKONE_BASE_URL" in message and DEFAULT_API_KEY not in message
    assert len(request_log(sim)) == 2  # one page each, not 90 days of pages (counted at the simulator)


def test_an_ignored_filter_found_after_some_pages_restarts_the_walk_in_the_other_encoding(sim, make_client):
    """Newest first, a window reaching into the future: the unfiltered walk's first pages lie inside
    the window, so the filter is found ignored only later. The walk restarts in the bracketed form
    and yields the window again (the consumer de-duplicates by request_id)."""
    from datetime import datetime, timezone

    sim.config.filter_encoding = "flat"
    client = make_client(page_size=40)
    walk(client, closed_hour())  # learn "flat"
    sim.config.filter_encoding = "bracket"  # the API changed its mind
    start = closed_hour(2)
    end = datetime.now(timezone.utc) + timedelta(hours=1)
    stats = FetchStats()
    pages = list(client.list_logs(filters={"start_date": start, "end_date": end}, order_direction="desc", stats=stats))
    ids = [r["request_id"] for p in pages for r in p]
    expected = {r["request_id"] for r in sim.simulator.expected_records(start, end)}
    assert set(ids) == expected and len(ids) > len(expected)  # some again, none missing, none foreign
    assert stats.filter_encoding == "bracket" and stats.filter_retries == 1


def test_partial_list_records_and_the_full_detail_record(sim, make_client):
    sim.config.list_shape = "partial"
    for ago in range(2, 26):  # the first closed hour with a failed request (an hour may have none)
        records = [r for p in walk(make_client(), closed_hour(ago))[0] for r in p]
        assert records and not any("request" in r or "response" in r or "source_ip" in r for r in records)
        failed = next((r for r in records if r["status"] is not None and r["status"] >= 400), None)
        if failed:
            break
    assert failed, "no failed request in a whole day of simulated traffic"
    detail = make_client().get_log(failed["request_id"], include="step_logs,advanced_logs")
    assert {k: v for k, v in detail.items() if k not in ("request", "response", "source_ip", "step_requests")} == failed
    assert detail["response"]["provider_errors"] and SECRET_MARKER in detail["request"]["headers"]["authorization"]
    assert detail["step_requests"] and "headers" not in detail["step_requests"][0]
