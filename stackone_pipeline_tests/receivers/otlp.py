"""A real OTLP/HTTP logs receiver on 127.0.0.1: the server side of the spec, for tests.

open-telemetry/opentelemetry-proto docs/specification.md: `POST /v1/logs` with a binary
`ExportLogsServiceRequest` (`Content-Type: application/x-protobuf`, 415 otherwise; this receiver
does not speak OTLP/JSON), optional `Content-Encoding: gzip`, a cap on the *decompressed* size
(413), 400 with a `google.rpc.Status` body for bad data, and a protobuf `ExportLogsServiceResponse`
on success. On demand it answers 429 + Retry-After / 5xx, a `partial_success` (it then keeps only
the records it did not reject), or fails every export from the N-th on, until `recover()`; or it
stores an export and then drops the connection without answering (`drop_after_storing`) or
answers too late (`stall_after_storing`): the spec's "Known Limitations / Duplicate Data" case.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

PROTOBUF = "application/x-protobuf"
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE = 3, 8, 14  # google.rpc.Code


def value(v: AnyValue):
    """An OTLP AnyValue -> the plain Python value."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


@dataclass
class Received:
    resource: dict
    scope: str
    scope_version: str
    record: LogRecord

    @property
    def attributes(self) -> dict:
        return {kv.key: value(kv.value) for kv in self.record.attributes}


@dataclass
class Exchange:
    """One HTTP request as the receiver saw it."""

    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival, to compare with an HTTP-date Retry-After
    status: int
    records: int  # log records in the body (0 if it could not be decoded)
    headers: dict
    answered: bool = True  # False: stored, then dropped without an answer (or answered too late)
    stored: list = field(default_factory=list, repr=False)  # the records it carried (all kept on a plain 200)


@dataclass
class _Reply:
    status: int = 200
    retry_after: str | None = None
    rejected: int = 0
    message: str = ""


@dataclass
class OtlpReceiver:
    max_decompressed_bytes: int = 64 * 1024 * 1024  # the spec's recommended default
    records: list[Received] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)  # every decoded body, decompressed
    exports_stored: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._script: deque[_Reply] = deque()
        self._fail_after: int | None = None
        self._fail_status = 500
        self._unanswered_left: int | float = 0
        self._fate, self._stall_s = "reset", 0.0
        self._server: ThreadingHTTPServer | None = None

    # ---- what to answer ---------------------------------------------------
    def answer(self, status: int, *, times: int = 1, retry_after: str | None = None, message: str = "") -> None:
        """The next `times` valid exports get `status` (nothing stored)."""
        self._script.extend(_Reply(status, retry_after, 0, message or f"told to answer {status}") for _ in range(times))

    def partial(self, rejected: int, *, times: int = 1, message: str = "rejected by the test") -> None:
        """The next `times` exports: 200 + partial_success; the first `rejected` records are dropped."""
        self._script.extend(_Reply(200, None, rejected, message) for _ in range(times))

    def fail_from(self, exports: int, status: int = 500) -> None:
        """Once `exports` exports are stored, answer `status` to everything until `recover()`."""
        self._fail_after, self._fail_status = exports, status

    def drop_after_storing(self, times: int | None = 1, *, reset: bool = True) -> None:
        """The next `times` exports that are stored (None: all, until `recover()`) get no answer:
        the connection is reset (or, `reset=False`, closed) once the records are kept."""
        self._unanswered_left = float("inf") if times is None else times
        self._fate = "reset" if reset else "close"

    def stall_after_storing(self, times: int | None = 1, seconds: float = 5.0) -> None:
        """The next `times` exports that are stored (None: all, until `recover()`) are answered
        only after `seconds`: past the client's timeout, it never hears that they landed."""
        self._unanswered_left = float("inf") if times is None else times
        self._fate, self._stall_s = "stall", seconds

    def recover(self) -> None:
        self._fail_after = None
        self._unanswered_left = 0

    # ---- the protocol -----------------------------------------------------
    def handle(self, path: str, headers, raw: bytes) -> tuple[int, bytes, dict, str]:
        """(status, body, extra headers, fate): fate "" answers; "reset"/"close"/"stall" do not."""
        arrived, wall = time.monotonic(), time.time()
        status, body, received, retry_after = self._handle(path, headers, raw)
        with self._lock:
            fate = ""
            if status == 200 and self._unanswered_left > 0:  # stored: now leave it unanswered
                self._unanswered_left -= 1
                fate = self._fate
            h = {k.lower(): v for k, v in headers.items()}
            ex = Exchange(arrived, wall, status, len(received), h, answered=not fate, stored=received)
            self.exchanges.append(ex)
        return status, body, {"Retry-After": retry_after} if retry_after else {}, fate

    def _handle(self, path: str, headers, raw: bytes) -> tuple[int, bytes, list[Received], str | None]:
        if path.split("?")[0] != "/v1/logs":
            return 404, _status(5, f"no such path {path}"), [], None
        if headers.get("content-type", "").split(";")[0].strip().lower() != PROTOBUF:
            return 415, _status(INVALID_ARGUMENT, "only application/x-protobuf is accepted"), [], None
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            try:
                inflater = zlib.decompressobj(wbits=31)
                data = inflater.decompress(raw, self.max_decompressed_bytes + 1)
            except zlib.error as exc:
                return 400, _status(INVALID_ARGUMENT, f"bad gzip: {exc}"), [], None
        elif encoding in ("", "identity"):
            data = raw
        else:
            return 400, _status(INVALID_ARGUMENT, f"unsupported Content-Encoding {encoding}"), [], None
        if len(data) > self.max_decompressed_bytes:
            return 413, _status(RESOURCE_EXHAUSTED, "body too large after decompression"), [], None
        try:
            request = ExportLogsServiceRequest.FromString(data)
        except DecodeError as exc:
            return 400, _status(INVALID_ARGUMENT, f"cannot decode ExportLogsServiceRequest: {exc}"), [], None
        received = list(_flatten(request))
        with self._lock:
            self.payloads.append(data)
            if self._fail_after is not None and self.exports_stored >= self._fail_after:
                return self._fail_status, _status(UNAVAILABLE, "receiver is failing"), received, None
            reply = self._script.popleft() if self._script else _Reply()
            if reply.status != 200:
                return reply.status, _status(UNAVAILABLE, reply.message), received, reply.retry_after
            self.records.extend(received[reply.rejected :])
            self.exports_stored += 1
        response = ExportLogsServiceResponse()
        if reply.rejected:
            response.partial_success.CopyFrom(
                ExportLogsPartialSuccess(rejected_log_records=reply.rejected, error_message=reply.message)
            )
        return 200, response.SerializeToString(), received, None

    # ---- lifecycle ----------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def logs_url(self) -> str:
        return self.url + "/v1/logs"

    def __enter__(self) -> OtlpReceiver:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.receiver = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _flatten(request: ExportLogsServiceRequest):
    for rl in request.resource_logs:
        resource = {kv.key: value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                yield Received(resource, sl.scope.name, sl.scope.version, rec)


def _status(code: int, message: str) -> bytes:
    return Status(code=code, message=message).SerializeToString()


class _Server(ThreadingHTTPServer):
    def __init__(self, *args):
        self.aborted: set[socket.socket] = set()
        super().__init__(*args)

    def shutdown_request(self, request) -> None:
        if request in self.aborted:  # no FIN first: with SO_LINGER 0, close() sends a reset
            self.aborted.discard(request)
            request.close()
            return
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does
    timeout = 30

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        receiver = self.server.receiver
        status, body, extra, fate = receiver.handle(self.path, self.headers, raw)
        if fate in ("reset", "close"):  # the records are kept; not a byte of answer
            self.close_connection = True
            if fate == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.server.aborted.add(self.connection)
            return
        if fate == "stall":
            time.sleep(receiver._stall_s)
            self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", PROTOBUF)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up waiting (a stalled answer)
            self.close_connection = True

    def log_message(self, *args):
        pass
