"""Late arrivals into a stock Loki (max_chunk_age 2h, reject_old_samples_max_age 168h, no
server-side time sharding): the hostile run of the issue, against the local receiver.

Four hours are ingested with a share of each hour hidden from the first walk (StackOne
recording logs late), delivered oldest first, then ingested and delivered again as the lookback
does. A Loki stream refuses an entry older than its newest entry minus 1 h (`too_far_behind`), so
without the late shard the late rows of every hour but the newest never reach Loki.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest

from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.sinks.delivery import deliver_hour, stored_rows
from stackone_pipeline.sinks.ledger import Ledger
from stackone_pipeline.sinks.loki import LATE_LABEL, after_hour
from stackone_pipeline.sinks.registry import BY_NAME

from .conftest import closed_hour
from .receivers.loki import LokiReceiver

TENANT = "team-a"
HOURS = 4


@pytest.fixture
def loki():
    with LokiReceiver() as receiver:  # Loki 3's default limits
        yield receiver


def sink_for(receiver, **env):
    return BY_NAME["loki"].from_env({"LOKI_URL": receiver.url, "LOKI_TENANT_ID": TENANT, **env})


def in_loki(receiver) -> Counter:
    """request_id -> how many entries Loki holds for it (after its own de-duplication)."""
    return Counter(orjson.loads(e.line)["request_id"] for e in receiver.entries())


def hostile_run(sim, make_client, storage, loki, transport, sink, late_order=None) -> dict:
    sim.config.faults.late_fraction = 0.1
    hours = [closed_hour(h) for h in range(HOURS + 1, 1, -1)]  # oldest first
    first, late, meta = [], [], []
    for hour in hours:  # the hourly runs (or a backfill, oldest first)
        ingest_hour(make_client(), storage, hour)
        first.append(deliver_hour(sink, storage, hour, transport))
        meta.append(after_hour(sink, storage, hour, transport))
    for hour in late_order(hours) if late_order else hours:  # the lookback: the late rows are found now
        ingest_hour(make_client(), storage, hour)
        late.append(deliver_hour(sink, storage, hour, transport))
        meta.append(after_hour(sink, storage, hour, transport))
    stored = Counter(r["request_id"] for hour in hours for r in stored_rows(storage, hour))
    held = in_loki(loki)
    return {
        "hours": hours,
        "first": first,
        "late": late,
        "meta": meta,
        "records": sum(stored.values()),
        "late_arrivals": sum(r.sent for r in late),
        "missing": sum(1 for rid in stored if rid not in held),
        "duplicated": sum(n - 1 for n in held.values() if n > 1),
        "streams": {tuple(sorted(e.labels.items())) for e in loki.entries()},
        "too_far_behind": sum(r.rejected for r in first + late),
    }


def test_without_the_late_shard_stock_loki_refuses_the_late_rows_as_too_far_behind(
    sim, make_client, storage, loki, transport
):
    """The behaviour before the late shard (`late_shard=False`): the measurement to beat."""
    sink = sink_for(loki)
    sink.late_shard = False
    run = hostile_run(sim, make_client, storage, loki, transport, sink)
    print(
        f"\nwithout late_shard: {run['records']} records, {run['late_arrivals']} late arrivals, "
        f"{run['missing']} missing, {run['duplicated']} duplicated, {len(run['streams'])} streams"
    )
    assert run["records"] == 300 * HOURS and run["late_arrivals"] > 0
    assert run["missing"] > 0 and run["missing"] == run["too_far_behind"]
    assert all("too far behind" in why for r in run["late"] for why in r.rejected_reasons)
    assert not any(LATE_LABEL in dict(s) for s in run["streams"])


@pytest.mark.parametrize("late_order", [None, reversed], ids=["oldest-first", "newest-first"])
def test_late_arrivals_land_in_a_stock_loki_exactly_once_in_a_bounded_late_shard(
    sim, make_client, storage, loki, transport, late_order
):
    sink = sink_for(loki)
    run = hostile_run(sim, make_client, storage, loki, transport, sink, late_order)
    providers = {dict(s)["provider"] for s in run["streams"]}
    shards = {s for s in run["streams"] if LATE_LABEL in dict(s)}
    print(
        f"\nwith late_shard ({'newest' if late_order else 'oldest'} first): {run['records']} records, "
        f"{run['late_arrivals']} late arrivals, {run['missing']} missing, {run['duplicated']} duplicated, "
        f"{len(run['streams'])} streams ({len(providers)} plain, {len(shards)} late_shard), "
        f"late_shard values {sorted({dict(s)[LATE_LABEL] for s in shards})}"
    )
    assert run["records"] == 300 * HOURS and run["late_arrivals"] > 0
    assert run["missing"] == 0 and run["duplicated"] == 0 and run["too_far_behind"] == 0
    assert all(r.rejected == 0 and r.accepted == r.sent for r in run["first"] + run["late"])
    # Bounded: the plain streams (one per provider), plus at most one per (provider, late hour).
    plain = {s for s in run["streams"] if LATE_LABEL not in dict(s)}
    assert {dict(s)["provider"] for s in plain} == providers and len(plain) == len(providers)
    hour_values = {f"{h:%Y-%m-%dT%H}" for h in run["hours"]}
    assert {dict(s)[LATE_LABEL] for s in shards} <= hour_values
    assert len(shards) <= len(providers) * HOURS
    assert {k for s in run["streams"] for k, _ in s} <= {"env", "provider", "service_name", LATE_LABEL}
    # Every entry sits in its own hour's shard, and the first deliveries in the plain streams.
    for e in loki.entries():
        if LATE_LABEL in e.labels:
            assert e.labels[LATE_LABEL] == f"{_hour_of(e.ts):%Y-%m-%dT%H}"
    # The metadata of each delivery reports the streams it pushed to.
    firsts, lates = run["meta"][:HOURS], run["meta"][HOURS:]
    assert all(m["late_shard_streams"] == 0 and m["streams"] >= 1 for m in firsts)
    assert all(m["late_shard_streams"] == m["streams"] and "," not in m["late_shard_hours"] for m in lates)
    assert sum(m["late_shard_streams"] for m in lates) == len(shards)
    # Queries by service_name, env and provider still select every record.
    selected = [
        e for e in loki.entries() if e.labels["service_name"] == "stackone-requests" and e.labels["env"] == "prod"
    ]
    assert len(selected) == run["records"]
    # The lookback again, nothing new: nothing sent; a late row sent again lands in the same stream.
    for hour in run["hours"]:
        assert deliver_hour(sink, storage, hour, transport).sent == 0


def test_a_late_row_resent_goes_to_the_same_shard_stream_and_collapses(sim, make_client, storage, loki, transport):
    """Dedup needs the same stream: a late batch resent (e.g. after a kill before the ledger
    recorded it) is pushed to the same `late_shard` stream, so Loki drops the exact repeat."""
    sim.config.faults.late_fraction = 0.2
    hour = closed_hour(3)
    sink = sink_for(loki)
    ingest_hour(make_client(), storage, hour)
    deliver_hour(sink, storage, hour, transport)
    ingest_hour(make_client(), storage, closed_hour(2))
    deliver_hour(sink, storage, closed_hour(2), transport)  # the plain streams move on
    ingest_hour(make_client(), storage, hour)
    before = Ledger(storage).outcomes("loki", hour)
    late = deliver_hour(sink, storage, hour, transport)
    assert late.sent == late.accepted > 0
    ledger = Ledger(storage)
    late_ids = [k for k in ledger.outcomes("loki", hour) if k not in before]
    # Forget the late rows only (as if the run was killed after the push, before the journal).
    with storage.state.writer() as con:
        con.execute("DELETE FROM delivery_ledger WHERE sink = 'loki' AND request_id IN (SELECT unnest(?))", [late_ids])
    dups = loki.duplicates
    again = deliver_hour(sink, storage, hour, transport)
    assert again.sent == again.accepted == len(late_ids)
    assert loki.duplicates - dups == len(late_ids)  # the same stream, so Loki collapsed them
    assert all(n == 1 for n in in_loki(loki).values())


def _hour_of(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def test_the_receiver_refuses_exactly_what_loki_3_refuses_per_stream(loki):
    """stream.go: refused iff highestTs - max_chunk_age/2 is after the entry (strictly), per
    tenant and label set; the push's own earlier entries count."""
    newest = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    t = int(newest.timestamp()) * 10**9
    hour = 3600 * 10**9

    def push(labels, *stamps, tenant=TENANT):
        body = {"streams": [{"stream": labels, "values": [[str(ts), f"line {ts}"] for ts in stamps]}]}
        headers = {"Content-Type": "application/json", "X-Scope-OrgID": tenant}
        return httpx.post(loki.url + "/loki/api/v1/push", content=orjson.dumps(body), headers=headers)

    plain = {"env": "prod", "provider": "p", "service_name": "s"}
    assert push(plain, t).status_code == 204
    assert push(plain, t - hour).status_code == 204  # exactly newest - 1 h: accepted
    refused = push(plain, t - hour - 1)  # one nanosecond more: too far behind
    assert refused.status_code == 400 and "entry too far behind" in refused.text
    assert "total ignored: 1 out of 1" in refused.text
    within = push(plain, t + hour, t - 1)  # the push's first entry moves the stream on
    assert within.status_code == 400 and "total ignored: 1 out of 2" in within.text
    assert push({**plain, LATE_LABEL: "x"}, t - hour - 1).status_code == 204  # another label set
    assert push(plain, t - hour - 1, tenant="team-b").status_code == 204  # another tenant


def test_an_hour_older_than_one_loki_already_took_goes_to_its_own_stream(sim, make_client, storage, loki, transport):
    """A backfill behind the schedule (or a chunk of a parallel backfill behind another): the
    newer hour is delivered first, then the older one's first delivery. Into the plain stream,
    stock Loki would refuse all of it as too far behind."""
    sink = sink_for(loki)
    old, new = closed_hour(5), closed_hour(2)
    for hour in (new, old):
        ingest_hour(make_client(), storage, hour)
    first = deliver_hour(sink, storage, new, transport)
    second = deliver_hour(sink, storage, old, transport)
    assert first.rejected == second.rejected == 0
    held = in_loki(loki)
    stored = {r["request_id"] for hour in (old, new) for r in stored_rows(storage, hour)}
    assert set(held) == stored and max(held.values()) == 1
    shards = {e.labels.get(LATE_LABEL) for e in loki.entries() if orjson.loads(e.line)["request_id"] in held}
    assert f"{old:%Y-%m-%dT%H}" in shards  # the older hour in its own stream
    assert f"{new:%Y-%m-%dT%H}" not in shards  # the newest in the plain stream, as before


def test_parallel_deliveries_of_loki_take_turns_so_no_stream_is_left_behind(sim, make_client, storage, loki, transport):
    """Two runs (threads here; processes and machines alike: the lock is the storage's) deliver an
    old and a new hour at the same moment, many times over: none of Loki's refusals."""
    import threading

    from stackone_pipeline.storage import Storage

    hours = [closed_hour(h) for h in (9, 7, 5, 3)]
    for hour in hours:
        ingest_hour(make_client(), storage, hour)
    reports, errors = [], []

    def deliver(hour):
        try:  # a Storage of its own, as another process would have
            reports.append(deliver_hour(sink_for(loki), Storage(storage.root, lock_timeout_s=30), hour, transport))
        except Exception as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(h,)) for h in reversed(hours)]  # newest first
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.rejected for r in reports) == 0
    held = in_loki(loki)
    stored = {r["request_id"] for hour in hours for r in stored_rows(storage, hour)}
    assert set(held) == stored and max(held.values()) == 1
