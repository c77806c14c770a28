"""What a sink may see of a stored row, as SQL that DuckDB evaluates over the hour's Parquet file.

The lake already holds redacted rows. Before anything leaves the machine, headers are cut down
to an allowlist (a header nobody thought of cannot leak) and bodies are dropped, whatever the
ingestion settings were.

The record a sink sees is JSON text built by DuckDB: keys sorted, nulls left out, so one row
always gives the same bytes (Loki collapses a resend). Building it column-wise in the engine
instead of as a Python dict per row is what lets one core deliver tens of thousands of rows a
second. Each sink writes its entry as a SQL expression over the stored row's columns and
`PARSED`'s, reusing `RECORD`, `record_json`, `json_object`, `IS_ERROR` and `EVENT_TIME`.
"""

from __future__ import annotations

from ..stackone.records import COLUMN_NAMES, IS_ERROR_SQL

# Header names are stored lower-cased (stackone/redaction.py), so the allowlists match exactly.
REQUEST_HEADERS = (
    "accept",
    "accept-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "x-account-id",
    "x-request-id",
)
RESPONSE_HEADERS = (
    "cache-control",
    "content-length",
    "content-type",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-request-id",
)
# Every scalar column of the stored row (records.py's schema): times and JSON are handled below.
SCALARS = tuple(
    n
    for n in COLUMN_NAMES
    if n not in ("hour", "event_datetime", "start_time", "end_time", "request", "response", "step_requests")
)
# One parse of each JSON column: its allowlisted headers (and, for the response, provider_errors).
_REQUEST_PATHS = "[" + ", ".join(f"'$.headers.\"{h}\"'" for h in REQUEST_HEADERS) + "]"
_RESPONSE_PATHS = "[" + ", ".join(f"'$.headers.\"{h}\"'" for h in RESPONSE_HEADERS) + ", '$.provider_errors']"
_ERRORS = f"r[{len(RESPONSE_HEADERS) + 1}]"

MAX_PROVIDER_ERRORS = 5  # per entry: a provider that failed a hundred times is not a hundred errors long
IS_ERROR = IS_ERROR_SQL  # the pipeline's one definition of an error (stackone/records.py)
EVENT_TIME = "strftime(event_datetime, '%Y-%m-%dT%H:%M:%S.%gZ')"
# The row's project as a sink label or tag, null for the default one: a single-key setup's streams,
# tags and series stay as they were; with several projects each entry says which it is from.
PROJECT = "nullif(project, 'default')"  # ISO, milliseconds (session in UTC)


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _quoted(key: str) -> str:
    return f'"{key}":'


def json_object(fields: dict[str, str]) -> str:
    """SQL for a JSON object of `fields` (key -> SQL giving JSON text), in the given order;
    a field whose value is NULL is left out (concat_ws skips NULLs)."""
    parts = ", ".join(f"{sql_str(_quoted(key))} || {value}" for key, value in fields.items())
    return f"('{{' || concat_ws(',', {parts}) || '}}')"


def _headers(parsed: str, names: tuple[str, ...]) -> str:
    return json_object({h: f"{parsed}[{i + 1}]" for i, h in enumerate(names)})


_FIELDS = {
    **{k: f"to_json({k})" for k in SCALARS},
    "event_datetime": f"to_json({EVENT_TIME})",
    "request_headers": f"CASE WHEN request IS NOT NULL THEN {_headers('q', REQUEST_HEADERS)} END",
    "response_headers": f"CASE WHEN response IS NOT NULL THEN {_headers('r', RESPONSE_HEADERS)} END",
    # status and url of the first provider errors (bounded); their headers and bodies never leave
    "provider_errors": (
        f"CASE WHEN json_array_length({_ERRORS}) > 0 THEN to_json(list_transform("
        f"CAST({_ERRORS} AS JSON[])[1:{MAX_PROVIDER_ERRORS}], "
        "lambda e: json_object('status', e->'status', 'url', left(e->>'url', 512)))) END"
    ),
}
KEYS = tuple(sorted(_FIELDS))


def record_json(exclude: frozenset[str] = frozenset()) -> str:
    """SQL for the sendable record as JSON text, keys sorted, without the `exclude` keys."""
    return json_object({k: _FIELDS[k] for k in KEYS if k not in exclude})


RECORD = record_json()


# The columns `_FIELDS` read besides the scalars: select them next to the stored row's columns.
PARSED = f"json_extract(request, {_REQUEST_PATHS}) AS q, json_extract(response, {_RESPONSE_PATHS}) AS r"
