"""API -> lake -> warehouse for whole hours, against the simulator over HTTP."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import orjson
import pyarrow.parquet as pq

from stackone_pipeline.ingest import RedactionSettings, ingest_hour, ingest_hours
from stackone_pipeline.simulator import PII_MARKER, SECRET_MARKER
from stackone_pipeline.stackone.records import normalise
from stackone_pipeline.stackone.redaction import Redactor
from stackone_pipeline.storage import Storage

from .conftest import closed_hour

H = timedelta(hours=1)


def table(storage, hour=None) -> list[tuple]:
    with storage.warehouse.reader() as con:
        where = "WHERE hour = ?" if hour else ""
        return con.execute(f"SELECT * FROM request_logs {where} ORDER BY request_id", [hour] if hour else []).fetchall()


def expected_ids(sim, hour) -> list[str]:
    return sorted(r["request_id"] for r in sim.simulator.expected_records(hour, hour + H))


def test_an_hour_lands_whole_once_despite_boundaries_and_repeats(sim, make_client, storage):
    sim.config.faults.boundary_records = True
    sim.config.faults.repeat_across_pages = True
    hour = closed_hour()
    res = ingest_hour(make_client(page_size=50), storage, hour)
    ids = [r[1] for r in table(storage, hour)]
    assert ids == expected_ids(sim, hour)  # exact: nothing lost, nothing duplicated
    assert res.rows == len(ids) and res.duplicates_dropped >= res.pages - 1 > 0
    assert res.clipped_outside_hour == 1  # the next hour's 00:00:00.000 record (end_date is inclusive)
    assert pq.read_table(storage.lake.hour_file("request_logs", hour)).num_rows == len(ids)
    with storage.warehouse.reader() as con:  # the boundary record of the next hour was not stored anywhere
        assert con.execute("SELECT count(*) FROM request_logs WHERE event_datetime >= ?", [hour + H]).fetchone() == (0,)


def test_rerunning_an_hour_gives_identical_rows(sim, make_client, storage):
    hour = closed_hour(3)
    ingest_hours(make_client(), storage, [hour, hour + H])
    before, files = table(storage), sorted((storage.data_dir / "lake").rglob("*"))
    ingest_hour(make_client(), storage, hour)
    assert table(storage) == before and len(before) == 600
    assert sorted((storage.data_dir / "lake").rglob("*")) == files
    assert len(list((storage.data_dir / "lake").rglob("*.parquet"))) == 2


def test_late_arrivals_are_picked_up_by_a_rerun(sim, make_client, storage):
    sim.config.faults.late_fraction = 0.2
    hour = closed_hour()
    first = ingest_hour(make_client(), storage, hour)
    second = ingest_hour(make_client(), storage, hour)
    assert first.rows < second.rows == len(expected_ids(sim, hour))
    assert [r[1] for r in table(storage, hour)] == expected_ids(sim, hour)


def test_camel_case_and_offsets_load_exactly_like_snake_case_utc(sim, make_client, tmp_path):
    hour = closed_hour()
    snake = Storage(tmp_path / "snake")
    ingest_hour(make_client(), snake, hour)
    sim.config.faults.camel_case = True
    sim.config.faults.non_utc_offsets = True
    camel = Storage(tmp_path / "camel")
    ingest_hour(make_client(), camel, hour)
    a, b = table(snake), table(camel)
    assert len(a) > 100 and a == b


def _all_text(data_dir) -> str:
    """Every byte on disk, plus the decompressed contents of every Parquet file and table."""
    chunks = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            chunks.append(str(pq.read_table(path).to_pylist()))
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    chunks.append(str(con.execute("SELECT * FROM request_logs").fetchall()))
    con.close()
    return "\n".join(chunks)


def test_no_secret_or_body_reaches_the_disk(sim, make_client, storage):
    sim.config.list_shape = "full"  # the guide's records, with logged headers and bodies
    hour = closed_hour()
    served = sim.simulator.expected_records(hour, hour + H)
    assert SECRET_MARKER in str(served) and PII_MARKER in str(served)  # the simulator does send them
    res = ingest_hour(make_client(), storage, hour)
    text = _all_text(storage.data_dir)
    assert SECRET_MARKER not in text
    assert PII_MARKER not in text
    assert "[REDACTED]" in text and res.redactions >= res.rows
    with storage.warehouse.reader() as con:  # the useful, harmless parts survive
        ua = con.execute(
            "SELECT count(*) FROM request_logs WHERE request->'headers'->>'user-agent' IS NOT NULL"
        ).fetchone()[0]
    assert ua > 0


def test_bodies_are_kept_only_when_asked_and_extra_names_are_redacted(sim, make_client, storage):
    sim.config.list_shape = "full"
    hour = closed_hour()
    ingest_hour(make_client(), storage, hour, RedactionSettings(keep_bodies=True, extra_names=("user-agent",)))
    text = _all_text(storage.data_dir)
    assert PII_MARKER in text and SECRET_MARKER not in text
    with storage.warehouse.reader() as con:
        agents = con.execute("SELECT DISTINCT request->'headers'->>'user-agent' FROM request_logs").fetchall()
    assert agents == [("[REDACTED]",)]


def test_an_old_hour_comes_back_empty_from_the_api(sim, make_client, storage):
    hour = closed_hour(24 * 91)
    assert ingest_hour(make_client(), storage, hour).rows == 0


def test_header_names_are_stored_lower_cased_so_one_name_is_one_header():
    redactor = Redactor()
    got = redactor.headers(
        {"Content-Type": "application/json", "X-API-Key": "k", "Accept": "a", "accept": "b", "x-request-id": "req_1"}
    )
    assert got == {
        "content-type": "application/json",
        "x-api-key": "[REDACTED]",
        "accept": "a, b",
        "x-request-id": "req_1",
    }
    assert redactor.count == 1


FULL_ONLY = ("source_ip", "request", "response")


def columns(storage, names) -> list[tuple]:
    with storage.warehouse.reader() as con:
        return con.execute(f"SELECT {', '.join(names)} FROM request_logs ORDER BY request_id").fetchall()


def test_partial_and_full_list_records_load_the_same_scalars(sim, make_client, tmp_path):
    """The SDK's partial list records leave request, response and source_ip null; every other
    column is what the guide's full records give. http_method is stored upper-cased."""
    hour = closed_hour()
    stores = {}
    for shape in ("partial", "full"):
        sim.config.list_shape = shape
        stores[shape] = Storage(tmp_path / shape)
        assert ingest_hour(make_client(), stores[shape], hour).rows == 300
    partial, full = stores["partial"], stores["full"]
    from stackone_pipeline.stackone.records import COLUMN_NAMES

    scalars = [c for c in COLUMN_NAMES if c not in FULL_ONLY]
    assert columns(partial, scalars) == columns(full, scalars)
    assert set(columns(partial, FULL_ONLY)) == {(None, None, None)}
    assert all(v is not None for row in columns(full, FULL_ONLY) for v in row)
    served = {r["http_method"] for r in sim.simulator.expected_records(hour, hour + H)}
    assert any(not m.isupper() for m in served)  # the API sends get, Get, ...
    assert {m for (m,) in columns(partial, ["DISTINCT http_method"])} == {m.upper() for m in served}


def test_a_flat_filter_api_is_ingested_exactly_and_the_metadata_says_so(sim, make_client, storage):
    sim.config.filter_encoding = "flat"
    hour = closed_hour()
    res = ingest_hour(make_client(), storage, hour)
    assert [r[1] for r in table(storage, hour)] == expected_ids(sim, hour)
    assert res.metadata()["filter_encoding"] == "flat" and res.metadata()["filter_retries"] == 1
    again = ingest_hour(make_client(), storage, hour - H)  # remembered: no wasted request
    assert again.filter_encoding == "flat" and again.filter_retries == 0 and again.requests == again.pages


def test_step_requests_are_redacted_whatever_they_carry():
    step = {
        "id": "step_1",
        "http_method": "get",
        "url": f"https://api.provider.test/v1/x?access_token={SECRET_MARKER}_1&page=2",
        "status": 200,
    }
    with_headers = {**step, "headers": {"Authorization": f"Bearer {SECRET_MARKER}_2", "Accept": "*/*"}}
    raw = {"request_id": "req_1", "event_datetime": "2026-11-20T09:00:00Z", "http_method": "Post"}
    row = normalise({**raw, "step_requests": [step, with_headers]}, Redactor())
    assert SECRET_MARKER not in row["step_requests"] and row["http_method"] == "POST"
    steps = orjson.loads(row["step_requests"])
    assert steps[0]["url"] == "https://api.provider.test/v1/x?access_token=[REDACTED]&page=2"
    assert steps[1]["headers"] == {"authorization": "[REDACTED]", "accept": "*/*"}
    assert row["request"] is None and row["response"] is None and row["source_ip"] is None


def test_retention_is_a_project_setting(sim, tmp_path):
    """STACKONE_RETENTION_DAYS drives the horizon, the asset's refusal and the backfill's."""
    import dagster as dg
    import pytest

    from stackone_pipeline.assets.request_logs import request_logs
    from stackone_pipeline.backfill import BackfillError, partition_keys
    from stackone_pipeline.partitions import expired_hours
    from stackone_pipeline.resources import StackOneResource
    from stackone_pipeline.settings import Settings, SettingsError

    from .conftest import partition_key, pipeline_resources

    settings = Settings.from_env({"STACKONE_RETENTION_DAYS": "30"})
    assert settings.retention_days == 30 and Settings.from_env({}).retention_days == 90
    assert StackOneResource.from_settings(settings).retention_days == 30
    with pytest.raises(SettingsError, match="STACKONE_RETENTION_DAYS"):
        Settings.from_env({"STACKONE_RETENTION_DAYS": "0"})
    now = closed_hour(0)
    old = now - timedelta(days=31)
    assert expired_hours([old], now) == [] and expired_hours([old], now, retention_days=30) == [old]
    assert len(partition_keys(old, old + H, now)) == 1
    with pytest.raises(BackfillError, match="30-day log retention"):
        partition_keys(old, old + H, now, retention_days=30)
    sim.config.retention_days = 30
    result = dg.materialize(
        [request_logs],
        partition_key=partition_key(closed_hour(24 * 31)),
        resources=pipeline_resources(sim.url, tmp_path, retention_days=30),
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "30-day log retention" in failure and "last 30 days" in failure
    assert not (tmp_path / "lake").exists()
