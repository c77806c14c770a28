"""Prometheus: the guide's dashboard metrics, remote-written at the events' real times.

What is written is described in `prometheus_series.py`; the wire format in `remote_write.py`.

Late arrivals. Prometheus cannot overwrite a sample (a different value at an existing timestamp
is rejected in order, silently dropped out of order), and 2.x cannot delete out-of-order
samples still in its head: delete_series answers 204 and they stay (prometheus/prometheus#11790,
checked on 2.42). Every backfilled hour is out of order once newer data exists, so "delete the
hour, write it again" cannot work. Instead a re-delivered hour sends only the events no earlier
delivery counted, as a *revision*: the same series plus `revision="<n>"`. Queries that sum over
series (all of the guide's and the dashboards' do) then see the hour's true totals.

The delivery ledger holds, per hour, the request_ids each revision counted and a `revision:<n>`
marker. A revision's ids are recorded as pending before its first batch and each accepted batch
is recorded, so a run that dies mid-hour is resumed with exactly the same series and only the
batches that had not landed; an hour with nothing new sends nothing.

`force=True` deletes the hour through the admin API, checks that it is really gone, and writes
it again from scratch (fails, without writing, when Prometheus kept out-of-order samples).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from ..http import Action, Classifier, Transport, Verdict, retry_after_seconds
from ..projects import DEFAULT_PROJECT
from ..settings import PrometheusSettings
from ..storage import Storage
from .delivery import DeliveryError, stored_rows
from .ledger import Ledger
from .prometheus_series import DURATION, HOUR_MS, REQUESTS, HourSeries, Labels, Samples
from .remote_write import HEADERS, classify, compress, encode_series

REVISION, BATCH = "revision:", "batch:"
NAMES = (REQUESTS, f"{DURATION}_bucket", f"{DURATION}_sum", f"{DURATION}_count")
SERIES_MATCH = '{__name__=~"' + "|".join(NAMES) + '"}'


@dataclass
class PrometheusSink:
    write_url: str  # .../api/v1/write (needs --web.enable-remote-write-receiver)
    api_url: str  # query and admin API base, for force=True
    auth: tuple[str, str] | None = None
    name: str = "prometheus"
    step_s: int = 60
    max_samples: int = 5_000  # per request: a failing request is rolled back whole

    @classmethod
    def from_settings(cls, s: PrometheusSettings) -> PrometheusSink:
        auth = (s.username, s.password) if s.username else None
        return cls(s.write_url, s.api_url or api_base(s.write_url), auth)

    def headers(self) -> dict:
        if not self.auth:
            return dict(HEADERS)
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {**HEADERS, "Authorization": f"Basic {token}"}


def api_base(write_url: str) -> str:
    base = write_url.rstrip("/")
    return base[: -len("/api/v1/write")] if base.endswith("/api/v1/write") else base


@dataclass
class PrometheusReport:
    sink: str
    hour: datetime
    rows: int = 0  # rows counted by this run
    already_delivered: int = 0
    skipped: int = 0
    revision: int | None = None  # the revision this run wrote, if any
    series: int = 0
    samples: int = 0
    batches: int = 0
    batches_resumed: int = 0  # batches of an interrupted run that had landed and were not resent
    retries: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def metadata(self) -> dict:
        meta = {k: v for k, v in asdict(self).items() if k not in ("sink", "hour") and v is not None}
        meta["seconds"] = round(self.seconds, 3)
        return meta


def deliver_hour(sink: PrometheusSink, storage: Storage, hour: datetime, transport: Transport, **kw):
    """One hour's series; exclusive per hour across runs, like every sink's delivery."""
    with storage.explained(), storage.hour_lock(f"deliver-{sink.name}", hour):
        return _deliver_hour(sink, storage, hour, transport, **kw)


def _deliver_hour(
    sink: PrometheusSink, storage: Storage, hour: datetime, transport: Transport, *, force: bool = False
) -> PrometheusReport:
    started = time.perf_counter()
    report = PrometheusReport(sink.name, hour)
    ledger, pending_name = Ledger(storage), f"{sink.name}/pending"
    try:
        if force:
            clear_hour(sink, transport, hour)
            ledger.forget(sink.name, hour)
            ledger.forget(pending_name, hour)
        done = ledger.delivered(sink.name, hour)
        pending = ledger.delivered(pending_name, hour)
        marker = next((p for p in pending if p.startswith(REVISION)), None)
        if marker is not None and marker not in done:  # an interrupted revision: finish it first
            rev = int(marker[len(REVISION) :])
            ids = {p for p in pending if not p.startswith((REVISION, BATCH))}
            series = _aggregate(storage, hour, sink.step_s, lambda rid: rid in ids if rid else rev == 0, report)
            _send(sink, transport, ledger, hour, rev, series, pending, report)
            ledger.record(sink.name, hour, sorted(ids) + [marker])
            done |= ids | {marker}
        if pending:
            ledger.forget(pending_name, hour)
        rev = sum(1 for d in done if d.startswith(REVISION))
        new_ids: list[str] = []

        def new(rid):  # rows without an id can only be told apart by the first revision
            if rid is None:
                return rev == 0
            if rid in done:
                report.already_delivered += 1
                return False
            new_ids.append(rid)
            return True

        series = _aggregate(storage, hour, sink.step_s, new, report)
        if series.rows:
            marker = f"{REVISION}{rev}"
            ledger.record(pending_name, hour, new_ids + [marker])
            _send(sink, transport, ledger, hour, rev, series, set(), report)
            ledger.record(sink.name, hour, new_ids + [marker])
            ledger.forget(pending_name, hour)
    finally:
        report.seconds = time.perf_counter() - started
    return report


def _aggregate(storage, hour, step_s, wanted: Callable[[str | None], bool], report) -> HourSeries:
    series = HourSeries(hour, step_s)
    for row in stored_rows(
        storage, hour, ["request_id", "event_datetime", "provider", "status", "success", "duration_ms"]
    ):
        if wanted(row.get("request_id")):
            if series.add(row):
                report.skipped += 1
    report.rows += series.rows
    return series


def _batches(series: HourSeries, extra: Labels, max_samples: int):
    """Whole series per request, ≤ max_samples each (a series alone may exceed it)."""
    batch: list[tuple[Labels, Samples]] = []
    size = 0
    for labels, samples in series.series(extra):
        if batch and size + len(samples) > max_samples:
            yield batch
            batch, size = [], 0
        batch.append((labels, samples))
        size += len(samples)
    if batch:
        yield batch


def _send(sink, transport, ledger, hour, rev, series: HourSeries, landed: set, report) -> None:
    report.revision = rev
    extra = (("revision", str(rev)),) if rev else ()
    project = ledger.storage.project
    if project != DEFAULT_PROJECT:  # another project than the default one: its own series
        extra = (("project", project), *extra)
    for i, batch in enumerate(_batches(series, extra, sink.max_samples)):
        mark = f"{BATCH}{rev}:{i}"
        if mark in landed:
            report.batches_resumed += 1
            continue
        body = compress(b"".join(encode_series(labels, samples) for labels, samples in batch))
        sent = transport.post(sink.write_url, body, sink.headers(), classify)
        report.batches += 1
        report.retries += sent.attempts - 1
        report.bytes += sent.bytes_sent
        if sent.verdict.action is not Action.OK:
            raise DeliveryError(
                f"{sink.name}: {hour:%Y-%m-%d %H}:00 UTC stopped at batch {i} of revision {rev}: "
                f"{sent.verdict.reason}. A later run resends only what had not landed."
            )
        report.series += len(batch)
        report.samples += sum(len(s) for _, s in batch)
        ledger.record(f"{sink.name}/pending", hour, [mark])


def _rfc3339(ms: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def _api_classifier(ok: int) -> Classifier:
    """Query and admin calls get the write path's retries: 429 and 5xx again, anything else is final."""

    def classify(resp) -> Verdict:
        if resp.status_code == ok:
            return Verdict(Action.OK)
        reason = f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.status_code == 429 or resp.status_code >= 500:
            return Verdict(Action.RETRY, reason, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
        return Verdict(Action.FAIL, reason)

    return classify


def _why(sent) -> str:
    """The last answer in the words the errors always used, plus how many tries it took."""
    return sent.last_reason + (f"; gave up after {sent.attempts} attempts" if sent.gave_up else "")


def _samples_in(sink: PrometheusSink, transport: Transport, end: str, headers: dict) -> float:
    total = 0.0
    for name in NAMES:  # one name at a time: count_over_time drops __name__, _sum and _count would collide
        query = {"query": f"sum(count_over_time({name}[{HOUR_MS - 1}ms]))", "time": end}
        sent = transport.get(f"{sink.api_url}/api/v1/query", _api_classifier(200), params=query, headers=headers)
        if sent.verdict.action is not Action.OK:
            raise DeliveryError(f"{sink.name}: query API answered {_why(sent)}")
        total += sum(float(r["value"][1]) for r in sent.response.json()["data"]["result"])
    return total


def clear_hour(sink: PrometheusSink, transport: Transport, hour: datetime) -> None:
    """Delete the hour's samples (hh:00:00.001 .. next hh:00:00) and check they are gone."""
    start = HourSeries(hour).start_ms
    window = {"start": _rfc3339(start + 1), "end": _rfc3339(start + HOUR_MS)}
    auth = sink.headers().get("Authorization")
    headers = {"Authorization": auth} if auth else {}
    before = _samples_in(sink, transport, window["end"], headers)
    url, params = f"{sink.api_url}/api/v1/admin/tsdb/delete_series", {"match[]": SERIES_MATCH, **window}
    sent = transport.send("POST", url, _api_classifier(204), params=params, headers=headers)
    if sent.verdict.action is not Action.OK:
        raise DeliveryError(
            f"{sink.name}: cannot delete {hour:%Y-%m-%d %H}:00 UTC for a forced resend ({_why(sent)}); "
            "start Prometheus with --web.enable-admin-api and set PROMETHEUS_URL"
        )
    left = _samples_in(sink, transport, window["end"], headers)
    if left:
        state = (
            "The hour is unchanged"
            if left == before
            else (f"{before - left:.0f} samples were deleted: the hour is incomplete until a forced resend succeeds")
        )
        raise DeliveryError(
            f"{sink.name}: Prometheus still holds {left:.0f} samples of {hour:%Y-%m-%d %H}:00 UTC after deleting "
            "them: it cannot delete out-of-order samples still in its head (prometheus/prometheus#11790). "
            f"Nothing was resent. {state}. Force again after its next head compaction (every 2 h while newer "
            "data arrives), or deliver without force: new rows are added as a revision."
        )
