"""The columnar fast path gives exactly what the record-by-record path gives, or declines.

For any page: `parse_page` either answers None (the page goes record by record) or a page whose
`normalise_page` batch equals `to_batch([normalise(r) ...])` value for value, with the same
redaction count. Pages are generated with the values the fast path treats specially (timestamps
in every ISO spelling and some that are not times, URLs with and without credentials, methods in
any case and script) and with what must make it decline (camelCase keys, nested objects, values of
another JSON type, malformed bodies)."""

from __future__ import annotations

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackone_pipeline.stackone import columnar
from stackone_pipeline.stackone.columnar import normalise_page
from stackone_pipeline.stackone.records import epoch_us, normalise, parse_timestamp, to_batch
from stackone_pipeline.stackone.redaction import REDACTED, Redactor

HOUR_US = epoch_us(parse_timestamp("2026-12-01T10:00:00Z"))
DIGITS = st.integers


@st.composite
def iso_times(draw):
    """ISO-8601 as the API (and worse) may spell it."""
    y = draw(st.sampled_from([1, 1899, 1970, 2026, 2199, 9999]))
    mo, d = draw(DIGITS(1, 12)), draw(DIGITS(1, 31))
    h, mi, s = draw(DIGITS(0, 24)), draw(DIGITS(0, 59)), draw(DIGITS(0, 60))
    frac = draw(st.sampled_from(["", ".9", ".984", ".123456", ".1234567", ".000984"]))
    zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+02:00", "-05:30", "+0200", "+02", "+24:00", ""]))
    sep = draw(st.sampled_from(["T", "T", " ", "t"]))
    return f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"


times = st.one_of(
    iso_times(), st.none(), st.just(""), st.text(max_size=12), st.sampled_from(["2026-12-06", "2026-12-06T17Z"])
)
urls = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "https://api.stackone.com/unified/hris/employees",
            "https://api.stackone.com/unified/hris/employees?page_size=50&api_key=s3cr3t",
            "https://user:pass@api.example.test/x",
            "/unified/crm/contacts;jsessionid=abc",
            "/x?next=%2Fcb%3Ftoken%3Dabc",
            "https://h/x#access_token=abc",
            "https://h/x/eyJhbGciOi.eyJzdWIiOi.sig",
        ]
    ),
    st.text(max_size=20),
)
methods = st.one_of(st.none(), st.sampled_from(["GET", "get", "Post", "pAtCh", "ß", "ﬁx", "délete", ""]))
strings = st.one_of(st.none(), st.text(max_size=10))


@st.composite
def good_times(draw):
    """Times Arrow's cast takes (so the cast, not the Python fallback, is what is compared)."""
    day = draw(DIGITS(0, 3650))
    us = draw(DIGITS(0, 86_400 * 10**6 - 1))
    frac = draw(st.sampled_from(["", f".{us // 1000 % 1000:03d}", f".{us % 10**6:06d}"]))
    zone = draw(st.sampled_from(["Z", "+00:00", "+02:00", "-05:30", "+0200", "+14:00", "-12:00"]))
    base = parse_timestamp("2020-01-01T00:00:00Z").fromordinal(737425 + day)
    return f"{base:%Y-%m-%d}T{us // 3_600_000_000:02d}:{us // 60_000_000 % 60:02d}:{us // 10**6 % 60:02d}{frac}{zone}"


@st.composite
def records(draw, i: int = 0, times=times):
    rec = {
        "request_id": draw(st.one_of(st.none(), st.just(f"req_{i}"), st.text(max_size=8))),
        "event_datetime": draw(times),
        "start_time": draw(times),
        "end_time": draw(times),
        "provider": draw(strings),
        "account_id": draw(strings),
        "http_method": draw(methods),
        "url": draw(urls),
        "path": draw(urls),
        "status": draw(st.one_of(st.none(), DIGITS(100, 599))),
        "success": draw(st.one_of(st.none(), st.booleans())),
        "duration": draw(st.one_of(st.none(), DIGITS(0, 10**6), st.floats(0, 1e6, allow_nan=False))),
        "is_worker": draw(st.one_of(st.none(), st.booleans())),
        "source_type": draw(strings),
    }
    for key in draw(st.lists(st.sampled_from(list(rec)), max_size=4)):
        rec.pop(key, None)  # any field may be missing
    if draw(st.booleans()):
        rec[draw(st.sampled_from(["extra", "id", "x1"]))] = draw(
            st.one_of(st.text(max_size=5), DIGITS(-(2**62), 2**62))
        )
    return rec


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(times=st.one_of(good_times(), st.none())), max_size=12))
def test_times_arrow_casts_are_the_times_python_parses(raw):
    for parse in PARSERS:
        got = fast(orjson.dumps({"data": raw, "next": None}), parse)
        if got is not None:
            assert got[0].to_pylist() == slow(raw)[0].to_pylist()


def slow(raw: list[dict]) -> tuple[pa.RecordBatch, int]:
    redactor = Redactor()
    rows = [normalise(r, redactor) | {"hour": HOUR_US} for r in raw]
    return to_batch(rows), redactor.count


# parse_page takes a small body through orjson, a large one through Arrow's JSON reader: both ways
# are held to the record-by-record path, whatever the size.
PARSERS = (columnar._decode_page, columnar._read_page)


def fast(body: bytes, parse=columnar.parse_page):
    page = parse(body)
    if page is None:
        return None
    redactor = Redactor()
    return normalise_page(page, redactor, HOUR_US), redactor.count, page.next


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), max_size=12), st.one_of(st.none(), st.just("WzEsMl0")))
def test_a_page_the_fast_path_takes_is_normalised_exactly_as_record_by_record(raw, cursor):
    body = orjson.dumps({"data": raw, "next": cursor})
    for parse in PARSERS:
        got = fast(body, parse)
        if got is None:  # declined: only when an undocumented key holds values of several JSON types
            kinds = {k: {type(r[k]) for r in raw if k in r} for k in ("extra", "id", "x1")}
            assert any(len(t) > 1 for t in kinds.values()), (parse.__name__, raw)
            continue
        batch, count, next_cursor = got
        want, want_count = slow(raw)
        assert batch.schema == want.schema
        assert batch.to_pylist() == want.to_pylist()
        assert count == want_count and next_cursor == cursor


def test_typical_pages_are_taken_by_the_fast_path():
    raw = [
        {
            "request_id": f"req_{i}",
            "event_datetime": "2026-12-01T10:59:59.984Z",
            "start_time": "2026-12-01T10:59:59.876+02:00",
            "end_time": None,
            "provider": "bamboohr",
            "http_method": "get",
            "url": "https://api.stackone.com/unified/hris/employees?api_key=s3cr3t" if i == 1 else "https://h/x",
            "path": "/unified/hris/employees",
            "status": 200,
            "success": True,
            "duration": 108,
            "is_worker": False,
            "new_field": "the API added one",
        }
        for i in range(3)
    ]
    for parse in PARSERS:
        batch, count, _ = fast(orjson.dumps({"data": raw, "next": None}), parse)
        assert batch.to_pylist() == slow(raw)[0].to_pylist()
    batch, count, _ = fast(orjson.dumps({"data": raw, "next": None}))
    assert batch.column("url").to_pylist()[1] == f"https://api.stackone.com/unified/hris/employees?api_key={REDACTED}"
    assert count == 1 and batch.column("http_method").to_pylist() == ["GET"] * 3
    assert batch.to_pylist() == slow(raw)[0].to_pylist()


def test_what_the_fast_path_cannot_promise_goes_record_by_record():
    base = {"request_id": "r", "event_datetime": "2026-12-01T10:00:00Z"}
    declined = [
        {**base, "eventDatetime": "2026-12-01T10:00:00Z"},  # camelCase, alone or mixed
        {"requestId": "r", "eventDatetime": "2026-12-01T10:00:00Z"},
        {**base, "request": {"headers": {"authorization": "Bearer x"}}},  # nested objects
        {**base, "response": {"status_code": 200}},
        {**base, "step_requests": [{"url": "https://h/x?token=y"}]},
        {**base, "duration": True},  # another JSON type than documented
        {**base, "status": "200"},
        {**base, "status": 200.5},
        {**base, "status": 200.0},  # pyarrow alone would take it as 200
        {**base, "is_worker": 0},
        {**base, "provider": 5},
        {**base, "provider": {"token": "x"}},
        {**base, "event_datetime": 1764583200000},
        {**base, "success": "true"},
    ]
    for rec in declined:
        for parse in PARSERS:
            assert fast(orjson.dumps({"data": [rec], "next": None}), parse) is None, (parse.__name__, rec)
    for body in (
        b'{"data":[{"request_id":"x"}]',
        b'{"next":null}',
        b'{"data":"oops","next":12}',
        b"[1]",
        b'{"data":[null],"next":null}',
        b'{"data":[["r"]],"next":null}',
    ):
        for parse in PARSERS:
            assert fast(body, parse) is None, (parse.__name__, body)
    for parse in PARSERS:
        assert fast(b'{"data":[],"next":null}\n{"data":[{"request_id":"x"}],"next":null}', parse) is None
        assert (
            fast(orjson.dumps({"data": [{**base, "request": None}], "next": None}), parse) is not None
        )  # null is fine


def test_parse_page_takes_large_pages_through_the_reader_and_small_ones_through_orjson(monkeypatch):
    taken = []
    monkeypatch.setattr(columnar, "_read_page", lambda body: taken.append("reader"))
    monkeypatch.setattr(columnar, "_decode_page", lambda body: taken.append("orjson"))
    columnar.parse_page(b"x" * columnar.READER_FROM_BYTES)
    columnar.parse_page(b"x" * (columnar.READER_FROM_BYTES + 1))
    assert taken == ["orjson", "reader"]
