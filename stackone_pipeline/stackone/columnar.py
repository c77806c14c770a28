"""A list page straight from its JSON bytes to Arrow columns: the fast path of `records.normalise`.

`records.normalise` turns one decoded record (a dict) into one row: exact for every shape the API
may send, and about 15 µs of Python a row. A list page of StackOne's partial records is the same
two dozen scalar keys a thousand times over, so here the page becomes typed Arrow columns in one
go and the normalisation runs column by column. Two ways in, by the body's size:

* a large page (the usual 1,000 records): Arrow's JSON reader parses the bytes in C++. No Python
  object is made (orjson's thousand dicts a page left ~50 MB of freed heap the process kept);
* a small page (page_size 100, say): orjson decodes it and pyarrow converts the records to one
  struct array, which refuses a value of another type. The reader costs ~0.4 ms a call whatever
  the size, twice this path at 100 records.

The result is the batch `to_batch([normalise(r) for r in records])` would give, byte for byte: the
equivalence is property-tested (`test_columnar.py`), and whatever this path cannot promise to do
identically it leaves to the record-by-record path, so `parse_page` answers None for a page with

* a value of another JSON type than the one documented (a number where a string belongs, `true`
  as a duration, 200.0 as a status, ...): `normalise` has its own rules for such values;
* a key in camelCase (the SDK's spelling, or a mix), or another key that is not all lower case;
* `request`, `response` or `step_requests` (full records, `include=step_logs`): nested objects
  that need the redactor's walk;
* anything malformed (truncated, not one object, no `data` list, a record that is not an
  object): the client's checks then say what is wrong.

Per column: strings are taken as they are; timestamps are cast by Arrow where Arrow and Python's
`fromisoformat` agree (values Arrow refuses, or outside the years Python can hold, are parsed by
`records.parse_timestamp`); `http_method` is upper-cased (in Python unless it is ASCII); `url` and
`path` go through the redactor only where they could hold a credential (the characters
`Redactor.url` looks for).
"""

from __future__ import annotations

import io

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .records import _STRING_FIELDS, _TIMESTAMP_FIELDS, COLUMN_NAMES, SCHEMA, epoch_us, parse_timestamp
from .redaction import Redactor

_S = pa.string()
_NESTED = ("request", "response", "step_requests")  # typed null: any object there refuses the page
WIRE_RECORD = pa.struct(
    [(name, _S) for name in _STRING_FIELDS + _TIMESTAMP_FIELDS]
    + [("status", pa.int64()), ("success", pa.bool_()), ("duration", pa.float64()), ("is_worker", pa.bool_())]
    + [(name, pa.null()) for name in _NESTED]
)
_KNOWN = frozenset(WIRE_RECORD.names)
_PAGE = pa.schema([("data", pa.list_(WIRE_RECORD)), ("next", _S)])
_PARSE = pj.ParseOptions(explicit_schema=_PAGE, unexpected_field_behavior="infer")
READER_FROM_BYTES = 256 * 1024  # ~400 records: larger pages go through Arrow's JSON reader
# The JSON types of the numeric columns (None: null or absent), checked before pyarrow converts:
# it would take 200.0 as the status 200 and `true` as the duration 1.0.
_SCALARS = {"status": frozenset({int, type(None)}), "duration": frozenset({int, float, type(None)})}
_TS = SCHEMA.field("event_datetime").type
# Python's datetime holds years 1..9999; Arrow's microseconds hold more. Outside a sane range the
# value is parsed by Python, which decides (an offset that crosses year 1 or 9999 is no time).
_SANE_US = (epoch_us(parse_timestamp("1900-01-01T00:00:00Z")), epoch_us(parse_timestamp("2200-01-01T00:00:00Z")))
_URL_CHARS = r"[?@#;]|eyJ"  # what Redactor.url looks for in a string; without them it returns it unchanged


class Page:
    """One list page parsed by Arrow: its records (a struct array) and its `next` cursor."""

    __slots__ = ("records", "next", "_event_times")

    def __init__(self, records: pa.StructArray, next_cursor: str | None):
        self.records, self.next = records, next_cursor
        self._event_times: pa.TimestampArray | None = None

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def concat(cls, pages: list[Page]) -> Page:
        """Several pages as one (their records in order), so that small pages are normalised
        together: each compute call of the normalisation costs ~15 µs whatever its length, ~0.5 ms
        a call of `normalise_page`, which is 5 µs a row at 100 rows a page."""
        if len(pages) == 1:
            return pages[0]
        out = cls(pa.concat_arrays([p.records for p in pages]), pages[-1].next)
        if all(p._event_times is not None for p in pages):
            out._event_times = pa.concat_arrays([p._event_times for p in pages])
        return out

    def event_times(self) -> pa.TimestampArray:
        """`event_datetime` as UTC timestamps, parsed once (the window check and the
        normalisation both need them)."""
        if self._event_times is None:
            self._event_times = _timestamps(self.records.field("event_datetime"))
        return self._event_times


def parse_page(body: bytes) -> Page | None:
    """The page as Arrow columns, or None when it needs the record-by-record path (module doc)."""
    return _read_page(body) if len(body) > READER_FROM_BYTES else _decode_page(body)


def _read_page(body: bytes) -> Page | None:
    """A large page through Arrow's JSON reader."""
    try:
        table = pj.read_json(
            io.BytesIO(body),
            read_options=pj.ReadOptions(block_size=len(body) + 64, use_threads=False),
            parse_options=_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows != 1:  # several JSON documents in one body, or none
        return None
    data = table.column("data").chunk(0)
    if data.null_count:  # no `data` list
        return None
    records = data.values
    if records.null_count:  # a record that is not an object
        return None
    extra = set(records.type.names) - _KNOWN if isinstance(records, pa.StructArray) else {"?"}
    if any(not name.islower() for name in extra):  # camelCase keys: normalise converts them
        return None
    if extra:  # lower-case keys the schema does not know are ignored, as normalise ignores them
        records = pa.StructArray.from_arrays([records.field(n) for n in WIRE_RECORD.names], fields=list(WIRE_RECORD))
    cursor = table.column("next").chunk(0)[0].as_py()
    return Page(records, cursor or None)


def _decode_page(body: bytes) -> Page | None:
    """A small page through orjson and one pyarrow conversion."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    data, cursor = doc.get("data"), doc.get("next")
    if type(data) is not list or not (cursor is None or type(cursor) is str):
        return None
    if not all(type(r) is dict for r in data):
        return None
    if any(not name.islower() for name in set().union(*data) - _KNOWN):  # camelCase: normalise converts it
        return None  # (lower-case keys the schema does not know are ignored, as normalise ignores them)
    for name, allowed in _SCALARS.items():
        if not {type(r.get(name)) for r in data} <= allowed:
            return None
    try:  # pyarrow refuses any other mismatch: a non-string in a string column, anything but null
        records = pa.array(data, WIRE_RECORD)  # in a nested one; keys it does not know it skips
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return Page(records, cursor or None)


def normalise_page(
    page: Page, redactor: Redactor, hour_us: int | None = None, project: str | None = None
) -> pa.RecordBatch:
    """`to_batch([normalise(r, redactor) | {"hour": hour_us, "project": project} for r in page])`,
    column by column."""
    rec = page.records
    n = len(rec)
    cols: dict[str, pa.Array] = {name: rec.field(name) for name in _STRING_FIELDS}
    for name in _TIMESTAMP_FIELDS:
        cols[name] = page.event_times() if name == "event_datetime" else _timestamps(rec.field(name))
    cols["status"] = rec.field("status").cast(pa.int32())  # overflow raises, as to_batch would
    cols["success"] = rec.field("success")
    cols["duration_ms"] = rec.field("duration")
    cols["is_worker"] = rec.field("is_worker")
    cols["url"] = _redacted_urls(cols["url"], redactor)
    cols["path"] = _redacted_urls(cols["path"], redactor)
    cols["http_method"] = _upper(cols["http_method"])
    nulls = pa.nulls(n, _S)
    for name in _NESTED:
        cols[name] = nulls
    cols["hour"] = pa.nulls(n, _TS) if hour_us is None else pc.fill_null(pa.nulls(n, _TS), pa.scalar(hour_us, _TS))
    cols["project"] = nulls if project is None else pc.fill_null(nulls, pa.scalar(project, _S))
    return pa.RecordBatch.from_arrays([cols[name] for name in COLUMN_NAMES], schema=SCHEMA)


def event_range_us(page: Page) -> tuple[int | None, int | None]:
    """The page's earliest and latest event time, epoch microseconds (None: no time at all)."""
    return _range_us(page.event_times())


def _range_us(ts: pa.TimestampArray) -> tuple[int | None, int | None]:
    """Earliest and latest of `ts` in epoch microseconds: one compute call (each costs ~15 µs
    whatever the length, which at 100 rows a page is most of the work)."""
    bounds = pc.min_max(ts)
    lo, hi = bounds["min"], bounds["max"]
    return (lo.value, hi.value) if lo.is_valid else (None, None)


def _timestamps(values: pa.StringArray) -> pa.TimestampArray:
    try:
        ts = values.cast(_TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _python_timestamps(values)
    lo, hi = _range_us(ts)
    if lo is not None and (lo < _SANE_US[0] or hi > _SANE_US[1]):
        return _python_timestamps(values)
    return ts


def _python_timestamps(values: pa.StringArray) -> pa.TimestampArray:
    return pa.array([epoch_us(parse_timestamp(v)) for v in values.to_pylist()], _TS)


def _redacted_urls(values: pa.StringArray, redactor: Redactor) -> pa.StringArray:
    suspect = pc.match_substring_regex(values, _URL_CHARS)
    if not pc.any(suspect).as_py():
        return values
    out = values.to_pylist()
    for i in pc.indices_nonzero(suspect).to_pylist():
        out[i] = redactor.url(out[i])
    return pa.array(out, _S)


def _upper(values: pa.StringArray) -> pa.StringArray:
    if pc.all(pc.string_is_ascii(values)).as_py() is not False:  # all ASCII (or all null)
        return pc.ascii_upper(values)
    return pa.array([v.upper() if v is not None else None for v in values.to_pylist()], _S)
