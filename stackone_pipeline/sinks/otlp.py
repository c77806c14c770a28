"""OpenTelemetry: OTLP/HTTP protobuf logs (gzip), one LogRecord per request, at its event time.

Records are SDK `ReadableLogRecord`s encoded by the official `encode_logs`, but the SDK's
processor and exporter are not used to send: `BatchLogRecordProcessor` drops the oldest record
when its queue is full, and the released exporter does not retry 429 nor read `partial_success`.
Batching (≤ 512 records per export), retries and the ledger are the shared delivery machinery's;
this module only encodes and reads the answer (open-telemetry/opentelemetry-proto
docs/specification.md): 200 ok, unless `partial_success.rejected_log_records` > 0, which must
not be retried; retry only 429/502/503/504 (honouring Retry-After); 413 split; anything else fails.
An export that got no answer is retried too, and may then be stored twice (the spec's "Duplicate
Data" limitation): the delivery counts such records as `possibly_duplicated`.

Configuration is the SDK's (read by settings.OtlpSettings): `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` as given,
`OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/logs` appended; headers from
`OTEL_EXPORTER_OTLP_LOGS_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, URL-encoded);
`OTEL_SERVICE_NAME` (default "stackone-request-log") over `OTEL_RESOURCE_ATTRIBUTES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

import httpx
import orjson
from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME
from opentelemetry.semconv.attributes.url_attributes import URL_PATH
from opentelemetry.util.re import parse_env_headers

from ..http import Action, Verdict, gzip_bytes, retry_after_seconds
from ..settings import DEFAULT_OTEL_SERVICE_NAME, OtlpSettings
from ..stackone.records import is_error
from .dead_letters import PARTIAL_REASON
from .delivery import Window
from .payload import PROJECT, RECORD

PROJECT_ATTRIBUTE = "stackone.project"  # a resource attribute, for every project but the default one

SCOPE = "stackone_pipeline"
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # the spec's list; every other error is final
PROTOBUF = "application/x-protobuf"


def _scope_version() -> str | None:
    try:
        return version("stackone_pipeline")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return None


def body_of(record: dict) -> str:
    status = record.get("status")
    shown = str(status) if status is not None else ("timeout" if record.get("success") is False else "-")
    return f"{record.get('http_method', '-')} {record.get('path', '-')} {shown}"


def attributes_of(record: dict) -> dict:
    """The guide's names, the semantic-convention names, and the request id; nulls left out."""
    status = record.get("status")
    attrs = {
        "http.status_code": status,
        HTTP_RESPONSE_STATUS_CODE: status,
        "http.method": record.get("http_method"),
        HTTP_REQUEST_METHOD: record.get("http_method"),
        URL_PATH: record.get("path"),
        "stackone.request_id": record.get("request_id"),
        "stackone.provider": record.get("provider"),
        "stackone.account_id": record.get("account_id"),
        "stackone.action": record.get("action"),
        "stackone.service": record.get("service"),
        "stackone.success": record.get("success"),
        "duration_ms": record.get("duration_ms"),
    }
    return {k: v for k, v in attrs.items() if v is not None}


class OtlpSink:
    name = "otlp"
    max_entries = 512  # the SDK's max_export_batch_size: what collectors are tuned for
    max_bytes = 4_000_000  # uncompressed estimate; far below the spec's 64 MiB server cap

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, resource: Mapping | None = None):
        self.url = url
        self.resource = Resource(dict(resource or {SERVICE_NAME: DEFAULT_OTEL_SERVICE_NAME}))
        self.scope = InstrumentationScope(SCOPE, _scope_version())
        # ours last: a configured header must not turn the body into something it is not
        self.headers = {**(headers or {}), "content-type": PROTOBUF, "content-encoding": "gzip"}

    @classmethod
    def from_settings(cls, s: OtlpSettings) -> OtlpSink:
        return cls(s.url, dict(parse_env_headers(s.headers, liberal=True)), s.resource_attributes)

    key_sql = f"coalesce({PROJECT}, '')"  # an export per project: the project is a resource attribute
    time_ordered = False
    # open-telemetry/opentelemetry-proto docs/specification.md, "Known Limitations / Duplicate Data"
    on_resend = "the collector may store them again: OTLP does not deduplicate a resent export"
    drops_repeats = False
    entry_sql = RECORD  # parsed back here: the SDK's encoder wants Python values

    def window(self, now: datetime) -> Window:
        return Window()  # OTLP sets no age limit; the backend behind the collector may

    def request(self, key: str, rows) -> tuple[str, bytes, dict]:
        resource = self.resource.merge(Resource({PROJECT_ATTRIBUTE: key})) if key else self.resource
        logs = [
            self.log(orjson.loads(entry), ns, resource)
            for entry, ns in zip(rows.column("entry").to_pylist(), rows.column("ns").to_pylist())
        ]
        return self.url, gzip_bytes(encode_logs(logs).SerializeToString()), self.headers

    def log(self, record: dict, ns: int, resource: Resource | None = None) -> ReadableLogRecord:
        error = is_error(record.get("status"), record.get("success"))
        log = LogRecord(
            timestamp=ns,  # the event, never now (observed = now)
            severity_number=SeverityNumber.ERROR if error else SeverityNumber.INFO,
            severity_text="ERROR" if error else "INFO",
            body=body_of(record),
            attributes=attributes_of(record),
        )
        return ReadableLogRecord(log, resource or self.resource, self.scope)

    def refused(self, detail: str) -> str:
        return PARTIAL_REASON  # every record of the export refused: the collector's words are the detail

    def classify(self, resp: httpx.Response) -> Verdict:
        code = resp.status_code
        if 200 <= code < 300:
            rejected, message = partial_success(resp)
            if rejected > 0:  # the rest was stored; resending would duplicate it (spec: never retry)
                return Verdict(Action.PARTIAL, f"partial_success: {rejected} rejected: {message}", rejected=rejected)
            return Verdict(Action.OK)
        reason = f"HTTP {code}: {error_message(resp)}"
        if code in RETRY_STATUSES:
            return Verdict(Action.RETRY, reason, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
        if code == 413:
            return Verdict(Action.SPLIT, reason)
        return Verdict(Action.FAIL, reason)


def partial_success(resp: httpx.Response) -> tuple[int, str]:
    """(rejected_log_records, error_message) of an `ExportLogsServiceResponse`, protobuf or JSON."""
    if not resp.content:
        return 0, ""
    try:
        if "json" in resp.headers.get("content-type", ""):
            part = orjson.loads(resp.content).get("partialSuccess") or {}
            return int(part.get("rejectedLogRecords") or 0), str(part.get("errorMessage") or "")
        part = ExportLogsServiceResponse.FromString(resp.content).partial_success
        return part.rejected_log_records, part.error_message
    except (DecodeError, ValueError, AttributeError):
        return 0, ""  # a 2xx we cannot read: the spec's full success carries no information anyway


def error_message(resp: httpx.Response) -> str:
    """The `google.rpc.Status` message of an error answer, else the start of the body."""
    if PROTOBUF in resp.headers.get("content-type", "") and resp.content:
        try:
            return Status.FromString(resp.content).message or "(empty status)"
        except DecodeError:
            pass
    return resp.text[:300]
